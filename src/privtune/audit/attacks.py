"""Membership-inference attack scores of examples under a trained model (higher score = "more likely a member").

An example is its prompt (the task template around the text) followed by what the fine-tuning objective scores:
its label's verbalizer token (classification), its true choice (multiple choice), or its first gold answer and the
stop string (generation). For the last two the token-level attacks read only the answer's tokens given the prompt,
and zlib compresses the answer's text (`_lm_sequences`).

- loss: −(the training loss): CE over the verbalizer logits or the choices' scores, the answer's mean token NLL
  (Yeom et al., CSF 2018).
- conf: the logit-scaled confidence of the true label, z_y − logsumexp_{j≠y} z_j over the verbalizer logits or the
  choices' scores (Carlini et al., S&P 2022); for generation the answer's mean token log-prob. It orders examples as the
  loss does, except where the float32 loss has saturated to exactly 0: a memorising run puts most members *and* the
  confidently classified non-members there, and only the margin still tells them apart.
- zlib: −(mean token NLL of the example under the full LM) / (zlib-compressed length of its text in bytes)
  (Carlini et al., USENIX Security 2021).
- mink: Min-K% Prob, the mean log-probability of the k% least likely tokens (Shi et al., ICLR 2024).
- minkpp: Min-K%++, the same over (log p(x_t) − μ_t)/σ_t with μ_t, σ_t the mean and std of log p(·) under the
  model's own next-token distribution (Zhang et al. 2024, arXiv 2404.02936, Eq. 3).
- ref: reference-model calibration: conf_trained − conf_reference, how much more confident the trained model is than
  the reference (Carlini et al. 2021 / Watson et al., ICLR 2022). The reference is the base model, or with
  `privtune audit --reference` an attacker's shadow run: the same recipe trained on other data, which removes the
  fine-tuning's general gain (Carlini et al. 2022's offline reference model, one shadow).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from ..run.setup import encode_examples
from ..zo.forward import left_pad, length_sorted_chunks, position_ids

ATTACKS = ("loss", "conf", "zlib", "mink", "minkpp", "ref")
LM_ATTACKS = {"zlib", "mink", "minkpp"}  # need a full-vocabulary forward of every token
K_FRACTION = 0.2  # Min-K% and Min-K%++: the 20% least likely tokens


@torch.no_grad()
def token_stats(model, sequences: list[list[int]], device, pad_id: int = 0, micro_batch: int = 16) -> list[dict]:
    """Per sequence: log p(x_t | x_<t) for t ≥ 1, and μ_t, σ_t of log p(·|x_<t) under the model (Min-K%++)."""
    out: list[dict] = [None] * len(sequences)
    for chunk in length_sorted_chunks(sequences, range(len(sequences)), micro_batch):
        ids, attn = left_pad([sequences[j] for j in chunk], pad_id)
        ids, attn = ids.to(device), attn.to(device)
        T = ids.shape[1]
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..T-1
        target = logp.gather(-1, ids[:, 1:, None])[..., 0]
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
        for row, j in enumerate(chunk):
            n = len(sequences[j]) - 1
            out[j] = {"logp": target[row, T - 1 - n:].cpu().numpy(), "mu": mu[row, T - 1 - n:].cpu().numpy(),
                      "sigma": sigma[row, T - 1 - n:].cpu().numpy()}
    return out


def min_k(values: np.ndarray, k: float = K_FRACTION) -> float:
    """Mean of the ⌈k·n⌉ smallest values (Shi et al. 2024, Min-K% Prob)."""
    n = max(1, int(np.ceil(k * values.size)))
    return float(np.sort(values)[:n].mean())


def lm_scores(stats: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
    zl = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=float)
    nll = np.array([-s["logp"].mean() for s in stats])
    return {
        "zlib": -nll / zl,
        "mink": np.array([min_k(s["logp"]) for s in stats]),
        "minkpp": np.array([min_k((s["logp"] - s["mu"]) / s["sigma"]) for s in stats]),
    }


def scores(setup, examples, ref_state: dict, trained_state: dict, attacks=ATTACKS, micro_batch: int = 16) -> dict:
    """Attack scores for `examples` (privtune.data.Example) under the run's trained weights. `setup` is a
    privtune.run.setup.Setup; its trainable parameters are left at `trained_state`. `ref_state`: the ref attack's
    reference weights (the base model's, or an attacker's shadow run's)."""
    from ..trainable import load_trainable_state

    out: dict[str, np.ndarray] = {}
    data = encode_examples(setup, examples)
    load_trainable_state(setup.sel, trained_state)
    engine = setup.engine
    confidence = lambda lg: engine.forward.confidence(lg, data.labels).cpu().numpy()  # noqa: E731
    lg = engine.logits(data)
    if "loss" in attacks:
        out["loss"] = -engine.forward.loss(lg, data.labels).cpu().numpy().astype(float)
    if "conf" in attacks:
        out["conf"] = confidence(lg)
    if "ref" in attacks:
        load_trainable_state(setup.sel, ref_state)
        lg_ref = engine.logits(data)
        load_trainable_state(setup.sel, trained_state)
        out["ref"] = confidence(lg) - confidence(lg_ref)
    if LM_ATTACKS & set(attacks):
        texts, seqs, n_answer = _lm_sequences(setup, examples, data)
        stats = token_stats(setup.sel.model, seqs, setup.engine.device, setup.lm.codec.pad_id, micro_batch)
        if n_answer is not None:  # multi-token tasks: the statistics of the answer's (or true choice's) tokens
            stats = [{k: v[-n:] for k, v in s.items()} for s, n in zip(stats, n_answer)]
        out.update({k: v for k, v in lm_scores(stats, texts).items() if k in attacks})
    return {k: out[k] for k in attacks}


def _lm_sequences(setup, examples, data):
    """What the token-level attacks read: (texts for zlib, token sequences, how many final tokens are the answer).

    classification: the prompt and its label word (all of its tokens scored, n_answer None); multiple_choice: the
    prompt and the true choice; generation: the prompt and the trained answer (with its stop). For the multi-token
    types only the answer's tokens are scored, and zlib compresses the answer's text."""
    from ..data import render

    task = setup.task
    if task.type == "classification":
        texts = [render(task.template, ex.text) + task.verbalizer[ex.label] for ex in examples]
        seqs = [list(ids) + [setup.verbalizer_ids[ex.label]] for ids, ex in zip(data.ids, examples)]
        return texts, seqs, None
    texts, seqs, n_answer = [], [], []
    for j, ex in enumerate(examples):
        tree = data.trees[j]
        P = tree.branch.count(-1)
        mine = ex.label if task.type == "multiple_choice" else 0
        answer = [tok for tok, b in zip(data.ids[j], tree.branch) if b == mine]
        seqs.append(list(data.ids[j][:P]) + answer)
        n_answer.append(len(answer))
        texts.append(ex.choices[ex.label] if task.type == "multiple_choice" else ex.answers[0])
    return texts, seqs, n_answer
