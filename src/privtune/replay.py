"""Rebuild a run's trained weights from the base model and `transcript.jsonl` alone (public seeds + released scalars)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from . import config as C
from . import rundir as R
from .errors import PrivtuneError
from .methods import build_config, method_class
from .trainable import trainable_state


def replay(run_dir: str | Path, callback: Callable[[dict], None] | None = None) -> dict[str, torch.Tensor]:
    from .train import prepare, recorded_z_kernel

    run = Path(run_dir)
    if not (run / R.CONFIG).is_file():
        raise PrivtuneError(f"{run}: not a privtune run directory (no {R.CONFIG})")
    cfg = build_config(C.load_yaml(run / R.CONFIG))
    setup = prepare(cfg, need_pool=False, need_eval=False, z_kernel=recorded_z_kernel(run),
                    z_recorded_in=run / R.ENGINE)  # the run's z backend (zo.kernels), not the config's
    lines = R.read_jsonl(run / R.TRANSCRIPT)
    for n, line in enumerate(lines):
        if line.get("step") != n:
            raise PrivtuneError(f"{run / R.TRANSCRIPT}: line {n + 1} is step {line.get('step')}, expected {n}")
    method_class(cfg.method.name).replay(cfg, setup, lines, callback)
    return trainable_state(setup.sel)


def verify(run_dir: str | Path, rebuilt: dict[str, torch.Tensor]) -> tuple[bool, str]:
    path = Path(run_dir) / R.MODEL_DIR / "trainable.safetensors"
    if not path.is_file():
        raise PrivtuneError(f"{path}: missing; the run has not finished")
    saved = R.load_tensors(path)
    if set(saved) != set(rebuilt):
        return False, "parameter names differ"
    diff = [k for k in saved if not torch.equal(saved[k], rebuilt[k].cpu())]
    if diff:
        worst = max(float((saved[k] - rebuilt[k].cpu()).abs().max()) for k in diff)
        return False, f"{len(diff)} of {len(saved)} tensors differ (max abs diff {worst:.3g})"
    return True, f"all {len(saved)} tensors bit-identical"
