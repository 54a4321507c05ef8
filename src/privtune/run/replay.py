"""Rebuild a run's trained weights from the base model and `transcript.jsonl` alone (public seeds + released scalars)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import PrivtuneError
from ..methods import method_class
from ..trainable import trainable_state
from .rundir import RunDir
from .setup import prepare


def replay(run_dir: str | Path, callback: Callable[[dict], None] | None = None) -> dict[str, torch.Tensor]:
    run = RunDir.open(run_dir)
    cfg = run.load_config()
    setup = prepare(cfg, need_pool=False, need_eval=False, z_kernel=run.recorded_z_kernel(),
                    z_recorded_in=run.engine)  # the run's z backend (zo.kernels), not the config's
    lines = run.read_transcript()
    for n, line in enumerate(lines):
        if line.get("step") != n:
            raise PrivtuneError(f"{run.transcript}: line {n + 1} is step {line.get('step')}, expected {n}")
    method_class(cfg.method.name).replay(cfg, setup, lines, callback)
    return trainable_state(setup.sel)


def verify(run_dir: str | Path, rebuilt: dict[str, torch.Tensor]) -> tuple[bool, str]:
    saved = RunDir(run_dir).load_final_weights()
    if set(saved) != set(rebuilt):
        return False, "parameter names differ"
    diff = [k for k in saved if not torch.equal(saved[k], rebuilt[k].cpu())]
    if diff:
        worst = max(float((saved[k] - rebuilt[k].cpu()).abs().max()) for k in diff)
        return False, f"{len(diff)} of {len(saved)} tensors differ (max abs diff {worst:.3g})"
    return True, f"all {len(saved)} tensors bit-identical"
