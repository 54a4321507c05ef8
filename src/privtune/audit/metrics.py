"""Membership-inference metrics on attack scores (higher score = "member"), with seeded bootstrap CIs.

Pure functions on numpy arrays (scikit-learn for the ROC); no torch, no I/O.

- auc: ROC AUC. tpr_at_fpr: the largest TPR whose FPR is ≤ the target (Carlini et al., S&P 2022, "LiRA": report
  TPR at low FPR). With n non-members the smallest FPR above 0 is 1/n: a target below it reads TPR at FPR = 0.
- posterior_success: the attacker's success probability against a fair coin (prior ½) = its balanced accuracy
  (TPR + TNR)/2 at a threshold chosen on the other half of the data (2-fold cross-fitting). Choosing the threshold
  on the same scores it is scored on would bias it above ½ even for identical distributions; cross-fitting does not,
  so it can be set against a proven posterior bound (privtune.privacy.bounds).
- audit_checks: the violation checks of an audit, one family at false-alarm rate α (Bonferroni over every test that
  can raise a violation): per attack, the posterior success's bootstrap lower bound against the proven posterior
  bound, and an exact held-out test of TPR at 1% FPR against the (ε, δ)-DP trade-off curve.
- gdp_epsilon: an ε *estimate* assuming a Gaussian trade-off curve (μ-GDP, Dong, Roth & Su 2019):
  μ = √2·Φ⁻¹(AUC) and ε(δ) from Cor. 2.13. Not a bound; the canary audit (onerun.py) gives a proven lower
  bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score, roc_curve

from privtune.privacy.bounds import tradeoff_tpr

FPR_TARGETS = (0.01, 0.001)
ALPHA = 0.05  # an audit of a run that keeps its guarantee raises a (false) violation at most this often


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


def mia_metrics(members, nonmembers, *, n_boot: int = 200, seed: int = 0, confidence: float = 0.95) -> dict:
    """AUC, TPR at 1% and 0.1% FPR and the posterior success (cross-fitted balanced accuracy), each with a
    `confidence` bootstrap CI. In the bootstrap a resampled example keeps its fold, so its copies never sit on both
    sides of the cross-fitting. These are the reported numbers; the checks against a proven bound are audit_checks."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    _labels_scores(a, b)
    fa, fb = folds(a.size, b.size, seed)
    stats = {"auc": lambda i, j: auc(a[i], b[j]),
             "posterior_success": lambda i, j: posterior_success(a[i], b[j], fold=(fa[i], fb[j]))}
    for f in FPR_TARGETS:
        stats[f"tpr_at_{f:g}_fpr"] = lambda i, j, f=f: tpr_at_fpr(a[i], b[j], f)
    out = {"n_members": int(a.size), "n_nonmembers": int(b.size)}
    every_a, every_b = np.arange(a.size), np.arange(b.size)
    for name, fn in stats.items():
        out[name] = fn(every_a, every_b)
        out[f"{name}_ci"] = list(bootstrap(fn, a.size, b.size, n_boot, seed, (confidence,))[confidence])
    out["balanced_accuracy"] = out["posterior_success"]
    out["epsilon_gdp_estimate"] = gdp_epsilon(gdp_mu(out["auc"]), 1e-5)
    return out


