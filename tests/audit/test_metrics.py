"""MIA metrics: AUC, TPR at low FPR, cross-fitted posterior success, and the Gaussian-trade-off ε estimate."""

import numpy as np
import pytest
from scipy.stats import norm

from privtune.audit import metrics
from privtune.privacy.dp import gaussian_epsilon


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_recovers_gaussian_mechanism_epsilon_within_5_percent(sigma):
    """Scores of a Gaussian mechanism (sensitivity 1, noise σ): members N(1, σ²), non-members N(0, σ²). The ε
    estimate must match dp_accounting's PLD ε of that mechanism (an independent computation) within 5%."""
    rng = np.random.default_rng(0)
    n, delta = 50_000, 1e-5
    members, non = 1 + sigma * rng.standard_normal(n), sigma * rng.standard_normal(n)
    est = metrics.gdp_epsilon(metrics.gdp_mu(metrics.auc(members, non)), delta)
    true = gaussian_epsilon(sigma, 1, 1.0, delta, accountant="pld")
    assert est == pytest.approx(true, rel=0.05)


def test_identical_distributions_give_about_zero():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(50_000), rng.standard_normal(50_000)
    assert metrics.gdp_epsilon(metrics.gdp_mu(metrics.auc(a, b)), 1e-5) < 0.1
    m = metrics.mia_metrics(a[:2000], b[:2000], n_boot=50)
    assert m["auc_ci"][0] < 0.5 < m["auc_ci"][1]
    assert abs(m["posterior_success"] - 0.5) < 0.03


def test_cross_fitted_posterior_is_unbiased_at_chance():
    """The in-sample best threshold would sit above ½ for identical distributions; cross-fitting must not."""
    rng = np.random.default_rng(2)
    vals = [metrics.posterior_success(rng.standard_normal(200), rng.standard_normal(200), seed=s) for s in range(40)]
    assert abs(np.mean(vals) - 0.5) < 0.01


def test_posterior_and_tpr_match_gaussian_theory():
    rng = np.random.default_rng(3)
    mu, n = 1.5, 40_000
    a, b = mu + rng.standard_normal(n), rng.standard_normal(n)
    assert metrics.posterior_success(a, b) == pytest.approx(norm.cdf(mu / 2), abs=0.01)  # best balanced accuracy
    assert metrics.auc(a, b) == pytest.approx(norm.cdf(mu / np.sqrt(2)), abs=0.005)
    assert metrics.tpr_at_fpr(a, b, 0.01) == pytest.approx(norm.sf(norm.isf(0.01) - mu), abs=0.02)


def test_bad_scores_raise():
    with pytest.raises(ValueError):
        metrics.auc([], [1.0])
    with pytest.raises(ValueError):
        metrics.auc([np.nan], [1.0])


def test_posterior_ci_covers_chance_at_nominal_rate():
    """For identical distributions the one-sided 95% lower limit of the posterior success must exceed ½ in about
    5% of audits, not more (copies of a resampled example stay in one fold)."""
    rng = np.random.default_rng(4)
    over = 0
    for s in range(30):
        a, b = rng.standard_normal(150), rng.standard_normal(150)
        fa, fb = metrics.folds(150, 150, s)
        ci = metrics.bootstrap(lambda i, j: metrics.posterior_success(a[i], b[j], fold=(fa[i], fb[j])),
                               150, 150, 60, s, levels=(0.9,))
        over += ci[0.9][0] > 0.5
    assert over <= 5
