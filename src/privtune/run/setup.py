"""Setting a run up from its config: task, model and trainable set, z engine, training pool, eval set, canaries.

Everything that can fail on user input happens in `prepare`, before anything is written to disk. Training, eval,
replay and the audit all start here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import tblog
from ..data import (CANARY_TEMPLATE, QA_CANARY_QUESTION, Task, draw_pool, load_task, make_canaries,
                    make_qa_canaries, render, render_example)
from ..errors import ConfigError
from ..models import LoadedModel, load_model, resolve_device
from ..trainable import HEAD_KINDS, LoraSpec, Selection, parse_kind, save_adapter, select, trainable_state
from ..zo import kernels as Z
from ..zo.engine import ZOEngine
from ..zo.forward import Encoded
from ..zo.sequences import SeqSpec

Callback = Callable[[dict], None]


@dataclass
class Setup:
    cfg: object
    task: Task
    lm: LoadedModel
    sel: Selection
    engine: ZOEngine
    verbalizer_ids: list[int]
    pool: Encoded | None = None
    pool_index: list[int] = field(default_factory=list)
    evalset: Encoded | None = None
    canaries: dict | None = None  # audit mode (task.canaries): texts, labels, inclusion → run dir canaries.json


def build_task(cfg) -> Task:
    t = cfg.task
    return load_task(t.name, train_path=t.train_path, eval_path=t.eval_path, text_column=t.text_column,
                     label_column=t.label_column, label_names=t.label_names, template=t.template,
                     verbalizer=t.verbalizer, eval_limit=t.eval_limit, task_type=t.type,
                     choices_column=t.choices_column, answers_column=t.answers_column,
                     choice_score=t.choice_score, max_new_tokens=t.max_new_tokens, stop=t.stop,
                     min_new_tokens=t.min_new_tokens)


def build_model(cfg, task: Task | None = None) -> tuple[LoadedModel, Selection]:
    """The model and its trainable set. The head kinds train the verbalizer's rows, so they need the task's label
    words (`task`, or the config's task loaded here)."""
    lm = load_model(cfg.model.name, seed=cfg.model.seed, dtype=cfg.model.dtype, device=cfg.model.device)
    lo = cfg.trainable.lora
    verb = None
    if parse_kind(cfg.trainable.kind)[0] in HEAD_KINDS:
        task = task if task is not None else build_task(cfg)
        if task.type != "classification":
            raise ConfigError(f"trainable.kind: {cfg.trainable.kind} trains the label words' rows of the LM head; a "
                              f"{task.type} task has no label words (use final_norm, lora, norms or top_layers:K)")
        verb = lm.codec.verbalizer_ids(task.verbalizer)
    sel = select(lm.model, cfg.trainable.kind, LoraSpec(lo.r, lo.alpha, list(lo.target_modules), lo.layers),
                 seed=cfg.train.seed, verbalizer_ids=verb)
    return lm, sel


def encode_examples(setup: Setup, examples, *, for_decoding: bool = False) -> Encoded:
    """Examples as the engine reads them: classification prompts, or prompts packed with their choices / gold
    answer (zo.sequences) for the multi-token types. `for_decoding`: a generation task's eval set, which is decoded
    (greedy, zo.decode) rather than scored, so it keeps only its prompts and gold answers (no prefix cache)."""
    task, codec = setup.task, setup.lm.codec
    if task.type == "classification":
        ids = [codec.encode(render(task.template, ex.text)) for ex in examples]
        return setup.engine.forward.encode(ids, [ex.label for ex in examples], disk_key=_disk_key(setup))
    prompts = [codec.encode(render_example(task.template, ex)) for ex in examples]
    if task.type == "generation":
        answers = [tuple(ex.answers) for ex in examples]
        if for_decoding:
            return Encoded(prompts, torch.zeros(len(prompts), dtype=torch.long), prompts=prompts, answers=answers)
        branches = [[codec.continuation(" " + ex.answers[0] + task.stop)] for ex in examples]
    else:
        answers = None
        branches = [[codec.continuation(" " + c) for c in ex.choices] for ex in examples]
    data = setup.engine.forward.encode_packed(prompts, branches, [ex.label for ex in examples],
                                              disk_key=_disk_key(setup))
    data.prompts, data.answers = prompts, answers
    return data


def _disk_key(setup: Setup) -> str | None:
    """What identifies the model's weights for the on-disk prefix cache (None: the tiny model, built in ms)."""
    m = setup.cfg.model
    key = None if m.name == "tiny" else f"{m.name}|{m.dtype}"  # the tiny model builds its cache in milliseconds
    if key is not None and Path(m.name).is_dir():  # a local folder: its files' sizes and times identify the weights
        key += "|" + ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(Path(m.name).iterdir()))
    return key


