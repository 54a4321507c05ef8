"""Accuracy of a trained run or of a base model on a task split (verbalizer logits at the last position)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..methods import build_config
from ..trainable import load_trainable_state
from ..zo.sums import accuracy
from .rundir import RunDir
from .setup import Setup, encode_examples, prepare

SPLITS = {"dev": "eval", "test": "eval", "eval": "eval", "validation": "eval", "train": "train"}


def evaluate_setup(setup: Setup) -> dict:
    """Accuracy of the model as it is now on the set-up eval set (during training: step 0, eval_every, the end)."""
    acc, correct = accuracy(setup.engine, setup.evalset)
    return {"accuracy": acc, "correct": correct, "total": len(setup.evalset)}


def _score(cfg, split: str, weights: dict | None = None, callback=None) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {sorted(SPLITS)}")
    setup = prepare(cfg, need_pool=False, need_eval=False)
    if weights is not None:
        load_trainable_state(setup.sel, weights)
    examples = setup.task.eval if SPLITS[split] == "eval" else setup.task.train
    if cfg.task.eval_limit:
        examples = examples[: cfg.task.eval_limit]
    if callback is not None:
        callback({"event": "status", "message": f"encoding {len(examples)} {split} examples"})
    data = encode_examples(setup, examples)
    acc, correct = accuracy(setup.engine, data, callback=callback)
    return {"accuracy": acc, "correct": correct, "total": len(examples), "model": cfg.model.name,
            "task": cfg.task.name, "split": split, "template": setup.task.template, "verbalizer": setup.task.verbalizer}


def evaluate_run(run_dir: str | Path, split: str = "dev", limit: int | None = None, callback=None) -> dict:
    """`callback` gets progress events: a status line, then {"event": "score", "done", "total"} per micro-batch."""
    run = RunDir.open(run_dir)
    run.final_weights()  # before the (slow) setup: a run that has not finished says so at once
    data = run.load_config_dict()
    if limit is not None:
        data.setdefault("task", {})["eval_limit"] = limit  # default: the run's own eval set
    result = {"run_dir": str(run.path), **_score(build_config(data), split, run.load_final_weights(), callback)}
    run.write_record(run.split_eval(split), result)
    return result


def evaluate_base(model: str, task: str, split: str = "dev", limit: int | None = None, template: str | None = None,
                  verbalizer: list[str] | None = None, device: str = "auto", callback=None) -> dict:
    cfg = build_config({"model": {"name": model, "device": device},
                        "task": {"name": task, "template": template, "verbalizer": verbalizer, "eval_limit": limit},
                        "trainable": {"kind": "norms"}, "train": {"prefix_cache": False}})
    return _score(cfg, split, callback=callback)
