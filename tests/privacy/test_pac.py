"""PACZero math checked against adaptive quadrature, Monte Carlo, mpmath values and hand-computed examples."""

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from privtune.errors import ConfigError
from privtune.privacy import pac


def mi_by_quad(q, sigma):
    """I(S; S + N(0, σ²)) = ∫ Σ_s P(s) f_s(r) ln(f_s(r)/f_R(r)) dr, straight from the densities."""

    def integrand(r):
        fp, fm = norm.pdf(r, 1.0, sigma), norm.pdf(r, -1.0, sigma)
        fy = q * fp + (1 - q) * fm
        out = 0.0
        if fp > 0:
            out += q * fp * math.log(fp / fy)
        if fm > 0:
            out += (1 - q) * fm * math.log(fm / fy)
        return out

    lim = 1.0 + 14.0 * sigma
    return quad(integrand, -lim, lim, points=[-1.0, 0.0, 1.0], epsabs=1e-13, epsrel=1e-11, limit=500)[0]


def test_bernoulli_entropy_values():
    assert pac.bernoulli_entropy(0.5) == pytest.approx(math.log(2), abs=1e-15)
    assert pac.bernoulli_entropy(0.0) == 0.0 and pac.bernoulli_entropy(1.0) == 0.0
    # −0.1 ln 0.1 − 0.9 ln 0.9 by hand
    assert pac.bernoulli_entropy(0.1) == pytest.approx(0.3250829733914482, abs=1e-15)


@pytest.mark.parametrize("q", [0.5, 0.3, 0.01])
def test_small_sigma_gives_entropy_and_edges(q):
    h = pac.bernoulli_entropy(q)
    assert pac.binary_gaussian_mi(q, 0.0) == h
    assert pac.binary_gaussian_mi(q, 0.05) == pytest.approx(h, abs=1e-12)
    assert pac.binary_gaussian_mi(0.0, 1.0) == 0.0 and pac.binary_gaussian_mi(1.0, 0.3) == 0.0


def test_mi_pinned_value():
    # q = 0.3, σ = 1: mpmath quad at 30 digits gives 0.291857517912798133...; the charged value is an upper bound
    exact = 0.2918575179127981
    assert 0.0 <= pac.binary_gaussian_mi(0.3, 1.0) - exact <= 1e-7
    assert 0.0 <= pac.binary_gaussian_mi(0.3, 1.0, n_nodes=4096) - exact <= 1e-9


@pytest.mark.parametrize("q", [0.5, 0.3, 0.02])
def test_mi_decreasing_in_sigma(q):
    sigmas = np.logspace(-0.5, 3, 60)
    mis = np.array([pac.binary_gaussian_mi(q, s) for s in sigmas])
    assert np.all(np.diff(mis) < 0)
    assert mis[-1] == pytest.approx(2 * q * (1 - q) / sigmas[-1] ** 2, rel=1e-3)  # large-σ limit 2q(1−q)/σ²


@pytest.mark.parametrize("q", [0.5, 0.1, 0.9, 0.01])
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0, 5.0, 30.0])
def test_quadrature_matches_scipy_quad(q, sigma):
    assert pac.binary_gaussian_mi(q, sigma) == pytest.approx(mi_by_quad(q, sigma), abs=1e-7)


