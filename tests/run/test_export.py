"""Standard outputs: a LoRA run's model/adapter/ loads with peft, `export` writes a folder transformers loads (every
trainable kind), and run dirs from before model/adapter/ existed still evaluate and export."""

import json

import pytest
import torch

from privtune.errors import PrivtuneError
from privtune.methods import build_config
from privtune.models import HASH_CODEC_FILE, build_tiny
from privtune.run import rundir as R
from privtune.run.evaluate import evaluate_base, evaluate_run
from privtune.run.export import export
from privtune.run.loop import train
from privtune.run.setup import build_model
from privtune.trainable import load_trainable_state

IDS = torch.tensor([[1, 17, 523, 88, 901, 4, 250]])


def _run(make_cfg, kind: str, **over):
    cfg = make_cfg(**{"trainable.kind": kind, "train.steps": 4, "method.lr": 0.05, **over})
    train(cfg)
    return cfg


def _trained_logits(cfg) -> torch.Tensor:
    """The logits of the model privtune itself evaluates: a fresh selection with model/trainable.safetensors."""
    _, sel = build_model(cfg)
    load_trainable_state(sel, R.RunDir(cfg.out_dir).load_final_weights())
    with torch.no_grad():
        return sel.model(IDS).logits


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft reads it on load
def test_lora_run_writes_a_peft_adapter_that_loads_on_the_base(make_cfg):
    from peft import PeftModel

    cfg = _run(make_cfg, "lora")
    run = R.RunDir(cfg.out_dir)
    assert (run.adapter_dir / "adapter_config.json").is_file()
    assert json.loads((run.model_dir / R.MANIFEST).read_text())["adapter"] == R.ADAPTER_DIR
    trained = _trained_logits(cfg)
    base = build_tiny(cfg.model.seed).model
    with torch.no_grad():
        base_logits = base(IDS).logits.clone()
        loaded = PeftModel.from_pretrained(base, run.adapter_dir)(IDS).logits
    assert not torch.equal(trained, base_logits)  # the adapter moved the model ...
    torch.testing.assert_close(loaded, trained, rtol=0, atol=0)  # ... and peft rebuilds exactly that model


@pytest.mark.parametrize("kind", ["lora", "top_layers:2", "head", "head+final_norm"])
def test_export_writes_a_transformers_folder_with_the_trained_weights(make_cfg, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    cfg = _run(make_cfg, kind)
    out = tmp_path / "exported"
    result = export(cfg.out_dir, out)
    assert {"config.json", "model.safetensors", HASH_CODEC_FILE} <= set(result["files"])
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, _trained_logits(cfg), rtol=1e-5, atol=1e-5)  # LoRA merged
    assert not any("lora" in name for name, _ in model.named_parameters())
    what = json.loads((out / "config.json").read_text())["privtune"]
    assert what["trainable"] == kind and what["method"] == "mezo" and what["base_model"] == "tiny"
    # the folder is a model privtune evaluates by its path (the tiny model's hash codec travels with it)
    assert evaluate_base(str(out), "sst2", limit=40, device="cpu")["accuracy"] == \
        evaluate_run(cfg.out_dir, limit=40)["accuracy"]
    assert not (R.RunDir(cfg.out_dir).adapter_dir.exists()) == (kind != "lora")
    if kind.startswith("head"):  # the trained rows live in an untied LM head; the embedding keeps the base's rows
        base = build_tiny(cfg.model.seed).model
        assert torch.equal(model.get_input_embeddings().weight, base.get_input_embeddings().weight)
        assert not torch.equal(model.get_output_embeddings().weight, base.get_output_embeddings().weight)


def test_old_run_dir_without_adapter_still_evaluates_and_exports(make_cfg, tmp_path):
    import shutil

    cfg = _run(make_cfg, "lora")
    run = R.RunDir(cfg.out_dir)
    before = evaluate_run(run.path)["accuracy"]
    shutil.rmtree(run.adapter_dir)  # a run dir written before model/adapter/ existed
    manifest = json.loads((run.model_dir / R.MANIFEST).read_text())
    del manifest["adapter"]
    (run.model_dir / R.MANIFEST).write_text(json.dumps(manifest))
    assert evaluate_run(run.path)["accuracy"] == before
    assert "model.safetensors" in export(run.path, tmp_path / "old")["files"]


def test_export_refuses_an_unfinished_run_and_a_used_folder(make_cfg, tmp_path, stop_after):
    cfg = make_cfg(**{"train.steps": 4})
    assert train(cfg, callback=stop_after(1)) == {"stopped_at": 1}
    with pytest.raises(PrivtuneError, match="trainable.safetensors: missing; the run has not finished"):
        export(cfg.out_dir, tmp_path / "e")
    assert not (tmp_path / "e").exists()
    train(build_config({**cfg.model_dump(mode="json")}), resume=True)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(PrivtuneError, match=f"^{used}: already exists"):
        export(cfg.out_dir, used)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    with pytest.raises(PrivtuneError, match="not a privtune run directory"):
        export(tmp_path / "nothing", tmp_path / "e")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft reads it on load
def test_adapter_records_a_folder_base_so_auto_peft_loads_both(make_cfg, tmp_path):
    """A LoRA run on a local HF folder (here: an exported tiny run) records that folder as the adapter's base."""
    from peft import AutoPeftModelForCausalLM

    base_run = _run(make_cfg, "final_norm", out_dir=str(tmp_path / "base_run"))
    folder = tmp_path / "base_hf"
    export(base_run.out_dir, folder)
    cfg = _run(make_cfg, "lora", **{"model.name": str(folder), "out_dir": str(tmp_path / "lora_run")})
    adapter = R.RunDir(cfg.out_dir).adapter_dir
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)
    with torch.no_grad():
        loaded = AutoPeftModelForCausalLM.from_pretrained(adapter, local_files_only=True)(IDS).logits
    torch.testing.assert_close(loaded, _trained_logits(cfg), rtol=0, atol=0)
