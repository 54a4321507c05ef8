"""Accuracy of a trained run or of a base model on a task split (verbalizer logits at the last position)."""

from __future__ import annotations

from pathlib import Path

from . import config as C
from . import rundir as R
from .errors import ConfigError, PrivtuneError
from .methods import build_config
from .trainable import load_trainable_state
from .zo.sums import accuracy

SPLITS = {"dev": "eval", "test": "eval", "eval": "eval", "validation": "eval", "train": "train"}


def _score(cfg, split: str, weights: Path | None = None) -> dict:
    from .train import encode_examples, prepare

    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {sorted(SPLITS)}")
    setup = prepare(cfg, need_pool=False, need_eval=False)
    if weights is not None:
        load_trainable_state(setup.sel, R.load_tensors(weights))
    examples = setup.task.eval if SPLITS[split] == "eval" else setup.task.train
    if cfg.task.eval_limit:
        examples = examples[: cfg.task.eval_limit]
    acc, correct = accuracy(setup.engine, encode_examples(setup, examples))
    return {"accuracy": acc, "correct": correct, "total": len(examples), "model": cfg.model.name,
            "task": cfg.task.name, "split": split, "template": setup.task.template, "verbalizer": setup.task.verbalizer}


def evaluate_run(run_dir: str | Path, split: str = "dev", limit: int | None = None) -> dict:
    run = Path(run_dir)
    weights = run / R.MODEL_DIR / "trainable.safetensors"
    if not (run / R.CONFIG).is_file():
        raise PrivtuneError(f"{run}: not a privtune run directory (no {R.CONFIG})")
    if not weights.is_file():
        raise PrivtuneError(f"{weights}: missing; the run has not finished (resume it with privtune train --resume)")
    data = C.load_yaml(run / R.CONFIG)
    if limit is not None:
        data.setdefault("task", {})["eval_limit"] = limit  # default: the run's own eval set
    result = {"run_dir": str(run), **_score(build_config(data), split, weights)}
    R.atomic_write_json(run / f"eval_{split}.json", result)
    return result


def evaluate_base(model: str, task: str, split: str = "dev", limit: int | None = None, template: str | None = None,
                  verbalizer: list[str] | None = None, device: str = "auto") -> dict:
    cfg = build_config({"model": {"name": model, "device": device},
                        "task": {"name": task, "template": template, "verbalizer": verbalizer, "eval_limit": limit},
                        "trainable": {"kind": "norms"}, "train": {"prefix_cache": False}})
    return _score(cfg, split)
