"""DP accounting: wiring pinned against dp_accounting called directly, plus closed-form Gaussian/Laplace checks."""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from privtune.errors import ConfigError
from privtune.privacy import dp

REL = dpa.NeighboringRelation


def exact_gaussian_epsilon(mu, delta):
    """ε of the Gaussian mechanism with sensitivity/σ = mu (Balle & Wang 2018, Thm. 8), solved by brentq."""

    def gap(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(gap, 0.0, 50.0 * mu * mu + 50.0, xtol=1e-12)


# (sigma, sampling_rate, steps, delta)
TABLE = [
    (1.0, 0.01, 1000, 1e-5),
    (0.8, 0.05, 200, 1e-6),
    (2.0, 0.1, 50, 1e-5),
    (5.0, 1.0, 20, 1e-5),
]


@pytest.mark.parametrize("sigma, rate, steps, delta", TABLE)
def test_rdp_poisson_matches_dp_accounting(sigma, rate, steps, delta):
    acc = RdpAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE)
    acc.compose(dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(sigma)), steps)
    assert dp.gaussian_epsilon(sigma, steps, rate, delta) == pytest.approx(acc.get_epsilon(delta), abs=1e-6)


@pytest.mark.parametrize("sigma, rate, steps, delta", [(0.8, 0.05, 40, 1e-6), (2.0, 0.1, 50, 1e-5)])
def test_pld_poisson_matches_dp_accounting(sigma, rate, steps, delta):
    acc = PLDAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    acc.compose(dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(sigma)), steps)
    eps = dp.gaussian_epsilon(sigma, steps, rate, delta, accountant="pld")
    assert eps == pytest.approx(acc.get_epsilon(delta), abs=1e-6)
    assert eps < dp.gaussian_epsilon(sigma, steps, rate, delta, accountant="rdp")  # PLD is the tighter bound


def test_rdp_fixed_matches_dp_accounting_with_replace_one_sensitivity():
    sigma, steps, delta = 1.2, 300, 1e-5
    acc = RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
    # batch 64 of 1000 without replacement; RDP takes the noise relative to the replace-one sensitivity 2C
    acc.compose(dpa.SampledWithoutReplacementDpEvent(1000, 64, dpa.GaussianDpEvent(sigma / 2)), steps)
    got = dp.gaussian_epsilon(sigma, steps, 0.064, delta, sampling="fixed", dataset_size=1000)
    assert got == pytest.approx(acc.get_epsilon(delta), abs=1e-6)
    # without dataset_size the rate is turned into the fraction 8/125, same ratio, same RDP
    assert dp.gaussian_epsilon(sigma, steps, 0.064, delta, sampling="fixed") == pytest.approx(got, abs=1e-9)


def test_full_batch_against_closed_form_gaussian():
    sigma, steps, delta = 4.0, 25, 1e-5
    mu = math.sqrt(steps) / sigma  # T compositions of N(0, σ²) with sensitivity 1 = one Gaussian with μ = √T/σ
    exact = exact_gaussian_epsilon(mu, delta)
    pld = dp.gaussian_epsilon(sigma, steps, 1.0, delta, accountant="pld")
    rdp = dp.gaussian_epsilon(sigma, steps, 1.0, delta, accountant="rdp")
    assert exact <= pld <= exact + 1e-3  # PLD is pessimistic but tight
    assert exact < rdp < 1.1 * exact  # RDP is a looser upper bound
    # "fixed" (replace one) doubles the sensitivity: μ = 2√T/σ, in both accountants
    exact2 = exact_gaussian_epsilon(2 * mu, delta)
    pld2 = dp.gaussian_epsilon(sigma, steps, 1.0, delta, accountant="pld", sampling="fixed")
    rdp2 = dp.gaussian_epsilon(sigma, steps, 1.0, delta, accountant="rdp", sampling="fixed")
    assert exact2 <= pld2 <= exact2 + 1e-3
    assert exact2 < rdp2 < 1.1 * exact2


@pytest.mark.parametrize("accountant, rate, steps, sigma", [
    ("rdp", 0.01, 1000, 1.1), ("rdp", 1.0, 30, 1.1), ("pld", 1.0, 10, 4.0),
])
def test_sigma_round_trip(accountant, rate, steps, sigma):
    delta = 1e-5
    eps = dp.gaussian_epsilon(sigma, steps, rate, delta, accountant=accountant)
    back = dp.gaussian_sigma_for_epsilon(eps, delta, steps, rate, accountant=accountant)
    assert back == pytest.approx(sigma, rel=1e-4)
    assert dp.gaussian_epsilon(back, steps, rate, delta, accountant=accountant) <= eps + 1e-9


def test_sigma_for_epsilon_fixed_sampling_round_trip():
    eps = dp.gaussian_epsilon(1.5, 200, 0.064, 1e-5, sampling="fixed", dataset_size=1000)
    back = dp.gaussian_sigma_for_epsilon(eps, 1e-5, 200, 0.064, sampling="fixed", dataset_size=1000, tol=1e-4)
    assert back == pytest.approx(1.5, rel=1e-3)


