"""The common privacy axis: one membership-inference attacker, three ways to state its bound.

Every guarantee privtune reports (PAC mutual information, (ε, δ)-DP) is mapped to the same number: the largest
success probability ("posterior") of a membership-inference attacker who faces a fair coin, i.e. a membership
prior of 1/2. For a prior of 1/2 the attacker's success probability equals the balanced accuracy
(TPR + 1 − FPR) / 2 of its test, so "posterior" below is that accuracy.

- MI view (PAC privacy, Xiao & Devadas, CRYPTO 2023, Thm. 1): an attacker with
  success probability p satisfies KL(Bern(p) ‖ Bern(1/2)) = ln 2 − H_b(p) ≤ I, so p ≤ mi_to_posterior(I).
- DP view (Kairouz, Oh & Viswanath, ICML 2015, Thm. 2.1): every test of an (ε, δ)-DP mechanism has
  TPR ≤ min(1, e^ε·FPR + δ, 1 − e^{−ε}(1 − δ − FPR)); the best balanced accuracy is at the corner of that
  region, p = (e^ε + δ) / (1 + e^ε).

Pure functions on floats / numpy arrays; no torch, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from privtune.errors import ConfigError
from privtune.privacy._checks import number as _check_finite

LN2 = math.log(2.0)


def _check_posterior(p: float, name: str = "p") -> float:
    p = _check_finite(name, p)
    if not 0.5 <= p <= 1.0:
        raise ConfigError(f"{name}: must be in [0.5, 1], got {p}")
    return p


def _check_delta(delta: float) -> float:
    delta = _check_finite("delta", delta)
    if not 0.0 <= delta < 1.0:
        raise ConfigError(f"delta: must be in [0, 1), got {delta}")
    return delta


def _check_epsilon(eps: float) -> float:
    eps = _check_finite("epsilon", eps)
    if eps < 0.0:
        raise ConfigError(f"epsilon: must be >= 0, got {eps}")
    return eps


def _kl_to_half(p: float) -> float:
    # KL(Bern(p) ‖ Bern(1/2)) = p·ln(2p) + (1−p)·ln(2(1−p)) = ln 2 − H_b(p)  (Xiao & Devadas 2023, Thm. 1)
    out = 0.0
    for x in (p, 1.0 - p):
        if x > 0.0:
            out += x * math.log(2.0 * x)
    return out


def posterior_to_mi(p: float) -> float:
    """Mutual information (nats) whose PAC posterior bound is exactly `p` (prior 1/2): ln 2 − H_b(p)."""
    p = _check_posterior(p)
    return max(_kl_to_half(p), 0.0)


def mi_to_posterior(mi_nats: float) -> float:
    """Largest attacker success probability p ∈ [1/2, 1] allowed by a mutual-information budget of `mi_nats`.

    Solves ln 2 − H_b(p) = I on [1/2, 1] (the left side is increasing there) with brentq to ~1e-12;
    I ≥ ln 2 gives 1.0 (the budget no longer constrains the attacker).
    """
    mi = _check_finite("mi_nats", mi_nats)
    if mi < 0.0:
        raise ConfigError(f"mi_nats: must be >= 0, got {mi}")
    if mi == 0.0:
        return 0.5
    if mi >= LN2:
        return 1.0
    # PAC posterior bound: largest p with KL(Bern(p) ‖ Bern(1/2)) ≤ I  (Xiao & Devadas 2023, Thm. 1)
    return float(brentq(lambda p: _kl_to_half(p) - mi, 0.5, 1.0, xtol=1e-14, rtol=4 * np.finfo(float).eps,
                        maxiter=200))


def eps_to_posterior(eps: float, delta: float = 0.0) -> float:
    """Largest membership-inference success probability (prior 1/2) against an (ε, δ)-DP mechanism.

    δ = 0: e^ε / (1 + e^ε). δ > 0: (e^ε + δ) / (1 + e^ε), the balanced accuracy at the corner
    FPR* = (1 − δ)/(1 + e^ε) of the DP hypothesis-testing region (Kairouz et al. 2015, Thm. 2.1); equivalently
    (1 + (e^ε − 1 + 2δ)/(e^ε + 1)) / 2. This is the exact maximum, not the looser e^ε/(1+e^ε) + δ.
    """
    eps = _check_epsilon(eps)
    delta = _check_delta(delta)
    if math.isinf(eps):
        return 1.0
    # max balanced accuracy of an (ε, δ)-DP test = (e^ε + δ)/(1 + e^ε)  (Kairouz et al. 2015, Thm. 2.1, corner)
    # written with e^{−ε} so that large ε does not overflow
    return float((1.0 + delta * math.exp(-eps)) / (1.0 + math.exp(-eps)))


def posterior_to_eps(p: float, delta: float = 0.0) -> float:
    """Inverse of `eps_to_posterior`: ε = ln((p − δ)/(1 − p)).

    p = 1 gives inf. If p < (1 + δ)/2 no ε ≥ 0 reaches p (already (0, δ)-DP allows (1 + δ)/2): returns 0.0.
    """
    p = _check_posterior(p)
    delta = _check_delta(delta)
    if p >= 1.0:
        return math.inf
    if p <= (1.0 + delta) / 2.0:
        return 0.0
    # invert p = (e^ε + δ)/(1 + e^ε)  (Kairouz et al. 2015, Thm. 2.1)
    return float(math.log((p - delta) / (1.0 - p)))


def tradeoff_tpr(fpr, eps: float, delta: float = 0.0):
    """Largest TPR of any membership test at false-positive rate `fpr` against an (ε, δ)-DP mechanism.

    Vectorised over numpy `fpr` (returns a float for a scalar input).
    """
    eps = _check_epsilon(eps)
    delta = _check_delta(delta)
    x = np.asarray(fpr, dtype=float)
    if np.any(np.isnan(x)) or np.any(x < 0.0) or np.any(x > 1.0):
        raise ConfigError("fpr: must lie in [0, 1]")
    # TPR ≤ min(1, e^ε·FPR + δ, 1 − e^{−ε}(1 − δ − FPR))  (Kairouz et al. 2015, Thm. 2.1)
    with np.errstate(over="ignore", invalid="ignore"):
        first = np.where(x > 0.0, np.exp(eps) * x, 0.0) + delta
    second = 1.0 - math.exp(-eps) * (1.0 - delta - x)
    out = np.minimum(1.0, np.minimum(first, second))
    return float(out) if out.ndim == 0 else out


def match_posterior(p: float) -> dict:
    """The MI (nats) and pure ε (δ = 0) whose attacker bounds both equal the posterior `p`."""
    p = _check_posterior(p, "posterior")
    return {"posterior": p, "mi_nats": posterior_to_mi(p), "epsilon": posterior_to_eps(p, 0.0)}


def privacy_views(*, mi: float | None = None, epsilon: float | None = None, delta: float = 0.0,
                  posterior: float | None = None) -> dict:
    """All three views of one attacker bound; give exactly one of `mi`, `epsilon`, `posterior`.

    `delta` is used in the ε ↔ posterior conversion (both directions) and is reported back unchanged.
    """
    given = [name for name, v in (("mi", mi), ("epsilon", epsilon), ("posterior", posterior)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"mi/epsilon/posterior: give exactly one, got {given or 'none'}")
    delta = _check_delta(delta)
    if mi is not None:
        p = mi_to_posterior(mi)
        mi_nats = _check_finite("mi", mi)
    elif epsilon is not None:
        p = eps_to_posterior(epsilon, delta)
        mi_nats = posterior_to_mi(p)
    else:
        p = _check_posterior(posterior, "posterior")
        mi_nats = posterior_to_mi(p)
    eps = float(epsilon) if epsilon is not None else posterior_to_eps(p, delta)
    return {"posterior": p, "mi_nats": float(mi_nats), "epsilon": eps, "delta": delta}
