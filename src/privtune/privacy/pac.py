"""PACZero privacy math: the binary-input Gaussian channel, σ calibration, the posterior over subsets, budgets.

PACZero (arXiv 2605.06505) splits the data into M subsets, one of them secret (index m*). Each step computes the
sign s_m ∈ {−1, +1} of a zeroth-order gradient estimate on every subset m. Under the current posterior p over
which subset is secret, the released sign S = s_{m*} is +1 with probability q₊ = Σ_m p_m [s_m = +1]. If q₊ ∈ {0, 1}
(unanimous) S is released for free; otherwise the mechanism releases R = S + N(0, σ²) with σ chosen so that a
certified upper bound on I(S; R) equals β_t, the step's mutual-information budget, and the optimiser only uses
sign(R). By the chain rule of mutual information, Σ_t β_t bounds the total leakage I(m*; R_1..R_T).

Pure functions on floats / numpy arrays; no torch, no I/O. All information quantities are in nats.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import expit, log_ndtr, logsumexp, ndtr

from privtune.errors import ConfigError
from privtune.privacy._checks import number as _number

_SIGMA_MIN = 1e-3  # I(S; S+N(0,σ²)) equals H(q) to machine precision at and below this σ
_SIGMA_MAX = 1e12  # I ≈ 2q(1−q)/σ² ≈ 5e-25 here: far below any budget worth charging
_TANGENT_POINTS = 512  # tangent points of the charged MI bound: within 1e-6 (relative) of the true MI
_X_MAX = 12.0  # tangent points span [−12, 12]; beyond, Φ(−12) ≈ 2e-33 of mass is still bounded, only less tightly
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_EPS = float(np.finfo(float).eps)


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


def _channel_terms(q: float, sigma: float, x: np.ndarray, want_g: bool = True):
    """The integrand g(x) of I = E_X[g(X)], its slope g'(x), and s₁(1−s₁), s₂(1−s₂), which make up its curvature
    |g''(x)| = (2/σ)²·(q·s₁(1−s₁) + (1−q)·s₂(1−s₂)).

    With a = 2/σ² + 2x/σ (the log-likelihood ratio of the two components at R = ±(1 + σx)),
        g = −q·ln(q + (1−q)e^{−a}) − (1−q)·ln((1−q) + q·e^{−a}),
        g' = (2/σ)·(q·s₁ + (1−q)·s₂),  s₁ = expit(ln((1−q)/q) − a),  s₂ = expit(ln(q/(1−q)) − a).
    Each logarithm is the log of a two-term sum, so g is concave in x. Every value is accurate to a few ulps relative:
    log1p/expm1 near a = 0 (where the logs cancel to ≈ 0) and logaddexp elsewhere; s(1−s) as expit(z)·expit(−z).
    """
    a = 2.0 / sigma**2 + 2.0 * x / sigma
    log_q, log_1mq = math.log(q), math.log1p(-q)
    z1, z2 = log_1mq - log_q - a, log_q - log_1mq - a
    s1, s2 = expit(z1), expit(z2)
    bend1, bend2 = s1 * expit(-z1), s2 * expit(-z2)
    if not want_g:
        return None, None, bend1, bend2
    l1 = np.logaddexp(log_q, log_1mq - a)
    l2 = np.logaddexp(log_1mq, log_q - a)
    near = np.abs(a) <= 1.0  # there ln(q + (1−q)e^{−a}) ≈ 0 and logaddexp would lose relative accuracy
    if np.any(near):
        em = np.expm1(-a[near])
        l1[near] = np.log1p((1.0 - q) * em)
        l2[near] = np.log1p(q * em)
    g = -(q * l1 + (1.0 - q) * l2)
    slope = (2.0 / sigma) * (q * s1 + (1.0 - q) * s2)
    return g, slope, bend1, bend2


def _tangent_points(q: float, sigma: float, n: int) -> np.ndarray:
    """n points in [−12, 12], dense where the bound's residual lives: density ∝ (|g''|·φ)^{1/4} plus a floor.

    Only the tightness of the bound depends on this placement, never its validity.
    """
    xb = np.linspace(-_X_MAX, _X_MAX, 241)
    _, _, bend1, bend2 = _channel_terms(q, sigma, xb, want_g=False)
    log_phi = -0.5 * xb**2
    dens = np.exp(0.25 * (np.log(q * bend1 + (1.0 - q) * bend2 + 1e-300) + log_phi)) + 0.01 * np.exp(0.25 * log_phi)
    cum = np.concatenate([[0.0], np.cumsum(dens[1:] + dens[:-1])])
    return np.interp(np.linspace(0.0, cum[-1], n), cum, xb)


def binary_gaussian_mi(q: float, sigma: float, n_nodes: int = _TANGENT_POINTS) -> float:
    """Certified upper bound on I(S; R) in nats for S ∈ {+1, −1}, P(S=+1) = q, R = S + N(0, σ²): what PACZero charges.

    I = q·KL(f₊ ‖ f_R) + (1−q)·KL(f₋ ‖ f_R) = E_X[g(X)], X ~ N(0,1), with g concave (see _channel_terms). Every
    tangent of a concave function lies above it, so with `n_nodes` tangent points x_i and the real line cut at their
    midpoints, U(x) = g(x_i) + g'(x_i)(x − x_i) on x_i's piece is ≥ g everywhere (tails included), and E[U] is exact
    in Φ and φ. On a finite piece [l, r], U − g = ∫∫|g''| ≥ κ·(x − x_i)²/2 with κ = min |g''| there, which is at an
    end (each s(1−s) is unimodal in x), so E[U] − Σ κ·min(φ(l), φ(r))·((r − x_i)³ + (x_i − l)³)/6 is still ≥ I.
    A rounding allowance of 64 ulps of the summed magnitudes is added. Against adaptive quadrature the default 512
    points are above I by less than 1e-6 relative (σ ∈ [0.05, 1000], q ∈ [1e-6, 1 − 1e-6]); fewer points give a
    looser but still valid bound. σ = 0 gives H(q); q ∈ {0, 1} gives 0; the result never exceeds H(q) (+ 8 ulps).
    """
    q = _check_q(q)
    sigma = _check_sigma(sigma)
    if not isinstance(n_nodes, (int, np.integer)) or n_nodes < 3:
        raise ConfigError(f"n_nodes: must be an integer >= 3, got {n_nodes!r}")
    if q in (0.0, 1.0):
        return 0.0
    h = bernoulli_entropy(q)
    if sigma == 0.0:
        return h
    x = _tangent_points(q, sigma, int(n_nodes))
    mid = 0.5 * (x[1:] + x[:-1])
    g, slope, _, _ = _channel_terms(q, sigma, x)
    _, _, bend1, bend2 = _channel_terms(q, sigma, mid, want_g=False)
    lo = np.concatenate([[-np.inf], mid])
    hi = np.concatenate([mid, [np.inf]])
    # Φ of each cut on its own side of 0 (Φ(l) for l < 0, Φ(−l) for l ≥ 0), so that no piece mass cancels near 1
    tail_lo = ndtr(np.where(lo >= 0.0, -lo, lo))
    tail_hi = ndtr(np.where(hi > 0.0, -hi, hi))
    mass = np.where(lo >= 0.0, tail_lo - tail_hi, np.where(hi <= 0.0, tail_hi - tail_lo, 1.0 - tail_lo - tail_hi))
    phi_lo = np.exp(-0.5 * lo**2) / _SQRT_2PI  # exp(−inf) = 0 at the two infinite ends
    phi_hi = np.exp(-0.5 * hi**2) / _SQRT_2PI
    # E[U(X)] piece by piece: g_i·P_i + g'_i·E[(X − x_i)·1_piece],  E[X·1_[l,r]] = φ(l) − φ(r)
    tangent = g * mass + slope * (phi_lo - phi_hi - x * mass)
    # the curvature credit on the finite pieces (the two infinite ends get none)
    kappa = (2.0 / sigma) ** 2 * (q * np.minimum(bend1[:-1], bend1[1:])
                                  + (1.0 - q) * np.minimum(bend2[:-1], bend2[1:]))
    xi = x[1:-1]
    credit = kappa * np.minimum(phi_lo[1:-1], phi_hi[1:-1]) * ((mid[1:] - xi) ** 3 + (xi - mid[:-1]) ** 3) / 6.0
    magnitude = (np.sum(np.abs(g) * (tail_lo + tail_hi))
                 + np.sum(slope * (phi_lo + phi_hi + np.abs(x) * (tail_lo + tail_hi))) + np.sum(credit))
    # 64 ulps of the magnitudes summed: above the few-ulp error of each factor and of numpy's pairwise sums
    upper = float(np.sum(tangent) - np.sum(credit) + 64.0 * _EPS * magnitude)
    return min(max(upper, 0.0), h * (1.0 + 8.0 * _EPS))  # I ≤ H(S); 8 ulps cover the rounding of H(q)


def _mi_estimate(q: float, sigma: float) -> float:
    """I(S; R) by 80-point Gauss–Hermite quadrature: smooth and fast but not a bound (up to ~2.4e-7 low near
    σ ≈ 0.37). calibrate_sigma uses it only to find a starting σ; it is never charged."""
    x, w = _normal_nodes(80)
    a = 2.0 / sigma**2 + 2.0 * x / sigma
    log_q, log_1mq = math.log(q), math.log1p(-q)
    mi = -np.sum(w * (q * np.logaddexp(log_q, log_1mq - a) + (1.0 - q) * np.logaddexp(log_1mq, log_q - a)))
    return float(max(mi, 0.0))


def _bisect_log_sigma(mi, beta: float, tol: float) -> float:
    """Bisection in log σ on [1e-3, 1e12] for the smallest σ with mi(σ) ≤ β, stopping once mi(σ) ≥ β(1 − tol)."""
    lo, hi = math.log(_SIGMA_MIN), math.log(_SIGMA_MAX)
    if mi(_SIGMA_MIN) <= beta:  # β within rounding of H(q)
        return _SIGMA_MIN
    if mi(_SIGMA_MAX) > beta:
        raise ConfigError(f"beta: {beta} is too small to calibrate (needs sigma > {_SIGMA_MAX:g})")
    # invariant: mi(e^lo) > β ≥ mi(e^hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        value = mi(math.exp(mid))
        if value > beta:
            lo = mid
        else:
            hi = mid
            if value >= beta * (1.0 - tol):
                break
    return float(math.exp(hi))


def calibrate_sigma(q: float, beta: float, tol: float = 1e-9) -> float:
    """Smallest-noise σ whose charged MI, the certified upper bound binary_gaussian_mi(q, σ), is ≤ β.

    The returned σ always has binary_gaussian_mi(q, σ) ≤ β, hence true I(S; R) ≤ β, and normally ≥ β·(1 − tol).
    I(S; S + N(0, σ²)) is strictly decreasing in σ (adding independent noise is a degradation). Fast path: bisect
    the Gauss–Hermite estimate in log σ, then take Newton steps in log σ on the bound (slope from the estimate), as
    the two differ by a smooth factor ≈ 1 + 1e-7; if that does not land in [β(1 − tol), β] within a few steps, bisect
    the bound itself (slow, same guarantee). Requires 0 < β < H(q), hence 0 < q < 1.
    """
    q = _check_q(q)
    beta = _number("beta", beta)
    tol = _number("tol", tol)
    if not 0.0 < tol < 1.0:
        raise ConfigError(f"tol: must be in (0, 1), got {tol}")
    h = bernoulli_entropy(q)
    if not 0.0 < beta < h:
        raise ConfigError(f"beta: must be in (0, H(q)) = (0, {h:.6g}) for q={q}, got {beta}")
    # the start needs only be close (1e-7): one Newton step then lands within ~1e-11 of the aim
    sigma = _bisect_log_sigma(lambda s: _mi_estimate(q, s), beta, 1e-7)
    step = 1e-4  # finite-difference step in log σ for the slope d ln I / d ln σ (relative error ~1e-4: plenty)
    here, there = _mi_estimate(q, sigma), _mi_estimate(q, sigma * math.exp(step))
    slope = (math.log(there) - math.log(here)) / step if here > 0.0 and there > 0.0 else 0.0
    for _ in range(4):
        upper = binary_gaussian_mi(q, sigma)
        if beta * (1.0 - tol) <= upper <= beta:
            return sigma
        if not (slope < 0.0 and upper > 0.0):
            break
        sigma *= math.exp((math.log(beta * (1.0 - 0.5 * tol)) - math.log(upper)) / slope)  # aim mid-window
    return _bisect_log_sigma(lambda s: binary_gaussian_mi(q, s), beta, tol)


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


BUDGET_SLACK = 1e-12  # float round-off allowed when the last step spends exactly what remains


def overspends(budget: float, spent: float, amount: float) -> bool:
    """Whether charging `amount` on top of `spent` exceeds `budget` (beyond float round-off)."""
    return spent + amount > float(budget) + BUDGET_SLACK


def exhausted(budget: float, spent: float) -> bool:
    """Whether `spent` has used up `budget` (up to float round-off): no costly step can be paid for any more."""
    return spent >= float(budget) - BUDGET_SLACK