def mi_reference(q, sigma):
    """I(S; R) by adaptive quadrature over r at relative tolerance 1e-10 (no code shared with pac).

    I = ∫ [q·f₊(r)·ln(f₊/f_R) + (1−q)·f₋(r)·ln(f₋/f_R)] dr, where f₋/f₊ = e^{−u}, u = 2r/σ², so
    ln(f₊/f_R) = −ln(q + (1−q)e^{−u}) and ln(f₋/f_R) = −ln(q·e^{u} + 1 − q); both are taken as log1p(expm1) near
    u = 0, where they are tiny differences of O(1) numbers (large σ), and by logaddexp elsewhere."""
    lq, l1q = math.log(q), math.log1p(-q)

    def log_ratios(u):
        if abs(u) <= 1.0:
            return -math.log1p((1 - q) * math.expm1(-u)), -math.log1p(q * math.expm1(u))
        return -np.logaddexp(lq, l1q - u), -np.logaddexp(lq + u, l1q)

    def integrand(r):
        plus, minus = log_ratios(2.0 * r / sigma**2)
        f_plus = math.exp(-0.5 * ((r - 1.0) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))  # N(r; ±1, σ²)
        f_minus = math.exp(-0.5 * ((r + 1.0) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return q * f_plus * plus + (1 - q) * f_minus * minus

    lim = 1.0 + 40.0 * sigma  # beyond: under e^{-800} of mass
    # the integrand bends at ±1 and where the two weighted densities cross, r = σ²·ln((1−q)/q)/2
    cross = min(max(sigma**2 * (l1q - lq) / 2.0, -lim / 2), lim / 2)
    value, _ = quad(integrand, -lim, lim, points=sorted({-1.0, 0.0, 1.0, cross}), epsabs=0.0, epsrel=1e-10,
                    limit=2000)
    return value


# σ ≈ 0.37 is where 80-node Gauss–Hermite was furthest below the truth (2.4e-7 nats); q near 0, ½ and 1
GRID_Q = [1e-6, 0.01, 0.3, 0.5, 0.9, 1 - 1e-6]
GRID_SIGMA = [0.05, 0.2, 0.3, 0.37, 0.45, 0.6, 1.0, 3.0, 30.0, 1000.0]


@pytest.mark.parametrize("q", GRID_Q)
def test_charged_mi_is_an_upper_bound_and_tight(q):
    for sigma in GRID_SIGMA:
        ref = mi_reference(q, sigma)
        charged = pac.binary_gaussian_mi(q, sigma)
        assert charged >= ref, (q, sigma, charged - ref)  # never under-charges
        assert charged - ref <= 1e-6 * ref + 1e-15, (q, sigma, charged - ref)  # and is not wildly loose


@pytest.mark.parametrize("n_nodes", [3, 8, 40, 4096])
def test_charged_mi_is_an_upper_bound_for_any_number_of_tangent_points(n_nodes):
    # the bound's validity comes from concavity, not from accuracy: a few points give a loose but valid bound
    for q, sigma in [(0.3, 0.37), (0.5, 1.0), (0.01, 0.5), (0.9, 10.0)]:
        assert pac.binary_gaussian_mi(q, sigma, n_nodes=n_nodes) >= mi_reference(q, sigma)
    assert pac.binary_gaussian_mi(0.3, 0.37, n_nodes=4096) - mi_reference(0.3, 0.37) <= 1e-10
    with pytest.raises(ConfigError, match="^n_nodes:"):
        pac.binary_gaussian_mi(0.3, 0.37, n_nodes=2)


@pytest.mark.parametrize("q", GRID_Q)
def test_calibrated_sigma_never_exceeds_beta_on_a_grid(q):
    # β values whose σ is ≈ 0.37 and 0.45 (where Gauss–Hermite under-estimated), small and large σ, near H(q)
    h = pac.bernoulli_entropy(q)
    betas = [mi_reference(q, 0.37), mi_reference(q, 0.45), 0.5 * h, 0.999 * h, 1e-3 * h, 1e-7 * h]
    for beta in betas:
        sigma = pac.calibrate_sigma(q, beta)
        ref = mi_reference(q, sigma)
        assert ref <= beta, (q, beta, sigma, ref - beta)
        assert pac.binary_gaussian_mi(q, sigma) <= beta
        assert ref >= beta * (1 - 2e-6), (q, beta, sigma)  # no more noise than the bound's slack requires


@pytest.mark.parametrize("q, beta", [(0.5, 0.3), (0.3, 1e-4), (0.05, 1e-6), (0.7, 0.99 * pac.bernoulli_entropy(0.7))])
def test_calibrated_mi_equals_beta_and_never_exceeds_it(q, beta):
    sigma = pac.calibrate_sigma(q, beta)
    mi = pac.binary_gaussian_mi(q, sigma)
    assert mi <= beta
    assert mi == pytest.approx(beta, abs=1e-6, rel=1e-8)
    assert mi_by_quad(q, sigma) == pytest.approx(beta, abs=1e-7, rel=1e-6)


def test_calibrated_mi_matches_monte_carlo():
    q, beta = 0.3, 0.2
    sigma = pac.calibrate_sigma(q, beta)
    rng = np.random.default_rng(0)
    n = 400_000
    s = np.where(rng.random(n) < q, 1.0, -1.0)
    r = s + sigma * rng.standard_normal(n)
    log_f_r = np.logaddexp(math.log(q) + norm.logpdf(r, 1.0, sigma), math.log(1 - q) + norm.logpdf(r, -1.0, sigma))
    mc = np.mean(norm.logpdf(r, s, sigma) - log_f_r)  # E[ln f(R|S)/f(R)]
    assert mc == pytest.approx(beta, rel=0.01)


@pytest.mark.parametrize("q, beta", [(0.5, 0.0), (0.5, math.log(2)), (0.0, 0.1), (0.3, -1.0)])
def test_calibrate_rejects_infeasible_beta(q, beta):
    with pytest.raises(ConfigError, match="^beta:"):
        pac.calibrate_sigma(q, beta)


def test_sign_release_mi_pinned_and_by_enumeration():
    q, sigma = 0.3, 1.0
    # mpmath: H(q(1−ρ)+(1−q)ρ) − H(ρ), ρ = Φ(−1) → 0.217950947552662440...
    assert pac.sign_release_mi(q, sigma) == pytest.approx(0.21795094755266244, abs=1e-12)
    # the same from the 2×2 joint table Σ P(s,y) ln(P(s,y)/(P(s)P(y)))
    rho = norm.cdf(-1.0 / sigma)
    joint = np.array([[q * (1 - rho), q * rho], [(1 - q) * rho, (1 - q) * (1 - rho)]])
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    assert pac.sign_release_mi(q, sigma) == pytest.approx(float(np.sum(joint * np.log(joint / outer))), abs=1e-14)


def test_sign_release_never_exceeds_charge():
    for q in [0.01, 0.1, 0.3, 0.5, 0.8, 0.99]:
        for sigma in np.logspace(-1, 2.5, 25):
            assert pac.sign_release_mi(q, sigma) <= pac.binary_gaussian_mi(q, sigma) + 1e-12
            assert pac.sign_release_mi(q, sigma) > 0.0


def test_subset_mi_equals_binary_mi():
    # I(m*; R) over M subsets equals I(S; R) with q₊, because R depends on m* only through s_{m*}
    p = np.array([0.1, 0.25, 0.05, 0.4, 0.2])
    signs = np.array([1, -1, 1, -1, -1])
    sigma = 0.9
    qp = pac.q_plus(p, signs)
    assert qp == pytest.approx(0.15, abs=1e-15)

    def integrand(r):
        f = norm.pdf(r, signs, sigma)
        fy = np.sum(p * f)
        return float(np.sum(p * f * np.log(f / fy)))

    i_subsets = quad(integrand, -14, 14, points=[-1, 0, 1], epsabs=1e-13, epsrel=1e-11, limit=500)[0]
    assert 0.0 <= pac.binary_gaussian_mi(qp, sigma) - i_subsets <= 1e-7  # the charged bound, just above I


def test_posterior_update_three_subsets_by_hand():
    p, signs = [0.5, 0.3, 0.2], [1, -1, 1]
    # R = 0.4, σ = 1: weights 0.5·e^{−0.18}, 0.3·e^{−0.98}, 0.2·e^{−0.18} ∝ 0.5, 0.3·e^{−0.8}, 0.2
    want = [0.5989467957335853, 0.1614744859729806, 0.2395787182934341]
    np.testing.assert_allclose(pac.posterior_update(p, signs, 0.4, 1.0), want, atol=1e-13)
    # sign only, y = +1: weights 0.5·Φ(1), 0.3·Φ(−1), 0.2·Φ(1)
    want_sign = [0.6608756117641276, 0.0747741435302213, 0.2643502447056511]
    np.testing.assert_allclose(pac.posterior_update_sign(p, signs, 1, 1.0), want_sign, atol=1e-13)


def test_posterior_update_is_stable_and_keeps_zero_mass():
    p = np.array([0.0, 0.5, 0.5])
    signs = np.array([1, 1, -1])
    out = pac.posterior_update(p, signs, -40.0, 0.01)  # likelihood ratio e^{8e5}: must not overflow
    assert np.all(np.isfinite(out)) and out[0] == 0.0
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0], atol=1e-300)
    out = pac.posterior_update_sign(p, signs, 1, 1e-3)
    assert np.all(np.isfinite(out)) and out[0] == 0.0 and out[1] == pytest.approx(1.0, abs=1e-15)
    # σ = 0: exact conditioning on the released sign
    np.testing.assert_allclose(pac.posterior_update([0.2, 0.3, 0.5], [1, -1, 1], 1.0, 0.0), [2 / 7, 0, 5 / 7])


