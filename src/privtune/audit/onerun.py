"""Privacy auditing with one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries, each included in training independently with probability ½. The auditor guesses "in" for the k₊
highest-scoring canaries and "out" for the k₋ lowest, abstaining on the rest: r = k₊ + k₋ guesses, v correct.
If training is (ε, δ)-DP, P[≥ v correct] ≤ β + 2mδ·α with β = P[Bin(r, q) ≥ v], q = e^ε/(1 + e^ε) and
α = max_{1≤i≤v} P[v − i ≤ Bin(r, q) < v]/i (the paper's Thm. 3.3 / its δ > 0 audit). The ε lower bound at
confidence 1 − γ is the largest ε whose p-value is still ≤ γ: every ε below it is rejected.

Pure functions (numpy/scipy); no torch, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # k₊ = k₋ = fraction · m/2


def p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P[≥ v correct of r guesses] under (ε, δ)-DP with m canaries (Steinke et al. 2023, Thm. 3.3)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m} r={r} v={v}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError("need eps >= 0 and 0 <= delta <= 1")
    q = 1.0 / (1.0 + math.exp(-eps))  # success rate of ε-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[Bin(r, q) ≥ v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v−1], P[Bin = v−2], ..., P[Bin = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i P[v−i ≤ Bin < v]/i
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """Largest ε rejected at level 1 − confidence: sup{ε : p_value(ε) ≤ 1 − confidence}; 0 if none is."""
    gamma = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) > gamma:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) <= gamma:
        lo, hi = hi, hi * 2
        if hi > 1e3:  # every guess right: the bound is as large as the confidence allows
            return lo
    while hi - lo > 1e-6 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) <= gamma else (lo, mid)
    return lo


def guesses(scores, included, k_pos: int, k_neg: int) -> tuple[int, int]:
    """(r, v): guess "in" for the k_pos highest scores, "out" for the k_neg lowest (ties broken by index)."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if k_pos + k_neg > s.size:
        raise ValueError("k_pos + k_neg must not exceed the number of canaries")
    order = np.argsort(-s, kind="stable")
    top, bottom = order[:k_pos], order[s.size - k_neg:] if k_neg else order[:0]
    return k_pos + k_neg, int(inc[top].sum() + (~inc[bottom]).sum())


def audit(scores, included, delta: float = 0.0, confidence: float = 0.95,
          fractions=GUESS_FRACTIONS) -> dict:
    """One-run ε lower bound: the best over k₊ = k₋ ∈ fractions·m/2, each tested at confidence
    1 − (1 − confidence)/len(fractions) (Bonferroni, so the reported maximum holds at `confidence`)."""
    m = len(scores)
    per = 1.0 - (1.0 - confidence) / len(fractions)
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    for f in fractions:
        k = max(1, int(f * m / 2))
        r, v = guesses(scores, included, k, k)
        eps = epsilon_lower_bound(m, r, v, delta, per)
        if eps > best["epsilon_lower_bound"] or best["guesses"] == 0:
            best = {"epsilon_lower_bound": eps, "guesses": r, "correct": v}
    return {"canaries": m, "delta": delta, "confidence": confidence, **best}
