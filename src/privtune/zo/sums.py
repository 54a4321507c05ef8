"""Reductions in one fixed order: the ZO scalar, and the sums every method takes over a batch's examples.

A method's data-dependent sums decide the final weights, so they are added in an order that depends on nothing but
the examples: example order inside each of the engine's micro-batches (chunks), then chunk order. That order does
not change with the number of processes (see chunk_sums), which makes the weights bit-identical under torchrun.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import dist
from ..qa_metrics import percent_means, question_scores


def zo_scalars(lp: torch.Tensor, lm: torch.Tensor, eps: float) -> torch.Tensor:
    """g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε (MeZO, Malladi et al. 2023, Alg. 1: projected gradient)."""
    return (lp - lm) / (2.0 * eps)


def ordered_sum(rows) -> np.ndarray:
    """Σ of the rows of a [k, w] float64 array, added one row at a time in row order."""
    rows = np.asarray(rows, dtype=np.float64)
    total = np.zeros(rows.shape[1:], dtype=np.float64)
    for row in rows:
        total += row
    return total


def chunk_sums(engine, data, idx, rows_of, width: int) -> np.ndarray:
    """Σ_i rows_of(examples)_i over the distinct examples `idx` (None = all): float64 [width], summed in one order
    that does not depend on the number of processes — example order inside each of the engine's chunks, then chunk
    order. `rows_of(examples)` gives one float64 row of `width` per example (elementwise in its inputs).

    Under torchrun rank r computes only chunks r, r+P, ... (the very chunks one process uses, so the same floats);
    the per-chunk partial sums are gathered (dist.gather_rows) and added in chunk order on every rank, so every
    method's data-dependent sum, and with it the final weights, is bit-identical for any P. Every method uses this.
    An engine without micro-batches (a test double) is one chunk."""
    idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
    chunks = engine.chunks(data, idx) if hasattr(engine, "chunks") else ([idx] if idx else [])
    mine = [chunks[c] for c in dist.shard(len(chunks))]
    part = np.zeros((len(mine), width), dtype=np.float64)
    flat = [j for c in mine for j in c]
    if flat:
        rows = np.asarray(rows_of(flat), dtype=np.float64).reshape(len(flat), width)
        at = 0
        for k, c in enumerate(mine):
            part[k] = ordered_sum(rows[at:at + len(c)])
            at += len(c)
    return ordered_sum(dist.gather_rows(part, len(chunks)))


def pair_sums(engine, data, idx, seed: int, eps: float, values, width: int) -> np.ndarray:
    """chunk_sums of values(ℓ⁺, ℓ⁻, examples) → [n, width], from the per-example losses at θ ± εz (one batched pass
    per sign over this rank's chunks)."""
    def rows_of(flat):
        lp, lm = engine.pair_losses(data, flat, seed, eps)
        return values(lp.cpu(), lm.cpu(), flat)
    return chunk_sums(engine, data, idx, rows_of, width)


def accuracy(engine, data, callback=None) -> tuple[float, int]:
    """Eval accuracy of a ZOEngine on Encoded `data`; under torchrun each rank scores its share of the chunks.
    `callback` (optional) gets {"event": "score", "done": n, "total": N} after each micro-batch, counting the
    examples this rank scores: an evaluation over thousands of examples takes minutes on a CPU."""
    def hits(flat):
        # One micro-batch per pass (a chunk's logits do not depend on the other chunks, so these are the floats of
        # one pass over all of them), so that progress can be reported between chunks.
        parts = engine.chunks(data, flat) if hasattr(engine, "chunks") else [flat]
        hit, done = {}, 0
        for part in parts:
            lg = engine.logits(data, part)
            hit.update(zip(part, (lg.argmax(-1).cpu() == data.labels[part]).tolist()))
            done += len(part)
            if callback is not None:
                callback({"event": "score", "done": done, "total": len(flat)})
        return np.array([float(hit[j]) for j in flat], dtype=np.float64)
    correct = int(chunk_sums(engine, data, None, hits, 1)[0])
    return correct / max(len(data), 1), correct


def score(engine, data, callback=None, per_question: bool = False) -> dict:
    """Eval metrics of the engine's model as it is now on Encoded `data`: accuracy (classification,
    multiple_choice: argmax over the label words or the choices' scores), or for generation the SQuAD exact match
    and token F1 of its greedy answers (max over the gold answers), as fractions. `per_question` (generation only)
    adds each question's F1 and exact match, in eval order, so that two models can be compared on the same questions
    (`privtune eval --out` on an eval split; never on a train split, whose per-example scores are private)."""
    if engine.forward.task_type == "generation":
        # Greedy answers are decoded from the prompts alone. run.setup.encode_examples sets them on every generation
        # Encoded; without them the ids are the packed prompt + gold answer, and decoding after those would score
        # a continuation of the answer.
        if data.prompts is None:
            raise ValueError("zo.sums.score: a generation task's examples carry no prompts to decode from "
                             "(encode them with run.setup.encode_examples)")
        preds = engine.forward.generate(data.prompts, callback)
        q = question_scores(preds, data.answers)  # scored once: the means and, when asked, the per-question lists
        s = percent_means(q)
        out = {"f1": s["f1"] / 100.0, "exact_match": s["exact_match"] / 100.0, "total": len(preds)}
        if per_question:
            out["per_question"] = q
        return out
    acc, correct = accuracy(engine, data, callback=callback)
    return {"accuracy": acc, "correct": correct, "total": len(data)}


def headline(result: dict) -> tuple[str, float]:
    """The metric a run is judged by, and its value: accuracy, or F1 for a generation task (a `score` result)."""
    return ("f1", result["f1"]) if "f1" in result else ("accuracy", result["accuracy"])