def test_posterior_update_bad_inputs():
    with pytest.raises(ConfigError, match="^signs:"):
        pac.posterior_update([0.5, 0.5], [1, 0], 0.1, 1.0)
    with pytest.raises(ConfigError, match="^p:"):
        pac.posterior_update([0.5, 0.6], [1, -1], 0.1, 1.0)
    with pytest.raises(ConfigError, match="^y:"):
        pac.posterior_update_sign([0.5, 0.5], [1, -1], 0.3, 1.0)
    with pytest.raises(ConfigError, match="^observed:"):
        pac.posterior_update([1.0, 0.0], [1, -1], -0.5, 0.0)  # impossible under p


def test_unanimity_rules():
    assert pac.is_unanimous_zpl([1, 1, 1]) and not pac.is_unanimous_zpl([1, -1, 1])
    # MI mode ignores subsets with zero posterior mass; ZPL mode does not look at p at all
    p = [0.0, 0.6, 0.4]
    assert pac.is_unanimous_mi(p, [-1, 1, 1]) and not pac.is_unanimous_zpl([-1, 1, 1])
    assert not pac.is_unanimous_mi([1e-13, 0.6, 0.4 - 1e-13], [-1, 1, 1])
    assert pac.is_unanimous_mi([1e-13, 0.6, 0.4 - 1e-13], [-1, 1, 1], tol=1e-12)  # the reference's tolerance
    # a unanimous step is free: q₊ ∈ {0, 1} ⇒ I = 0 at any σ
    assert pac.binary_gaussian_mi(pac.q_plus(p, [-1, 1, 1]), 0.5) == 0.0


