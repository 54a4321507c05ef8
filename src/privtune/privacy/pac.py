"""PACZero privacy math: the binary-input Gaussian channel, σ calibration, the posterior over subsets, budgets.

PACZero (arXiv 2605.06505) splits the data into M subsets, one of them secret (index m*). Each step computes the
sign s_m ∈ {−1, +1} of a zeroth-order gradient estimate on every subset m. Under the current posterior p over
which subset is secret, the released sign S = s_{m*} is +1 with probability q₊ = Σ_m p_m [s_m = +1]. If q₊ ∈ {0, 1}
(unanimous) S is released for free; otherwise the mechanism releases R = S + N(0, σ²) with σ chosen so that
I(S; R) = β_t, the step's mutual-information budget, and the optimiser only uses sign(R). By the chain rule of
mutual information, Σ_t β_t bounds the total leakage I(m*; R_1..R_T).

Pure functions on floats / numpy arrays; no torch, no I/O. All information quantities are in nats.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import log_ndtr, logsumexp, ndtr

from privtune.errors import ConfigError
from privtune.privacy._checks import number as _number

_SIGMA_MIN = 1e-3  # I(S; S+N(0,σ²)) equals H(q) to machine precision at and below this σ
_SIGMA_MAX = 1e12  # I ≈ 2q(1−q)/σ² ≈ 5e-25 here: far below any budget worth charging


def _check_q(q) -> float:
    q = _number("q", q)
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"q: must be in [0, 1], got {q}")
    return q


def _check_sigma(sigma) -> float:
    sigma = _number("sigma", sigma)
    if sigma < 0.0 or math.isinf(sigma):
        raise ConfigError(f"sigma: must be finite and >= 0, got {sigma}")
    return sigma


@lru_cache(maxsize=16)
def _normal_nodes(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    # E[f(X)], X ~ N(0,1)  ≈  Σ_i (w_i/√π) f(√2 t_i)  with (t_i, w_i) Gauss–Hermite for weight e^{−t²}
    t, w = np.polynomial.hermite.hermgauss(n_nodes)
    return math.sqrt(2.0) * t, w / math.sqrt(math.pi)


def bernoulli_entropy(q: float) -> float:
    """H(q) = −q ln q − (1−q) ln(1−q) in nats (0 at q ∈ {0, 1})."""
    q = _check_q(q)
    # binary entropy (Cover & Thomas, eq. 2.5)
    return float(sum(-x * math.log(x) for x in (q, 1.0 - q) if x > 0.0))


def binary_gaussian_mi(q: float, sigma: float, n_nodes: int = 80) -> float:
    """I(S; R) in nats for S ∈ {+1, −1} with P(S=+1) = q and R = S + N(0, σ²).

    I = q·KL(f₊ ‖ f_R) + (1−q)·KL(f₋ ‖ f_R). Writing R = ±(1 + σX) with X ~ N(0,1) and
    a(X) = 2/σ² + 2X/σ (the log-likelihood ratio between the two components at that R),
        I = −E_X[ q·ln(q + (1−q)e^{−a}) + (1−q)·ln((1−q) + q·e^{−a}) ],
    evaluated with `n_nodes`-point Gauss–Hermite quadrature and logaddexp. Against adaptive quadrature the
    default 80 nodes are accurate to ~1e-10 for σ ≥ 0.7 or σ ≤ 0.2 and to ~1.2e-7 in between, where the
    integrand has a sharp bend (more nodes fix that). σ = 0 gives H(q); q ∈ {0, 1} gives 0.
    """
    q = _check_q(q)
    sigma = _check_sigma(sigma)
    if not isinstance(n_nodes, (int, np.integer)) or n_nodes < 2:
        raise ConfigError(f"n_nodes: must be an integer >= 2, got {n_nodes!r}")
    if q in (0.0, 1.0):
        return 0.0
    if sigma == 0.0:
        return bernoulli_entropy(q)
    x, w = _normal_nodes(int(n_nodes))
    a = 2.0 / sigma**2 + 2.0 * x / sigma
    log_q, log_1mq = math.log(q), math.log1p(-q)
    # I(S;R) = Σ_s P(s)·KL(f_s ‖ f_R), binary-input Gaussian channel (PACZero arXiv 2605.06505, exact binary MI)
    mi = -np.sum(w * (q * np.logaddexp(log_q, log_1mq - a) + (1.0 - q) * np.logaddexp(log_1mq, log_q - a)))
    return float(min(max(mi, 0.0), bernoulli_entropy(q)))


def calibrate_sigma(q: float, beta: float, n_nodes: int = 80, tol: float = 1e-9) -> float:
    """Smallest-noise σ with binary_gaussian_mi(q, σ) ≤ β, to relative precision `tol` on the MI.

    Bisection in log σ on [1e-3, 1e12]; I(S; S + N(0, σ²)) is strictly decreasing in σ (adding independent
    noise is a degradation). The returned σ is the upper end of the final bracket, so its MI is always ≤ β
    and ≥ β·(1 − tol) (or the bracket has shrunk to one float). Requires 0 < β < H(q), hence 0 < q < 1.
    """
    q = _check_q(q)
    beta = _number("beta", beta)
    tol = _number("tol", tol)
    if not 0.0 < tol < 1.0:
        raise ConfigError(f"tol: must be in (0, 1), got {tol}")
    h = bernoulli_entropy(q)
    if not 0.0 < beta < h:
        raise ConfigError(f"beta: must be in (0, H(q)) = (0, {h:.6g}) for q={q}, got {beta}")
    lo, hi = math.log(_SIGMA_MIN), math.log(_SIGMA_MAX)
    if binary_gaussian_mi(q, _SIGMA_MIN, n_nodes) <= beta:  # β within rounding of H(q)
        return _SIGMA_MIN
    if binary_gaussian_mi(q, _SIGMA_MAX, n_nodes) > beta:
        raise ConfigError(f"beta: {beta} is too small to calibrate (needs sigma > {_SIGMA_MAX:g})")
    # invariant: MI(e^lo) > β ≥ MI(e^hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        mi = binary_gaussian_mi(q, math.exp(mid), n_nodes)
        if mi > beta:
            lo = mid
        else:
            hi = mid
            if mi >= beta * (1.0 - tol):
                break
    return float(math.exp(hi))


def sign_release_mi(q: float, sigma: float) -> float:
    """Exact I(S; Y) in nats for Y = sign(S + N(0, σ²)): the leakage of the released sign alone.

    Y is S through a binary symmetric channel with crossover ρ = Φ(−1/σ), so I = H(q(1−ρ) + (1−q)ρ) − H(ρ).
    By data processing it never exceeds binary_gaussian_mi(q, σ), the amount PACZero charges.
    """
    q = _check_q(q)
    sigma = _check_sigma(sigma)
    if q in (0.0, 1.0):
        return 0.0
    if sigma == 0.0:
        return bernoulli_entropy(q)
    rho = float(ndtr(-1.0 / sigma))
    # BSC mutual information I = H(P(Y=+1)) − H(ρ)  (Cover & Thomas, §7.1.4)
    return max(bernoulli_entropy(q * (1.0 - rho) + (1.0 - q) * rho) - bernoulli_entropy(rho), 0.0)


def _check_p_signs(p, signs) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=float)
    signs = np.asarray(signs, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ConfigError(f"p: must be a non-empty 1-D array, got shape {p.shape}")
    if signs.shape != p.shape:
        raise ConfigError(f"signs: must have the shape of p {p.shape}, got {signs.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0.0) or abs(p.sum() - 1.0) > 1e-6:
        raise ConfigError(f"p: must be a probability vector (>= 0, sums to 1), sum is {p.sum()}")
    if not np.all((signs == 1.0) | (signs == -1.0)):
        raise ConfigError("signs: every entry must be +1 or -1")
    return p, signs


def _normalise_log(log_w: np.ndarray, what: str) -> np.ndarray:
    total = logsumexp(log_w)
    if not np.isfinite(total):
        raise ConfigError(f"{what}: has zero likelihood under every subset with posterior mass")
    return np.exp(log_w - total)


def posterior_update(p, signs, observed: float, sigma: float) -> np.ndarray:
    """Posterior over the M subsets after observing the real-valued release R = s_{m*} + N(0, σ²).

    p'_m ∝ p_m · exp(−(s_m − R)² / 2σ²), in log space and renormalised. This is what the PACZero reference does
    (paczo/pac_utils.py: update_p_binary, called on the pre-sign release). Subsets with p_m = 0 stay at 0.
    σ = 0 (a deterministic release) conditions exactly on s_m = sign(R).
    """
    p, signs = _check_p_signs(p, signs)
    r = _number("observed", observed)
    sigma = _check_sigma(sigma)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    if sigma == 0.0:
        return _normalise_log(np.where(signs == (1.0 if r >= 0 else -1.0), log_p, -np.inf), "observed")
    # Bayes rule with the Gaussian likelihood N(R; s_m, σ²)  (PACZero arXiv 2605.06505; reference update_p_binary)
    return _normalise_log(log_p - (signs - r) ** 2 / (2.0 * sigma**2), "observed")


def posterior_update_sign(p, signs, y: float, sigma: float) -> np.ndarray:
    """Posterior over the M subsets after observing only the released sign y = sign(s_{m*} + N(0, σ²)).

    p'_m ∝ p_m · P(Y = y | s_m) = p_m · Φ(y·s_m/σ), in log space (log Φ via scipy log_ndtr) and renormalised.
    This is the posterior of an attacker who sees only what the optimiser uses; it is never sharper on
    average than `posterior_update`.
    """
    p, signs = _check_p_signs(p, signs)
    y = _number("y", y)
    if y not in (1.0, -1.0):
        raise ConfigError(f"y: must be +1 or -1, got {y}")
    sigma = _check_sigma(sigma)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    if sigma == 0.0:
        return _normalise_log(np.where(signs == y, log_p, -np.inf), "y")
    # Bayes rule with the sign likelihood P(sign(s_m + N) = y) = Φ(y·s_m/σ)
    return _normalise_log(log_p + log_ndtr(y * signs / sigma), "y")


def q_plus(p, signs) -> float:
    """q₊ = Σ_m p_m [s_m = +1]: the probability, under the posterior, that the secret subset's sign is +1."""
    p, signs = _check_p_signs(p, signs)
    # q₊ = P_{m ~ p}(s_m = +1)  (PACZero arXiv 2605.06505, agreement under the posterior)
    return float(min(np.sum(p[signs > 0.0]), 1.0))


