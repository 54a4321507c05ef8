"""Eval metrics of a trained run or of a base model on a task split: accuracy over the label words' logits
(classification) or the choices' scores (multiple_choice), SQuAD F1 / exact match of greedy answers (generation)."""

from __future__ import annotations

from pathlib import Path

from ..data import task_type_of
from ..errors import ConfigError
from ..methods import build_config
from ..trainable import load_trainable_state
from ..zo.sums import headline, score
from .rundir import RunDir
from .setup import Setup, encode_examples, prepare

SPLITS = {"dev": "eval", "test": "eval", "eval": "eval", "validation": "eval", "train": "train"}


ROW_KEYS = {"accuracy": "eval_accuracy", "f1": "eval_f1", "exact_match": "eval_exact_match"}  # metric → row key


def eval_row(result: dict) -> dict:
    """An eval's entries in a metrics.jsonl row: eval_accuracy, or eval_f1 and eval_exact_match."""
    keys = ("f1", "exact_match") if "f1" in result else ("accuracy",)
    return {ROW_KEYS[k]: result[k] for k in keys}


def metric_fields(result: dict) -> dict:
    """The metric entries of an eval result (what eval.json and the metrics rows carry)."""
    keys = ("f1", "exact_match") if "f1" in result else ("accuracy", "correct")
    return {k: result[k] for k in keys}


def evaluate_setup(setup: Setup) -> dict:
    """Eval metrics of the model as it is now on the set-up eval set (during training: step 0, eval_every, the
    end)."""
    return score(setup.engine, setup.evalset)


def _score(cfg, split: str, weights: dict | None = None, callback=None, data: str | Path | None = None) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {sorted(SPLITS)}")
    setup = prepare(cfg, need_pool=False, need_eval=False)
    if weights is not None:
        load_trainable_state(setup.sel, weights)
    examples = setup.task.eval if SPLITS[split] == "eval" else setup.task.train
    if cfg.task.eval_limit:
        examples = examples[: cfg.task.eval_limit]
    if callback is not None:
        callback({"event": "status", "message": f"encoding {len(examples)} {'' if data else split + ' '}examples"})
    encoded = encode_examples(setup, examples, for_decoding=True)
    # per-question scores only off the train split: a train example's own score is per-example private data
    result = score(setup.engine, encoded, callback=callback, per_question=SPLITS[split] == "eval")
    where = {"split": split} if data is None else {"split": "data", "data": str(data)}
    prompt = {"template": setup.task.template}
    if setup.task.type == "classification":
        prompt["verbalizer"] = setup.task.verbalizer
    else:
        prompt["type"] = setup.task.type
    if setup.task.type == "multiple_choice":
        prompt["choice_score"] = setup.task.choice_score
    if setup.task.type == "generation":  # how the answers were decoded: two evals are comparable only if these agree
        prompt |= {"max_new_tokens": setup.task.max_new_tokens, "min_new_tokens": setup.task.min_new_tokens,
                   "stop": setup.task.stop}
    return {**result, "model": cfg.model.name, "task": cfg.task.name, **where, **prompt}


def _on_file(task: dict, data: str | Path | None, limit: int | None) -> dict:
    """The task section with `data` (a user's file, read as a custom task's) as its examples, and its eval_limit
    `limit` (the run's own eval_limit cut its dev set, not the user's file)."""
    if data is not None:
        task = {**task, "train_path": str(data), "eval_path": str(data), "eval_limit": limit}
    elif limit is not None:
        task = {**task, "eval_limit": limit}
    return task


def evaluate_run(run_dir: str | Path, split: str = "dev", limit: int | None = None, callback=None,
                 data: str | Path | None = None) -> dict:
    """Accuracy of a finished run's model on its task's `split`, or on the file `data` (same formats, columns,
    labels, template and verbalizer as the run's task). Writes nothing (the CLI's --out does).
    `callback` gets progress events: a status line, then {"event": "score", "done", "total"} per micro-batch."""
    run = RunDir.open(run_dir)
    run.final_weights()  # before the (slow) setup: a run that has not finished says so at once
    cfg = run.load_config_dict()
    cfg["task"] = _on_file(cfg.get("task") or {}, data, limit)
    return {"run_dir": str(run.path), **_score(build_config(cfg), "eval" if data else split,
                                               run.load_final_weights(), callback, data)}


def evaluate_base(model: str, task: str, split: str = "dev", limit: int | None = None, template: str | None = None,
                  verbalizer: list[str] | None = None, device: str = "auto", callback=None,
                  data: str | Path | None = None, label_names: list[str] | None = None,
                  choice_score: str | None = None, max_new_tokens: int | None = None) -> dict:
    """Zero-shot accuracy of a base model (or an exported folder) on `task`'s split, or on the file `data` (task
    "custom": give template and verbalizer, and label_names when the file's labels are names). `choice_score`
    ("sum" or "mean") overrides a multiple-choice task's, `max_new_tokens` a generation task's decoding length (to
    match a run's: a preset may decode fewer tokens than the task's default); other task types refuse them."""
    only = {"choice_score": (choice_score, "multiple_choice"), "max_new_tokens": (max_new_tokens, "generation")}
    section = _on_file({"name": task, "template": template, "verbalizer": verbalizer, "label_names": label_names,
                        **{k: v for k, (v, _) in only.items() if v is not None}}, data, limit)
    cfg = build_config({"model": {"name": model, "device": device}, "task": section,
                        "trainable": {"kind": "norms"}, "train": {"prefix_cache": False}})
    kind = task_type_of(cfg.task.name, cfg.task.type)
    for key, (value, kind_needed) in only.items():  # before the model loads
        if value is not None and kind != kind_needed:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"task.{key} ({flag}): only for a {kind_needed.replace('_', '-')} task "
                              f"({task} is {kind})")
    return _score(cfg, "eval" if data else split, callback=callback, data=data)
