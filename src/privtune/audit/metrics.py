"""Membership-inference metrics on attack scores (higher score = "member"), with seeded bootstrap CIs.

Pure functions on numpy arrays (scikit-learn for the ROC); no torch, no I/O.

- auc: ROC AUC. tpr_at_fpr: the largest TPR whose FPR is ≤ the target (Carlini et al., S&P 2022, "LiRA": report
  TPR at low FPR). With n non-members the smallest FPR above 0 is 1/n: a target below it reads TPR at FPR = 0.
- posterior_success: the attacker's success probability against a fair coin (prior ½) = its balanced accuracy
  (TPR + TNR)/2 at a threshold chosen on the other half of the data (2-fold cross-fitting). Choosing the threshold
  on the same scores it is scored on would bias it above ½ even for identical distributions; cross-fitting does not,
  so it can be set against a proven posterior bound (privtune.privacy.bounds).
- gdp_epsilon: an ε *estimate* assuming a Gaussian trade-off curve (μ-GDP, Dong, Roth & Su 2019):
  μ = √2·Φ⁻¹(AUC) and ε(δ) from Cor. 2.13. Not a bound; the canary audit (onerun.py) gives a proven lower
  bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

FPR_TARGETS = (0.01, 0.001)


def _labels_scores(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("scores: need at least one member and one non-member")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("scores: must be finite")
    return np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b]


def auc(members, nonmembers) -> float:
    y, s = _labels_scores(members, nonmembers)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(members, nonmembers, target: float) -> float:
    y, s = _labels_scores(members, nonmembers)
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= target].max())


def _best_threshold(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Threshold t maximising the balanced accuracy of "member iff score ≥ t" (numpy; called in the bootstrap)."""
    s = np.r_[members, nonmembers]
    y = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    gain = np.cumsum(y) / members.size - np.cumsum(1 - y) / nonmembers.size  # TPR − FPR at t = s[i]
    last = np.r_[s[1:] != s[:-1], True]  # only where the score changes: ties go together
    i = int(np.argmax(np.where(last, gain, -np.inf)))
    return float(s[i]) if gain[i] > 0 else np.inf  # no threshold beats "never member"


def folds(n_members: int, n_nonmembers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 2-fold split (0/1 per example) of the members and of the non-members."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_members) % 2, rng.permutation(n_nonmembers) % 2


def posterior_success(members, nonmembers, seed: int = 0, fold=None) -> float:
    """Cross-fitted balanced accuracy (prior ½): thresholds chosen on one fold, scored on the other. `fold`: the
    (members, non-members) fold labels; default a seeded split."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    fa, fb = folds(a.size, b.size, seed) if fold is None else fold
    hits_a = hits_b = 0
    for k in (0, 1):
        if not (np.any(fa != k) and np.any(fb != k)):  # too few examples to fit a threshold on the other fold
            t = np.inf
        else:
            t = _best_threshold(a[fa != k], b[fb != k])
        hits_a += int(np.sum(a[fa == k] >= t))
        hits_b += int(np.sum(b[fb == k] < t))
    return 0.5 * (hits_a / a.size + hits_b / b.size)


def bootstrap(stat, n_members: int, n_nonmembers: int, n_boot: int, seed: int, levels=(0.95,)) -> dict:
    """Percentile bootstrap of stat(member_idx, nonmember_idx), members and non-members resampled separately
    (seeded). Returns {level: (low, high)}."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    vals = np.array([stat(rng.integers(n_members, size=n_members), rng.integers(n_nonmembers, size=n_nonmembers))
                     for _ in range(n_boot)])
    return {lv: (float(np.quantile(vals, (1 - lv) / 2)), float(np.quantile(vals, 1 - (1 - lv) / 2))) for lv in levels}


def mia_metrics(members, nonmembers, *, n_boot: int = 200, seed: int = 0, confidence: float = 0.95,
                check_confidence: float | None = None) -> dict:
    """AUC, TPR at 1% and 0.1% FPR and the posterior success (cross-fitted balanced accuracy), each with a
    `confidence` bootstrap CI; the posterior success also with a one-sided lower bound at `check_confidence`
    (default: `confidence`), the number set against a proven bound. In the bootstrap a resampled example keeps its
    fold, so its copies never sit on both sides of the cross-fitting."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    _labels_scores(a, b)
    check = confidence if check_confidence is None else check_confidence
    fa, fb = folds(a.size, b.size, seed)
    stats = {"auc": lambda i, j: auc(a[i], b[j]),
             "posterior_success": lambda i, j: posterior_success(a[i], b[j], fold=(fa[i], fb[j]))}
    for f in FPR_TARGETS:
        stats[f"tpr_at_{f:g}_fpr"] = lambda i, j, f=f: tpr_at_fpr(a[i], b[j], f)
    out = {"n_members": int(a.size), "n_nonmembers": int(b.size)}
    every_a, every_b = np.arange(a.size), np.arange(b.size)
    for name, fn in stats.items():
        levels = (confidence, 2 * check - 1) if name == "posterior_success" else (confidence,)
        ci = bootstrap(fn, a.size, b.size, n_boot, seed, levels)
        out[name] = fn(every_a, every_b)
        out[f"{name}_ci"] = list(ci[confidence])
        if name == "posterior_success":
            out["posterior_success_lower"] = ci[2 * check - 1][0]  # one-sided lower bound at `check`
    out["balanced_accuracy"] = out["posterior_success"]
    out["epsilon_gdp_estimate"] = gdp_epsilon(gdp_mu(out["auc"]), 1e-5)
    return out


# ------------------------------------------------------------------------------------------- Gaussian trade-off
def gdp_mu(auc_value: float) -> float:
    """μ of the Gaussian trade-off curve with this AUC: AUC = Φ(μ/√2) (N(μ,1) vs N(0,1)); 0 for AUC ≤ ½."""
    a = min(max(float(auc_value), 0.5), 1.0 - 1e-12)
    return float(math.sqrt(2.0) * norm.ppf(a))


def gdp_delta(mu: float, eps: float) -> float:
    # δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)  (Dong, Roth & Su 2019, Cor. 2.13)
    return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε ≥ 0 with δ(ε) ≤ delta for a μ-GDP mechanism (0 when μ = 0)."""
    if mu <= 0.0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2.0
    return float(brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-10))