def test_laplace_matches_dp_accounting_and_pure_composition():
    b, rate, steps, delta = 3.0, 0.05, 50, 1e-5
    acc = PLDAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    acc.compose(dpa.PoissonSampledDpEvent(rate, dpa.LaplaceDpEvent(b)), steps)
    assert dp.laplace_epsilon(b, steps, rate, delta) == pytest.approx(acc.get_epsilon(delta), abs=1e-6)
    # full batch: 5 Laplace releases with scale 10 are (0.5, 0)-DP, so ε(δ) ≤ 0.5 (+ PLD discretisation),
    # and at tiny δ it cannot be much below 0.5
    pld = dp.laplace_epsilon(10.0, 5, 1.0, 1e-9)
    assert 0.49 < pld <= 0.5 + 1e-3
    assert dp.laplace_epsilon(10.0, 5, 1.0, 1e-9, accountant="rdp") >= pld - 1e-9


def test_laplace_scale_round_trip():
    eps = dp.laplace_epsilon(3.0, 20, 0.1, 1e-5)
    back = dp.laplace_scale_for_epsilon(eps, 1e-5, 20, 0.1)
    assert back == pytest.approx(3.0, rel=1e-3)
    assert dp.laplace_epsilon(back, 20, 0.1, 1e-5) <= eps + 1e-9


@pytest.mark.parametrize("call, field", [
    (lambda: dp.gaussian_sigma_for_epsilon(0.0, 1e-5, 10, 0.1), "epsilon"),
    (lambda: dp.gaussian_sigma_for_epsilon(-1.0, 1e-5, 10, 0.1), "epsilon"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.1, 0.0), "delta"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.1, 1.0), "delta"),
    (lambda: dp.gaussian_epsilon(1.0, 0, 0.1, 1e-5), "steps"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.0, 1e-5), "sampling_rate"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 1.5, 1e-5), "sampling_rate"),
    (lambda: dp.gaussian_epsilon(-1.0, 10, 0.1, 1e-5), "sigma"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.1, 1e-5, accountant="prv"), "accountant"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.1, 1e-5, sampling="shuffle"), "sampling"),
    (lambda: dp.gaussian_epsilon(1.0, 10, 0.1, 1e-5, accountant="pld", sampling="fixed"), "accountant"),
    (lambda: dp.laplace_epsilon(1.0, 10, 0.1, 1e-5, accountant="rdp"), "accountant"),
    (lambda: dp.laplace_epsilon(0.0, 10, 0.1, 1e-5), "scale"),
    (lambda: dp.laplace_epsilon(1.0, 10, 0.1, 0.0), "delta"),
])
def test_invalid_arguments_name_the_parameter(call, field):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value).startswith(field + ":")


def test_more_noise_less_epsilon():
    eps = [dp.gaussian_epsilon(s, 100, 0.02, 1e-5) for s in (0.6, 0.8, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(eps) < 0)


# ------------------------------------------------------------------------- ε spent after t of T releases
@pytest.mark.parametrize("sampling,sigma", [("poisson", 3.0), ("fixed", 6.0)])
def test_epsilon_spent_curve_rdp_is_the_accountants_epsilon_at_every_step(sampling, sigma):
    T, kw = 40, dict(sampling_rate=0.25, delta=1e-5, accountant="rdp", sampling=sampling, dataset_size=64)
    curve = dp.epsilon_spent_curve("gaussian", sigma, T, **kw)
    assert curve(0) == 0.0
    for t in (1, 2, 17, 39, 40):  # bit for bit: t·(one-step RDP) is what the accountant composes for t releases
        assert curve(t) == dp.gaussian_epsilon(sigma, steps=t, **kw), t
    vals = [curve(t) for t in range(T + 1)]
    assert all(a < b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_epsilon_spent_curve_pld_never_under_reports_and_is_exact_on_its_grid(mechanism):
    T, kw = 130, dict(sampling_rate=0.2, delta=1e-5, accountant="pld", sampling="poisson")
    exact = dp.gaussian_epsilon if mechanism == "gaussian" else dp.laplace_epsilon
    curve = dp.epsilon_spent_curve(mechanism, 2.0, T, **kw)
    stride = math.ceil(T / dp.SPENT_GRID)  # 3: grid 3, 6, ..., 129, and the run's last step 130
    for t in (1, 3, 64, 128, 129, 130):
        e = exact(2.0, steps=t, **kw)
        if t % stride == 0 or t == T:
            assert curve(t) == e, t
        else:
            assert e <= curve(t) <= exact(2.0, steps=min(math.ceil(t / stride) * stride, T), **kw), t
    assert curve(0) == 0.0


@pytest.mark.parametrize("t", [-1, 41, 2.5, True])
def test_epsilon_spent_curve_rejects_steps_outside_the_run(t):
    curve = dp.epsilon_spent_curve("gaussian", 3.0, 40, sampling_rate=0.25, delta=1e-5)
    with pytest.raises(ConfigError, match="^steps_done:"):
        curve(t)