# ------------------------------------------------------------------------------------------- violation checks
def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact one-sided bounds on a binomial rate from k successes in n trials (Clopper & Pearson 1934): (lower,
    upper), each of which holds with probability ≥ 1 − alpha on its own."""
    lower = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))
    return lower, upper


def _resample_counts(n: int, rows: int, rng) -> np.ndarray:
    """[rows, n] copies of each of n examples in `rows` bootstrap resamples of size n."""
    idx = rng.integers(n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)


def posterior_success_boot(members, nonmembers, fold, n_boot: int, seed: int) -> np.ndarray:
    """posterior_success on n_boot fold-preserving bootstrap resamples at once: entry r equals
    posterior_success(a[i], b[j], fold=(fa[i], fb[j])) for the r-th resample (i, j) (members and non-members
    resampled separately). A resample is a row of copy counts over the examples, sorted once by fold and score, so
    a fold's best threshold is a cumulative sum along the row instead of a sort."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    s, fo = np.r_[a, b], np.r_[fold[0], fold[1]]
    order = np.lexsort((-s, fo))  # fold 0 by descending score, then fold 1
    s, is_m, fo = s[order], np.r_[np.ones(a.size, bool), np.zeros(b.size, bool)][order], fo[order]
    n0 = int(np.sum(fo == 0))
    blocks = (slice(0, n0), slice(n0, s.size))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    chunk = max(1, 2**20 // s.size)  # resamples per block of rows: bounded memory for large audits
    out = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        w = np.c_[_resample_counts(a.size, rows, rng), _resample_counts(b.size, rows, rng)][:, order]
        wm = np.where(is_m, w, 0)
        cm, cx = np.cumsum(wm, axis=1), np.cumsum(w - wm, axis=1)
        # per fold: copies of members and of non-members at or above each position (zero-width if the fold is empty)
        cum = [(cm[:, f] - cm[:, f.start - 1:f.start], cx[:, f] - cx[:, f.start - 1:f.start]) if f.start else
               (cm[:, f], cx[:, f]) for f in blocks]
        total = [(m[:, -1], x[:, -1]) if m.shape[1] else (np.zeros(rows), np.zeros(rows)) for m, x in cum]
        r = np.arange(rows)
        hits_a = hits_b = 0
        for k in (0, 1):  # fold k is scored at the threshold fitted on fold 1 − k
            (fit_m, fit_x), (n_m, n_x), fit_s = cum[1 - k], total[1 - k], s[blocks[1 - k]]
            hits_b = hits_b + total[k][1]  # every scored non-member is below "never member"
            if not (fit_s.size and s[blocks[k]].size):
                continue
            end = np.r_[fit_s[1:] != fit_s[:-1], True]  # a threshold ends a run of equal scores: ties go together
            with np.errstate(divide="ignore", invalid="ignore"):  # an empty side: no threshold (`found` below)
                gain = fit_m / n_m[:, None] - fit_x / n_x[:, None]  # TPR − FPR at each threshold
            gain = np.where(end & ~np.isnan(gain), gain, -np.inf)
            i = np.argmax(gain, axis=1)  # the first (highest-score) best, as _best_threshold picks it
            found = (gain[r, i] > 0) & (n_m > 0) & (n_x > 0)  # else "never member" (threshold +inf)
            above = np.searchsorted(-s[blocks[k]], -fit_s[i], side="right")  # scored examples at or above it
            found &= above > 0
            j = np.maximum(above - 1, 0)
            hits_a = hits_a + np.where(found, cum[k][0][r, j], 0)
            hits_b = hits_b - np.where(found, cum[k][1][r, j], 0)
        out.append(0.5 * (hits_a / a.size + hits_b / b.size))
    return np.concatenate(out)


def posterior_success_lower(members, nonmembers, alpha: float, n_boot: int = 200, seed: int = 0) -> float:
    """One-sided lower confidence bound (level 1 − alpha) on the cross-fitted posterior success, from a
    fold-preserving percentile bootstrap: the k-th smallest of B resampled values, k = ⌊alpha·(B + 1)⌋ (the usual
    order statistic for an alpha quantile of B draws). B = n_boot, raised to ⌈1/alpha⌉ − 1 where fewer resamples
    would leave no value below the quantile: interpolating past the smallest would understate the uncertainty."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    n = max(n_boot, math.ceil(1.0 / alpha - 1.0 - 1e-9))
    k = max(1, math.floor(alpha * (n + 1) + 1e-9))  # 1e-9: alpha·(B + 1) meant as an integer may round below it
    vals = posterior_success_boot(a, b, folds(a.size, b.size, seed), n, seed)
    return float(np.partition(vals, k - 1)[k - 1])


def heldout_tpr_check(members, nonmembers, *, fpr: float, epsilon: float, delta: float, alpha: float,
                      seed: int = 0) -> dict | None:
    """Exact test that TPR at false-positive rate `fpr` lies above the (ε, δ)-DP trade-off curve f = tradeoff_tpr.

    The threshold is fixed on the fold-0 non-members alone (the lowest one whose FPR there is ≤ fpr). Given it, the
    hits among all members and the false positives among the held-out fold-1 non-members are independent binomials
    with the threshold's true rates (TPR, FPR), and (ε, δ)-DP gives TPR ≤ f(FPR). The check takes exact one-sided
    Clopper–Pearson bounds TPR_lo and FPR_up, at alpha/2 each, and fires when TPR_lo > f(FPR_up): f is
    nondecreasing, so under the guarantee this needs TPR_lo > TPR or FPR_up < FPR, probability ≤ alpha together.
    Comparing with f at the realized held-out FPR would not be valid: that FPR falls below the true one about half
    the time, and f's slope e^ε turns the shortfall into a TPR excess. None when a side has too few examples."""
    a, b = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    fb = folds(a.size, b.size, seed)[1]
    fit, held = np.sort(b[fb == 0])[::-1], b[fb == 1]
    if fit.size == 0 or held.size == 0:
        return None
    k = math.floor(fpr * fit.size + 1e-9)  # false positives allowed on the fit non-members
    t = fit[k] if k < fit.size else -np.inf  # "member iff score > t"
    tp, fp = int(np.sum(a > t)), int(np.sum(held > t))
    tpr_lo, _ = clopper_pearson(tp, a.size, alpha / 2)
    _, fpr_up = clopper_pearson(fp, held.size, alpha / 2)
    bound = float(tradeoff_tpr(fpr_up, epsilon, delta))
    return {"fpr_target": fpr, "threshold": float(t), "tpr": tp / a.size, "fpr": fp / held.size,
            "n_members": int(a.size), "n_nonmembers_fit": int(fit.size), "n_nonmembers_heldout": int(held.size),
            "tpr_lower": tpr_lo, "fpr_upper": fpr_up, "tpr_bound": bound, "violation": bool(tpr_lo > bound)}


def audit_checks(scores: dict, *, posterior_bound: float | None, epsilon: float | None, delta: float = 0.0,
                 alpha: float = ALPHA, other_tests: int = 0, n_boot: int = 200, seed: int = 0) -> dict:
    """Every membership-inference check of an audit against the proven bounds, as one family of tests.

    scores: {attack: (member scores, non-member scores)}. posterior_bound: the proven MIA posterior bound, None where
    it does not cover the audited game; epsilon, delta: the proven (ε, δ), None where there is none.
    Checks, per attack: (1) the posterior success's bootstrap lower bound (posterior_success_lower) above
    posterior_bound; (2) TPR at 1% FPR above the DP trade-off curve (heldout_tpr_check). A check whose bound cannot
    be exceeded (posterior bound 1, ε = ∞) is not run.
    How α is split (Bonferroni): n_tests = attacks × checks run + other_tests (the caller's other tests that can
    raise a violation, e.g. the canary audit, which then runs each at alpha_per_test); every test gets
    alpha_per_test = alpha / n_tests (the TPR check halves it again between its TPR and FPR bounds). So a run that
    keeps its guarantee raises any violation with probability ≤ alpha. With no check to run the lower bounds are
    reported at alpha per attack.

    Returns {"alpha", "n_tests", "alpha_per_test", "attacks": {name: {"posterior_success_lower", "tpr_check"}},
    "violations": [one line each]}."""
    names = list(scores)
    check_post = posterior_bound is not None and posterior_bound < 1.0
    check_tpr = epsilon is not None and math.isfinite(epsilon)
    n_tests = len(names) * (int(check_post) + int(check_tpr)) + other_tests
    a_test = alpha / max(n_tests, 1)
    out = {"alpha": alpha, "n_tests": n_tests, "alpha_per_test": a_test, "attacks": {}, "violations": []}
    for name in names:
        a, b = (np.asarray(x, dtype=float) for x in scores[name])
        _labels_scores(a, b)
        lower = posterior_success_lower(a, b, a_test, n_boot, seed)
        res = {"posterior_success_lower": lower, "tpr_check": None}
        if check_post and lower > posterior_bound:
            out["violations"].append(f"{name}: posterior success lower bound {lower:.4f} (confidence "
                                     f"{1 - a_test:.4g}) exceeds the bound {posterior_bound:.4f}")
        if check_tpr:
            t = heldout_tpr_check(a, b, fpr=FPR_TARGETS[0], epsilon=epsilon, delta=delta, alpha=a_test, seed=seed)
            res["tpr_check"] = t
            if t is not None and t["violation"]:
                out["violations"].append(
                    f"{name}: held-out TPR {t['tpr']:.4f} (lower bound {t['tpr_lower']:.4f}) at FPR {t['fpr']:.4f} "
                    f"(upper bound {t['fpr_upper']:.4f}) exceeds the DP trade-off bound {t['tpr_bound']:.4f}")
        out["attacks"][name] = res
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
