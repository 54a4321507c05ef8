"""Private selection's accounting (privacy/selection.py): K's distribution, the repetition's event, and Papernot &
Steinke's bound checked against the exact privacy loss of a selection small enough to enumerate."""

import math

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, RandomizedResponseDpEvent
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from privtune.errors import ConfigError
from privtune.privacy import dp, selection as S


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("mean", [1.0, 1.5, 3.0, 10.0])
def test_gamma_inverts_the_mean(shape, mean):
    gamma = S.tnb_gamma(mean, shape)
    assert 0.0 < gamma <= 1.0
    assert S.tnb_mean(gamma, shape) == pytest.approx(mean, rel=1e-9)


def _pmf(gamma, shape, kmax):
    """P[K = k], k = 1..kmax, from the definition (normalised over a range that holds all but ~1e-12 of it)."""
    k = np.arange(1, kmax + 1, dtype=float)
    if shape == 0.0:
        w = (1 - gamma) ** k / k
    else:
        w = np.exp([math.lgamma(x + shape) - math.lgamma(x + 1) - math.lgamma(shape) for x in k]) * (1 - gamma) ** k
    return w / w.sum()


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 2.0])
def test_the_draw_follows_the_accounted_distribution(shape):
    gamma = S.tnb_gamma(3.0, shape)
    rng = np.random.default_rng(0)
    ks = np.array([S.draw_runs(rng, gamma, shape) for _ in range(20000)])
    assert ks.min() >= 1
    pmf = _pmf(gamma, shape, 400)
    assert (np.arange(1, 401) * pmf).sum() == pytest.approx(S.tnb_mean(gamma, shape), rel=1e-6)  # pmf ⇔ mean formula
    # the empirical frequencies of K = 1..5 within 5 standard errors of the pmf
    for k in range(1, 6):
        p = pmf[k - 1]
        assert abs((ks == k).mean() - p) < 5 * math.sqrt(p * (1 - p) / len(ks)), (k, (ks == k).mean(), p)
    assert S.draw_runs(rng, 1.0, shape) == 1  # mean 1: always one run


def test_run_event_is_what_gaussian_epsilon_accounts():
    for sampling in ("poisson", "fixed"):
        ev = dp.run_event("gaussian", 1.3, 200, 0.05, sampling, 1000)
        acc = RdpAccountant(neighboring_relation=dp.relation(sampling)).compose(ev)
        assert acc.get_epsilon(1e-5) == dp.gaussian_epsilon(1.3, 200, 0.05, 1e-5, "rdp", sampling, 1000)


def test_a_selection_costs_more_than_one_run_and_more_with_more_runs():
    run = dp.run_event("gaussian", 1.0, 100, 0.1, "poisson", 640)
    one = dp.gaussian_epsilon(1.0, 100, 0.1, 1e-5)
    costs = [S.selection_epsilon(S.repetition_event(run, 10.0), m, 1.0, 1e-5, "poisson") for m in (1.0, 3.0, 10.0)]
    assert one < costs[0] < costs[1] < costs[2]
    noisier = S.selection_epsilon(S.repetition_event(run, 100.0), 3.0, 1.0, 1e-5, "poisson")
    assert noisier < costs[1]  # a noisier score costs less


def _exact_epsilon(p, q, delta):
    """Exact ε(δ) between two output distributions over a finite set (both directions): the smallest ε with
    Σ max(0, P − e^ε Q) ≤ δ, by bisection."""
    def hockey(eps):
        return max(np.maximum(0, p - math.exp(eps) * q).sum(), np.maximum(0, q - math.exp(eps) * p).sum())
    lo, hi = 0.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if hockey(mid) <= delta else (mid, hi)
    return hi


@pytest.mark.parametrize("shape", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("mean,r", [(2.0, 0.9), (5.0, 0.9), (5.0, 0.5), (20.0, 0.95)])
def test_the_bound_holds_for_a_selection_we_can_enumerate(shape, mean, r):
    """Paper's Thm. 2 as a test. The repeated mechanism: binary randomized response (the true bit with probability
    1 − r/2), worst neighbours: true bit 1 vs 0. The selection releases the best of K runs (score = the bit), i.e.
    1 iff any run said 1: P[1] = 1 − E[x^K] with x = P[a run says 0]. Its exact ε(δ) must not exceed the bound."""
    gamma = S.tnb_gamma(mean, shape)
    pmf = _pmf(gamma, shape, 5000)
    k = np.arange(1, 5001)

    def best_is_one(x):
        return 1.0 - (pmf * x ** k).sum()

    p1, q1 = best_is_one(r / 2), best_is_one(1 - r / 2)
    p, q = np.array([1 - p1, p1]), np.array([1 - q1, q1])
    event = RandomizedResponseDpEvent(noise_parameter=r, num_buckets=2)
    for delta in (1e-5, 1e-3):
        exact = _exact_epsilon(p, q, delta)
        bound = S.selection_epsilon(event, S.tnb_mean(gamma, shape), shape, delta, "fixed")  # replace-one
        single = _exact_epsilon(np.array([r / 2, 1 - r / 2]), np.array([1 - r / 2, r / 2]), delta)
        assert exact <= bound + 1e-9, (exact, bound)
        assert single <= bound  # and the bound covers one run
        assert bound < 3 * exact  # not vacuous
        # and the selection leaks more than one run: accounting it as one run (or with the mean ignored) would fail
        assert exact > S.selection_epsilon(event, 1.0, shape, delta, "fixed")


def test_run_epsilon_for_is_the_largest_budget_that_fits():
    e = S.run_epsilon_for(3.0, lambda x: 2.0 * x + 0.5, field="--epsilon")
    assert 2.0 * e + 0.5 <= 3.0 and e == pytest.approx(1.25, rel=2e-3)
    assert S.run_epsilon_for(3.0, lambda x: x) == 3.0  # the whole budget fits
    with pytest.raises(ConfigError, match=r"^--epsilon: 1 is too small"):
        S.run_epsilon_for(1.0, lambda x: x + 5.0, field="--epsilon")


def test_refusals_name_the_field():
    with pytest.raises(ConfigError, match="^shape:"):
        S.tnb_gamma(3.0, math.inf)
    with pytest.raises(ConfigError, match="^mean:"):
        S.tnb_gamma(0.5, 1.0)
    with pytest.raises(ConfigError, match="^score_noise:"):
        S.repetition_event(dp.run_event("gaussian", 1.0, 10, 0.1), 0.0)
    laplace = dp.run_event("laplace", 1.0, 10, 0.1, "poisson", 100)  # sub-sampled Laplace: no RDP rule
    with pytest.raises(ConfigError, match="^method:"):
        S.selection_epsilon(S.repetition_event(laplace, 5.0), 3.0, 1.0, 1e-5, "poisson")
    assert NeighboringRelation.REPLACE_ONE == dp.relation("fixed")
