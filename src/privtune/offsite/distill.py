"""Emulator distillation (Offsite-Tuning, Xiao, Lin & Han 2023, §3.3): the model owner trains the emulator's
compressed middle so that, fed what the bottom adapters output, it returns what the full model's middle returns.

The adapters are identical in the emulator and the full model, so for a text x with h = bottom(x):

    loss = mean over real tokens and dims of ((middle_emu(h) − middle_full(h)) / σ_d)²

with σ_d the full middle's per-dimension output scale on the corpus (the residual stream of Llama-style models has
a few dimensions hundreds of times larger than the rest; without σ they would be all the loss sees). Both h and the
target are computed once (no grad) and cached; only the emulator's middle blocks train (Adam).

The corpus is the model owner's, never the data owner's: a public text file (one text per line) or the train
split of a built-in task used as plain text (classification: the texts, labels unused; multiple choice and
generation: each rendered prompt followed by its right choice or first answer, a question with its answer as
running text). `default_corpus` picks a built-in one that is not the tuned task and has a train split. Only aggregate numbers (normalised MSE on a held-out slice of the
corpus, before and after) are reported.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import TASKS, load_task, render_example
from ..errors import ConfigError, DataError, PrivtuneError
from ..zo.forward import geometry, left_pad, left_pad_states, run_blocks
from . import forward as FW


@dataclass
class DistillOptions:
    corpus: str  # a built-in task name (its train split as text, see corpus_texts) or a UTF-8 text file
    texts: int = 512
    max_tokens: int = 64
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    held_out: float = 0.1  # fraction of the corpus kept out of training to measure the fit


def check_options(opt: DistillOptions) -> None:
    for flag, v, lo in (("--distill-texts", opt.texts, 2), ("--distill-max-tokens", opt.max_tokens, 2),
                        ("--distill-steps", opt.steps, 1), ("--distill-batch", opt.batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{flag}: must be an integer >= {lo}, got {v!r}")
    if not (isinstance(opt.lr, (int, float)) and 0 < opt.lr < 1 and math.isfinite(opt.lr)):
        raise ConfigError(f"--distill-lr: must be a number in (0, 1), got {opt.lr!r}")
    if not 0 < opt.held_out < 1:
        raise ConfigError(f"--distill-held-out: must be in (0, 1), got {opt.held_out!r}")


def default_corpus(exclude) -> str:
    """A built-in task to distil on, never one of `exclude` (the tuned and evaluated tasks) nor an eval-only task:
    the first in TASKS order of the first excluded task's type, else of any type (sst2 ↔ agnews, arc_easy →
    arc_challenge: public text of the kind the adapters will see)."""
    skip = set(exclude)
    kind = next((TASKS[t].type for t in exclude if t in TASKS), "classification")
    usable = [t for t, spec in TASKS.items() if t not in skip and spec.train is not None]
    if not usable:
        raise ConfigError("--distill-corpus: every built-in task is excluded; give a text file")
    return min(usable, key=lambda t: TASKS[t].type != kind)  # stable: TASKS order within a kind


def task_texts(task) -> list[str]:
    """A task's train split as plain text: classification texts as they are; a multiple-choice or generative
    example as its prompt followed by the right choice or first answer (without the answer a question is half a
    text, and the corpus is the model owner's public data, so its labels may be used)."""
    if task.type == "classification":
        return [ex.text for ex in task.train]
    out = []
    for ex in task.train:
        answer = ex.choices[ex.label] if task.type == "multiple_choice" else ex.answers[0]
        out.append(render_example(task.template, ex) + " " + answer)
    return out


def corpus_texts(opt: DistillOptions) -> tuple[list[str], dict]:
    """`opt.texts` texts drawn without replacement (seeded) from the corpus, and the corpus' identity."""
    if opt.corpus in TASKS:
        task = load_task(opt.corpus)
        if not task.train:
            raise ConfigError(f"--distill-corpus: {opt.corpus} has no train split (eval only); choose another task "
                              "or a text file")
        texts = task_texts(task)
        ident = {"task": opt.corpus, "split": "train",
                 **({"labels": "unused"} if task.type == "classification" else {"text": "prompt + answer"})}
    else:
        path = Path(opt.corpus)
        if not path.is_file():
            raise ConfigError(f"--distill-corpus: {opt.corpus!r} is neither a task ({', '.join(TASKS)}) nor a file")
        try:
            raw = path.read_bytes()
            texts = [t for t in raw.decode("utf-8").splitlines() if t.strip()]
        except (UnicodeDecodeError, OSError) as e:
            raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from None
        ident = {"file": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
    if len(texts) < opt.texts:
        raise ConfigError(f"--distill-texts: {opt.texts} is more than the {len(texts)} texts in {opt.corpus}")
    idx = sorted(int(i) for i in np.random.default_rng([int(opt.seed), 13]).choice(len(texts), opt.texts,
                                                                                    replace=False))
    ident["indices_sha256"] = hashlib.sha256(",".join(map(str, idx)).encode()).hexdigest()
    return [texts[i] for i in idx], ident


@torch.no_grad()
def boundary_states(full, n: int, ids: list[list[int]], pad_id: int, micro_batch: int = 16):
    """Per sequence: the bottom adapters' output (the middle's input) and the full middle's output."""
    layers = full.model.layers
    L = len(layers)
    h_in, h_out = [], []
    for chunk in FW.batches(len(ids), micro_batch):
        x, attn = left_pad([ids[j] for j in chunk], pad_id)
        h = full.model.embed_tokens(x)
        geo = geometry(full.model.rotary_emb, attn, h)
        a = run_blocks(layers[:n], h, geo)
        b = run_blocks(layers[n:L - n], a, geo)
        for row, j in enumerate(chunk):
            k = len(ids[j])
            h_in.append(a[row, -k:].clone())
            h_out.append(b[row, -k:].clone())
    return h_in, h_out


def _nmse(emu_mid, emu, h_in, h_out, sigma, idx, micro_batch: int = 16) -> float:
    num, count = 0.0, 0
    with torch.no_grad():
        for chunk in FW.batches(len(idx), micro_batch, idx):
            err, m = _errors(emu_mid, emu, [h_in[j] for j in chunk], [h_out[j] for j in chunk], sigma)
            num += float(err.sum())
            count += int(m.sum()) * sigma.numel()
    return num / max(count, 1)


def _errors(emu_mid, emu, h_in, h_out, sigma):
    x, attn = left_pad_states(h_in)
    y, _ = left_pad_states(h_out)
    out = run_blocks(emu_mid, x, geometry(emu.model.rotary_emb, attn, x))
    m = attn.bool()
    err = (((out - y) / sigma) ** 2)[m]
    return err, m


def distill(full, emu, n: int, mid_index: list[int], codec, opt: DistillOptions, callback=None) -> dict:
    """Train `emu`'s middle blocks (emulator indices `mid_index`, between n bottom and n top adapter blocks) in place;
    returns the summary (corpus identity, options, fit before/after)."""
    check_options(opt)
    emit = callback or (lambda ev: None)
    if not mid_index:
        raise ConfigError("--distill-corpus: the emulator has no middle blocks to distil (--ratio removed them all)")
    emu_mid = [emu.model.layers[i] for i in mid_index]
    texts, ident = corpus_texts(opt)
    ids = [codec.encode(t)[: opt.max_tokens] for t in texts]
    ids = [x for x in ids if len(x) >= 2]
    if len(ids) < 2:
        raise DataError(f"{opt.corpus}: fewer than 2 texts of >= 2 tokens")
    emit({"event": "status", "message": f"distillation targets on {len(ids)} texts"})
    h_in, h_out = boundary_states(full, n, ids, codec.pad_id)
    n_held = max(1, int(round(opt.held_out * len(ids))))
    held, train = list(range(len(ids) - n_held, len(ids))), list(range(len(ids) - n_held))
    sigma = torch.cat([h_out[j] for j in train]).std(0).clamp_min(1e-3)
    params = [p for layer in emu_mid for p in layer.parameters()]
    for p in emu.parameters():
        p.requires_grad_(False)
    before = _nmse(emu_mid, emu, h_in, h_out, sigma, held)
    optim = torch.optim.Adam(params, lr=opt.lr)
    rng = np.random.default_rng([int(opt.seed), 17])
    emit({"event": "start", "steps": opt.steps, "step": 0})
    window = []
    try:
        for p in params:
            p.requires_grad_(True)
        for step in range(1, opt.steps + 1):
            chunk = [train[int(k)] for k in rng.choice(len(train), min(opt.batch_size, len(train)), replace=False)]
            err, _ = _errors(emu_mid, emu, [h_in[j] for j in chunk], [h_out[j] for j in chunk], sigma)
            loss = err.mean()
            if not torch.isfinite(loss):
                raise PrivtuneError(f"--distill-lr: distillation diverged (non-finite loss at step {step})")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            window.append(float(loss.detach()))
            if step % 10 == 0 or step == opt.steps:
                emit({"event": "step", "step": step, "distill_nmse": sum(window) / len(window)})
                window = []
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    after = _nmse(emu_mid, emu, h_in, h_out, sigma, held)
    emit({"event": "done"})
    return {"corpus": ident, "options": asdict(opt), "texts_used": len(ids),
            "held_out_nmse": {"before": before, "after": after}}
