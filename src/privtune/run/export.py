"""`privtune export`: a finished run as a standard transformers model folder (weights merged, config, tokenizer).

`AutoModelForCausalLM.from_pretrained(folder)` loads it offline, whatever the run trained (LoRA adapters are merged
into the base weights). Its config.json carries a `privtune` entry saying what the folder is: the run, the base
model, the trainable set, the method and its guarantee. The export reads only model/trainable.safetensors and
config.yaml, so run dirs from before model/adapter/ existed export the same way.
"""

from __future__ import annotations

from pathlib import Path

from .. import atomic as A
from ..errors import PrivtuneError
from ..methods import build_config
from ..trainable import load_trainable_state, merged_model, no_checkpointing_notice
from .rundir import RunDir
from .setup import build_model


def export(run_dir: str | Path, out: str | Path) -> dict:
    """Write run `run_dir`'s trained model to the new folder `out` (built beside it, renamed into place)."""
    run = RunDir.open(run_dir)
    weights = run.load_final_weights()  # a run that has not finished says so before the model loads
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrivtuneError(f"{out}: already exists; export writes a new folder (choose another --out)")
    data = run.load_config_dict()
    data.setdefault("model", {})["device"] = "cpu"  # merging and saving need no accelerator
    cfg = build_config(data)
    lm, sel = build_model(cfg)
    load_trainable_state(sel, weights)
    model = merged_model(sel)
    privacy = run.read_record(run.privacy, what="privacy ledger ") or {}
    model.config.privtune = {  # HF keeps unknown config attributes: config.json says where the weights come from
        "exported_from": str(run.path.resolve()), "base_model": cfg.model.name, "trainable": cfg.trainable.kind,
        "method": cfg.method.name, "guarantee": privacy.get("guarantee"),
        "mia_posterior_bound": privacy.get("mia_posterior_bound")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with A.atomic_dir(out) as tmp:
        with no_checkpointing_notice():
            model.save_pretrained(tmp)
        lm.codec.save(tmp)
    return {"run_dir": str(run.path), "out": str(out), "base_model": cfg.model.name,
            "trainable": cfg.trainable.kind, "files": sorted(p.name for p in out.iterdir())}