def is_unanimous_zpl(signs) -> bool:
    """ZPL mode: all M subset signs are equal (the posterior stays uniform, so every subset counts)."""
    signs = np.asarray(signs, dtype=float)
    if signs.ndim != 1 or signs.size == 0 or not np.all((signs == 1.0) | (signs == -1.0)):
        raise ConfigError("signs: must be a non-empty 1-D array of +1/-1")
    return bool(np.all(signs == signs[0]))


def is_unanimous_mi(p, signs, tol: float = 0.0) -> bool:
    """MI mode: q₊ ∈ {0, 1}, i.e. every subset with posterior mass > 0 has the same sign.

    With tol > 0, min(q₊, 1 − q₊) ≤ tol also counts (the reference uses 1e-12); such a step leaks up to
    bernoulli_entropy(q₊) nats, which the caller must then charge.
    """
    p, signs = _check_p_signs(p, signs)
    tol = _number("tol", tol)
    if not 0.0 <= tol < 0.5:
        raise ConfigError(f"tol: must be in [0, 0.5), got {tol}")
    live = signs[p > 0.0]
    if np.all(live == live[0]):
        return True
    qp = q_plus(p, signs)
    # tol > 0 is not conservative by itself (the step leaks up to H(q₊) ≤ H(tol)); PACZero calls this with tol = 0
    return bool(min(qp, 1.0 - qp) <= tol) if tol > 0.0 else False


