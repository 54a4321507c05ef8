"""The data owner's side: train the adapter blocks (the first and last n blocks) with first-order Adam, on the
emulator (offsite) or on the full model (the "full fine-tuned" reference), and export them under the full model's
parameter names (model.layers.<source block>.…) so they plug into the full model unchanged.

Privacy hygiene: only aggregate losses (a mean over a logging window) are reported, never per-example values.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import draw_pool, load_task
from ..errors import ConfigError, PrivtuneError
from ..atomic import atomic_save_tensors, atomic_write_text
from . import forward as FW

ADAPTERS, ADAPTERS_JSON = "adapters.safetensors", "adapters.json"


@dataclass
class TuneOptions:
    task: str = "sst2"
    examples: int = 400  # training pool drawn from the train split (label-balanced for classification)
    epochs: int = 1
    batch_size: int = 8
    lr: float = 2e-5
    seed: int = 0
    log_every: int = 10


def check_options(opt: TuneOptions) -> None:
    for flag, v in (("--examples", opt.examples), ("--epochs", opt.epochs), ("--batch-size", opt.batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{flag}: must be an integer >= 1, got {v!r}")
    if not (opt.lr > 0 and math.isfinite(opt.lr)):
        raise ConfigError(f"--lr: must be a finite number > 0, got {opt.lr!r}")
    if opt.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {opt.seed!r}")


def adapter_map(manifest: dict) -> dict[int, int]:
    """Emulator block index → full-model block index, for the adapter blocks."""
    return {b["index"]: b["source"] for b in manifest["blocks"] if b["role"] == "adapter"}


def full_adapter_map(n_layers: int, n: int) -> dict[int, int]:
    return {i: i for i in [*range(n), *range(n_layers - n, n_layers)]}


def adapter_params(model, amap: dict[int, int]) -> list[tuple[str, torch.nn.Parameter]]:
    """(full-model name, parameter) of every adapter-block parameter, in a stable order."""
    out = []
    for i in sorted(amap):
        for name, p in model.model.layers[i].named_parameters():
            out.append((f"model.layers.{amap[i]}.{name}", p))
    return out


def adapter_state(model, amap: dict[int, int]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in adapter_params(model, amap)}


def training_pool(task_name: str, n: int, seed: int, exclude=()):
    """(task, its training pool): data.draw_pool (label-balanced for classification, uniform for multiple
    choice). An eval-only task (openbookqa) cannot be tuned on: train on another task and evaluate on it."""
    task = load_task(task_name)
    if not task.train:
        raise ConfigError(f"--task: {task_name} has no train split (eval only); tune the adapters on a task with one "
                          "(e.g. arc_easy) and evaluate them on it")
    pool = draw_pool(task, n, seed)
    skip = set(exclude)
    return task, [task.train[i] for i in pool if i not in skip]


def train_adapters(model, codec, amap: dict[int, int], opt: TuneOptions, callback=None) -> dict:
    """Adam on the adapter blocks (everything else frozen); returns a summary with window-mean losses."""
    check_options(opt)
    task, examples = training_pool(opt.task, opt.examples, opt.seed)
    batch = FW.task_examples(codec, task, examples)
    params = adapter_params(model, amap)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    optim = torch.optim.Adam([p for _, p in params], lr=opt.lr)
    rng = np.random.default_rng([int(opt.seed), 11])
    steps_per_epoch = math.ceil(len(batch) / opt.batch_size)
    total = opt.epochs * steps_per_epoch
    emit = callback or (lambda ev: None)
    emit({"event": "start", "steps": total, "step": 0})
    step, window, losses = 0, [], []
    try:
        for _ in range(opt.epochs):
            for chunk in FW.batches(len(batch), opt.batch_size, rng.permutation(len(batch))):
                loss = batch.loss(model, chunk)
                if not torch.isfinite(loss):
                    raise PrivtuneError(f"--lr: training diverged (non-finite loss at step {step + 1})")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                step += 1
                window.append(float(loss.detach()))
                if step % opt.log_every == 0 or step == total:
                    losses.append({"step": step, "train_loss": sum(window) / len(window)})
                    emit({"event": "step", "step": step, "train_loss": losses[-1]["train_loss"]})
                    window = []
    finally:
        for _, p in params:
            p.requires_grad_(False)
            p.grad = None
    emit({"event": "done"})
    return {"steps": step, "examples": len(batch), "loss_log": losses, "options": asdict(opt)}


def save_adapters(out: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / ADAPTERS, state)
    atomic_write_text(out / ADAPTERS_JSON, json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_adapters(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from ..atomic import load_tensors

    folder = Path(folder)
    for f in (ADAPTERS, ADAPTERS_JSON):
        if not (folder / f).is_file():
            raise PrivtuneError(f"{folder / f}: missing; --adapters must be a folder written by privtune offsite tune")
    return load_tensors(folder / ADAPTERS), json.loads((folder / ADAPTERS_JSON).read_text())


def grad_cosine(emulator, emu_map: dict[int, int], full, full_map: dict[int, int], ids, labels, verb,
                pad_id: int) -> float:
    """Cosine similarity of the adapter gradient (all adapter parameters, flattened in full-model name order) on
    the emulator vs on the full model, for one classification batch."""
    return grad_cosine_on(emulator, emu_map, full, full_map, FW.Classification(ids, labels, verb, pad_id))


def grad_cosine_on(emulator, emu_map: dict[int, int], full, full_map: dict[int, int], batch) -> float:
    """grad_cosine for a batch of any task type (offsite.forward.task_examples), its mean loss over all of it."""
    flat = []
    for model, amap in ((emulator, emu_map), (full, full_map)):
        params = adapter_params(model, amap)
        for _, p in params:
            p.requires_grad_(True)
            p.grad = None
        batch.loss(model, list(range(len(batch)))).backward()
        named = sorted((n, p.grad.detach().reshape(-1).double().clone()) for n, p in params)
        flat.append((tuple(n for n, _ in named), torch.cat([g for _, g in named])))
        for _, p in params:
            p.grad = None
            p.requires_grad_(False)
    if flat[0][0] != flat[1][0]:
        raise PrivtuneError("adapters: emulator and full model adapter names differ")
    a, b = flat[0][1], flat[1][1]
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))
