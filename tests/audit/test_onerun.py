"""One-run audit (Steinke, Nasr & Jagielski 2023): the p-value, the ε lower bound, recovery and validity."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from privtune.audit import onerun
from privtune.privacy.dp import gaussian_epsilon


def randomized_response(m, eps, rng):
    """Canaries in/out w.p. ½; the 'score' is the in/out bit flipped w.p. 1/(1+e^ε): exactly ε-DP per canary."""
    inc = rng.random(m) < 0.5
    q = 1 / (1 + math.exp(-eps))
    guess = np.where(rng.random(m) < q, inc, ~inc)
    return guess + 1e-6 * rng.random(m), inc  # tiny jitter: ties broken at random


def test_p_value_pure_dp_is_the_binomial_tail():
    q = 1 / (1 + math.exp(-1.0))
    assert onerun.p_value(10, 5, 4, 1.0) == pytest.approx(5 * q**4 * (1 - q) + q**5, rel=1e-12)
    assert onerun.p_value(10, 5, 4, 1.0) == pytest.approx(binom.sf(3, 5, q), rel=1e-12)


def test_p_value_delta_term_small_case_by_hand():
    # ε = 0: q = ½. β = P[Bin(3,½) ≥ 2] = ½; α = max(P[Bin=1]/1, (P[Bin=1]+P[Bin=0])/2) = max(3/8, 1/4) = 3/8
    assert onerun.p_value(10, 3, 2, 0.0, 0.01) == pytest.approx(0.5 + 2 * 10 * 0.01 * 3 / 8, rel=1e-12)


def test_p_value_decreases_in_epsilon_is_false_it_increases():
    ps = [onerun.p_value(1000, 200, 150, e, 1e-5) for e in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(ps, ps[1:]))


def test_recovers_pure_epsilon_within_5_percent():
    rng = np.random.default_rng(0)
    for eps in (1.0, 2.0):
        scores, inc = randomized_response(100_000, eps, rng)
        got = onerun.audit(scores, inc, delta=0.0)["epsilon_lower_bound"]
        assert 0.95 * eps <= got <= eps


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(1)
    inc = rng.random(20_000) < 0.5
    assert onerun.audit(rng.standard_normal(20_000), inc)["epsilon_lower_bound"] < 0.05


def test_gaussian_mechanism_bound_is_valid_and_informative():
    rng = np.random.default_rng(2)
    m, sigma, delta = 50_000, 1.0, 1e-5
    inc = rng.random(m) < 0.5
    scores = inc + sigma * rng.standard_normal(m)  # each canary: Gaussian mechanism, sensitivity 1
    true = gaussian_epsilon(sigma, 1, 1.0, delta, accountant="pld")
    got = onerun.audit(scores, inc, delta=delta)["epsilon_lower_bound"]
    assert 0.25 * true < got <= true


def test_bound_holds_at_95_percent():
    """Validity: on an exactly ε-DP mechanism the 95% lower bound exceeds ε in at most ~5% of audits."""
    rng = np.random.default_rng(3)
    over = sum(onerun.audit(*randomized_response(400, 1.0, rng))["epsilon_lower_bound"] > 1.0 for _ in range(100))
    assert over <= 10


def test_guesses_top_and_bottom():
    r, v = onerun.guesses([5, 4, 3, 2, 1, 0], [True, False, True, False, False, False], 2, 2)
    assert (r, v) == (4, 3)
    with pytest.raises(ValueError):
        onerun.guesses([1, 2], [True, False], 2, 1)