def test_adaptive_budget_never_overspends():
    rng = np.random.default_rng(1)
    for budget, steps in [(0.33, 1000), (0.68, 7), (1e-3, 333)]:
        spent = 0.0
        free = rng.random(steps) < 0.6
        qs = rng.uniform(0.001, 0.999, steps)
        for t in range(steps):
            beta = pac.cap_budget(pac.step_budget(budget, spent, steps, t), qs[t])
            if not free[t]:
                spent += beta
        assert spent <= budget
    # with no free steps and no cap, every step gets B/T and the whole budget is used
    spent = 0.0
    for t in range(10):
        beta = pac.step_budget(1.0, spent, 10, t)
        assert beta == pytest.approx(0.1, abs=1e-15)
        spent += beta
    assert spent <= 1.0 and spent == pytest.approx(1.0, abs=1e-15)


def test_budget_flows_forward_and_uniform_is_capped():
    # half the steps free: adaptive gives the rest B/(T/2)
    assert pac.step_budget(1.0, 0.0, 10, 5, "adaptive") == pytest.approx(0.2, abs=1e-15)
    assert pac.step_budget(1.0, 0.0, 10, 5, "uniform") == pytest.approx(0.1, abs=1e-15)
    assert pac.step_budget(1.0, 0.95, 10, 5, "uniform") == pytest.approx(0.05, abs=1e-15)
    assert pac.step_budget(1.0, 1.0, 10, 9) == 0.0
    with pytest.raises(ConfigError, match="^allocation:"):
        pac.step_budget(1.0, 0.0, 10, 0, "greedy")
    with pytest.raises(ConfigError, match="^step:"):
        pac.step_budget(1.0, 0.0, 10, 10)


def test_cap_budget():
    assert pac.cap_budget(0.7, 0.5) == pytest.approx(0.999 * math.log(2), abs=1e-15)
    assert pac.cap_budget(1e-4, 0.5) == 1e-4
    assert pac.cap_budget(0.1, 1.0) == 0.0