def step_budget(budget: float, spent: float, steps_total: int, step: int, allocation: str = "adaptive") -> float:
    """MI budget β_t for step `step` (0-based) of `steps_total`, given `spent` nats already charged.

    adaptive: (B − spent)/(T − t), so budget left by free (unanimous) steps flows to later ones;
    uniform: B/T, never more than B − spent. The result is trimmed so that spent + β_t ≤ B holds exactly in
    floating point, hence charging every β_t can never overspend B.
    """
    budget = _number("budget", budget)
    spent = _number("spent", spent)
    if not (budget > 0.0 and math.isfinite(budget)):
        raise ConfigError(f"budget: must be finite and > 0, got {budget}")
    if spent < 0.0:
        raise ConfigError(f"spent: must be >= 0, got {spent}")
    if not isinstance(steps_total, (int, np.integer)) or steps_total < 1:
        raise ConfigError(f"steps_total: must be an integer >= 1, got {steps_total!r}")
    if not isinstance(step, (int, np.integer)) or not 0 <= step < steps_total:
        raise ConfigError(f"step: must be an integer in [0, {steps_total}), got {step!r}")
    remaining = budget - spent
    if remaining <= 0.0:
        return 0.0
    if allocation == "adaptive":
        # β_t = (B − spent)/(T − t)  (PACZero arXiv 2605.06505, adaptive allocation; pac_trainer.py)
        beta = remaining / (steps_total - step)
    elif allocation == "uniform":
        # β_t = B/T  (PACZero arXiv 2605.06505, uniform allocation)
        beta = min(budget / steps_total, remaining)
    else:
        raise ConfigError(f"allocation: must be 'adaptive' or 'uniform', got {allocation!r}")
    while beta > 0.0 and spent + beta > budget:
        beta = float(np.nextafter(beta, 0.0))
    return float(beta)


def cap_budget(beta: float, q: float) -> float:
    """min(β, 0.999·H(q)): a step cannot leak more than H(q), and calibrate_sigma needs β < H(q)."""
    beta = _number("beta", beta)
    if beta < 0.0:
        raise ConfigError(f"beta: must be >= 0, got {beta}")
    # entropy ceiling I(S; R) ≤ H(S) = H(q₊)  (PACZero reference pac_trainer.py, "entropy-ceiling cap")
    return float(min(beta, 0.999 * bernoulli_entropy(q)))