def prepare(cfg, *, need_pool: bool = True, need_eval: bool = True, callback: Callback | None = None,
            z_kernel: str | None = None, z_recorded_in: Path | None = None) -> Setup:
    """Everything that can fail on user input happens here, before anything is written to disk.
    `z_kernel`: the z backend a run recorded (resume, replay; read from `z_recorded_in`) instead of train.z_kernel."""
    device = resolve_device(cfg.model.device)
    zk = Z.resolve(cfg.train.z_kernel if z_kernel is None else z_kernel, device,
                   recorded_in=None if z_recorded_in is None else str(z_recorded_in))
    task = build_task(cfg)
    if cfg.train.tensorboard and need_pool:  # only training writes the mirror; eval and replay of a run do not
        tblog.require()
    lm, sel = build_model(cfg, task)
    # one token id per word (token_id refuses a multi-token word); data.load_task already refused every label past
    # the verbalizer, row by row, in both files, so no label check is repeated here
    verb = lm.codec.verbalizer_ids(task.verbalizer) if task.type == "classification" else []
    seq = None if task.type == "classification" else SeqSpec(task.type, task.choice_score, lm.codec, task.stop,
                                                             task.max_new_tokens, task.min_new_tokens)
    engine = ZOEngine(sel, verb, device=device, micro_batch=cfg.train.micro_batch, use_cache=cfg.train.prefix_cache,
                      z_kernel=zk, seq=seq)
    setup = Setup(cfg, task, lm, sel, engine, verb)
    if need_pool:
        setup.pool_index = draw_pool(task, cfg.task.pool_size, cfg.train.seed)
        if cfg.task.canaries:
            setup.canaries = add_canaries(task, setup.pool_index, cfg.task.canaries, cfg.train.seed)
        emit(callback, {"event": "status", "message": f"encoding {len(setup.pool_index)} training examples"})
        setup.pool = encode_examples(setup, [task.train[i] for i in setup.pool_index])
    if need_eval:
        emit(callback, {"event": "status", "message": f"encoding {len(task.eval)} eval examples"})
        setup.evalset = encode_examples(setup, task.eval, for_decoding=True)
    return setup


def add_canaries(task: Task, pool_index: list[int], n: int, seed: int) -> dict:
    """Audit mode: append n canaries to task.train and the included ones to the pool (in place). The returned dict
    (run dir canaries.json) holds what the audit needs to rebuild them: for multiple choice and generation also
    each canary's choices or answers, its template fields and the task's prompt template."""
    if task.type == "classification":
        canaries, included = make_canaries(n, task.n_labels, seed)
    else:
        canaries, included = make_qa_canaries(n, task, seed)
    start = len(task.train)
    task.train.extend(canaries)
    pool_index.extend(start + j for j, inc in enumerate(included) if inc)
    if task.type == "classification":
        return {"template": CANARY_TEMPLATE, "seed": seed, "texts": [c.text for c in canaries],
                "labels": [c.label for c in canaries], "included": included}
    out = {"type": task.type, "template": QA_CANARY_QUESTION, "prompt_template": task.template, "seed": seed,
           "texts": [c.text for c in canaries], "labels": [c.label for c in canaries], "included": included,
           "fields": [[list(f) for f in c.fields] for c in canaries]}
    if task.type == "multiple_choice":
        out["choices"] = [list(c.choices) for c in canaries]
    else:
        out["answers"] = [list(c.answers) for c in canaries]
    return out


def resolved_config(setup: Setup):
    """config.yaml of a new run: the config with what the task decided written out (a multiple-choice task's
    choice_score, when the config left it to the task), so the run dir says what ran and a resume or replay under a
    later default scores the same way."""
    cfg = setup.cfg
    if setup.task.type == "multiple_choice" and cfg.task.choice_score is None:
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"choice_score": setup.task.choice_score})})
    return cfg


def engine_record(setup: Setup) -> dict:
    """engine.json of a new run: the resolved z backend (and triton's version, whose tl.randn defines z)."""
    zk = setup.engine.z_kernel
    return {"z_kernel": zk, "triton": Z.triton_version() if zk == "triton" else None}


def model_manifest(setup: Setup) -> dict:
    """model/manifest.json: what the saved trainable weights belong to."""
    cfg = setup.cfg
    return {"base_model": cfg.model.name, "trainable": cfg.trainable.model_dump(mode="json"),
            "dtype": cfg.model.dtype, "parameters": sum(p.numel() for _, p in setup.sel.params)}


def save_model(run, setup: Setup) -> None:
    """The run dir's model/: the trainable weights as they are now, their manifest, and for LoRA a peft adapter."""
    run.save_model(trainable_state(setup.sel), model_manifest(setup), adapter=lambda d: save_adapter(setup.sel, d))


def emit(callback: Callback | None, event: dict) -> None:
    if callback is not None:
        callback(event)
