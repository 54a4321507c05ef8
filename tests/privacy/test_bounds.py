"""The common privacy axis: numbers pinned from closed forms computed by hand / mpmath (30 digits)."""

import math

import numpy as np
import pytest

from privtune.errors import ConfigError
from privtune.privacy import bounds as B

# ε ↔ posterior e^ε/(1+e^ε) ↔ MI p·ln 2p + (1−p)·ln 2(1−p), evaluated with mpmath at 30 digits
PINNED = [
    # (epsilon, posterior, mi_nats)
    (2.0, 0.880797077977882444, 0.327813325472737701),
    (6.0, 0.997527376843365226, 0.675835756482406214),
]


@pytest.mark.parametrize("eps, post, mi", PINNED)
def test_pinned_eps_posterior_mi(eps, post, mi):
    assert B.eps_to_posterior(eps) == pytest.approx(post, abs=1e-12)
    assert B.posterior_to_mi(post) == pytest.approx(mi, abs=1e-12)
    assert B.mi_to_posterior(mi) == pytest.approx(post, abs=1e-10)
    assert B.posterior_to_eps(post) == pytest.approx(eps, abs=1e-9)
    views = B.privacy_views(epsilon=eps)
    assert views["posterior"] == pytest.approx(post, abs=1e-6)
    assert views["mi_nats"] == pytest.approx(mi, abs=1e-6)
    assert views["delta"] == 0.0
    back = B.privacy_views(mi=mi)
    assert back["epsilon"] == pytest.approx(eps, abs=1e-6)
    assert back["posterior"] == pytest.approx(post, abs=1e-6)
    m = B.match_posterior(post)
    assert m["epsilon"] == pytest.approx(eps, abs=1e-6) and m["mi_nats"] == pytest.approx(mi, abs=1e-6)


def test_paper_budgets_round_numbers():
    # the PACZero paper's 0.33 and 0.68 nats are the ε = 2 and ε = 6 matches rounded to NEAREST, so slightly above
    # them (in PACZero's favour); privtune's configs use privacy.matched_budget, rounded down (test_matching.py)
    assert round(B.posterior_to_mi(B.eps_to_posterior(2.0)), 2) == 0.33 > B.posterior_to_mi(B.eps_to_posterior(2.0))
    assert round(B.posterior_to_mi(B.eps_to_posterior(6.0)), 2) == 0.68 > B.posterior_to_mi(B.eps_to_posterior(6.0))


def test_mi_to_posterior_edges_and_precision():
    assert B.mi_to_posterior(0.0) == 0.5
    assert B.mi_to_posterior(math.log(2)) == 1.0
    assert B.mi_to_posterior(5.0) == 1.0
    for mi in [1e-10, 1e-4, 0.1, 0.5, 0.69]:
        p = B.mi_to_posterior(mi)
        # residual of ln2 − H_b(p) = I, computed independently of the module
        h = -p * math.log(p) - (1 - p) * math.log(1 - p)
        assert math.log(2) - h == pytest.approx(mi, abs=1e-12)
    # small-I expansion: ln2 − H_b(1/2 + x) ≈ 2x², so p ≈ 1/2 + sqrt(I/2)
    assert B.mi_to_posterior(1e-8) == pytest.approx(0.5 + math.sqrt(0.5e-8), abs=1e-9)


def test_delta_posterior_is_corner_of_tradeoff_region():
    eps, delta = 1.0, 1e-3
    # (e^ε + δ)/(1 + e^ε) by hand = (2.718281828 + 0.001)/3.718281828
    assert B.eps_to_posterior(eps, delta) == pytest.approx(0.731327520051375, abs=1e-12)
    # equals the max over a fine FPR grid of the balanced accuracy (TPR + 1 − FPR)/2
    fpr = np.linspace(0.0, 1.0, 200001)
    acc = (B.tradeoff_tpr(fpr, eps, delta) + 1.0 - fpr) / 2.0
    assert acc.max() == pytest.approx(B.eps_to_posterior(eps, delta), abs=1e-5)
    # the brief's form (1 + (e^ε − 1 + 2δ)/(e^ε + 1))/2 is the same number
    e = math.exp(eps)
    assert B.eps_to_posterior(eps, delta) == pytest.approx((1 + (e - 1 + 2 * delta) / (e + 1)) / 2, abs=1e-15)
    assert B.posterior_to_eps(B.eps_to_posterior(eps, delta), delta) == pytest.approx(eps, abs=1e-12)
    # below (1 + δ)/2 no ε ≥ 0 matches
    assert B.posterior_to_eps(0.5, 0.01) == 0.0


def test_tradeoff_tpr_values():
    eps, delta = math.log(3.0), 0.01
    fpr = np.array([0.0, 0.1, 0.5, 0.99, 1.0])
    # min(1, 3·fpr + 0.01, 1 − (1/3)(0.99 − fpr)), by hand
    want = np.array([0.01, 0.31, 1 - 0.49 / 3, 1.0, 1.0])
    np.testing.assert_allclose(B.tradeoff_tpr(fpr, eps, delta), want, atol=1e-12)
    assert isinstance(B.tradeoff_tpr(0.1, eps, delta), float)
    # ε = 0, δ = 0: no test beats chance
    np.testing.assert_allclose(B.tradeoff_tpr(fpr, 0.0, 0.0), fpr, atol=1e-15)


def test_views_agree_when_starting_from_posterior():
    v = B.privacy_views(posterior=0.9, delta=1e-5)
    assert B.eps_to_posterior(v["epsilon"], 1e-5) == pytest.approx(0.9, abs=1e-12)
    assert B.mi_to_posterior(v["mi_nats"]) == pytest.approx(0.9, abs=1e-10)


@pytest.mark.parametrize("call, field", [
    (lambda: B.privacy_views(), "mi/epsilon/posterior"),
    (lambda: B.privacy_views(mi=0.1, epsilon=1.0), "mi/epsilon/posterior"),
    (lambda: B.eps_to_posterior(-1.0), "epsilon"),
    (lambda: B.eps_to_posterior(1.0, 1.0), "delta"),
    (lambda: B.mi_to_posterior(-0.1), "mi_nats"),
    (lambda: B.posterior_to_mi(0.4), "p"),
    (lambda: B.tradeoff_tpr([0.1, 1.5], 1.0, 0.0), "fpr"),
])
def test_invalid_arguments_name_the_parameter(call, field):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value).startswith(field + ":")
