"""Private hyper-parameter selection: the accounting of `privtune tune` (Papernot & Steinke, "Hyperparameter Tuning
with Renyi Differential Privacy", ICLR 2022, arXiv 2110.03620).

The mechanism. Draw K ≥ 1 from the truncated negative binomial TNB(η, γ) (η = `shape`: 0 the logarithmic
distribution, 1 the geometric), secretly. Run K repetitions; each draws a candidate uniformly from a public grid,
trains a DP run with it, and scores the trained model on private validation data with Gaussian noise on the summed
per-example score (each in [0, 1], so the sum moves by at most 1 when one example changes). Release the best
repetition's model and noisy score only: K, the other repetitions and their scores stay inside.

The accounting. One repetition is the composition of its training run and its noisy score (composed, not
maximised, so a record in both the training pool and the validation set is covered). A mixture over candidates is no
less private than the worst candidate; `privtune tune` makes every candidate's event identical (only keys that do
not change the accounting may vary), so one event is the repetition's. dp_accounting's RepeatAndSelectDpEvent
applies Theorem 2 of the paper to that event's RDP curve (RDP accountant only), and converts to (ε, δ).

K's distribution is parametrised by its mean. The γ this module samples with and the mean handed to the accountant
are tied exactly (`tnb_mean(γ)`); the accountant inverts that mean to a γ no larger than ours (its bisection returns
the lower end), which only loosens its bound.

Pure functions on floats (and a numpy Generator for the draw); no torch, no I/O.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from privtune.errors import ConfigError
from privtune.privacy import dp
from privtune.privacy._checks import number as _number

def _check_shape(shape) -> float:
    shape = _number("shape", shape)
    if not (0.0 <= shape < math.inf):
        raise ConfigError(f"shape: must be finite and >= 0 (0 logarithmic, 1 geometric), got {shape}")
    return shape


def _check_mean(mean) -> float:
    mean = _number("mean", mean)
    if not (1.0 <= mean < math.inf):
        raise ConfigError(f"mean: the expected number of runs must be finite and >= 1, got {mean}")
    return mean


def tnb_mean(gamma: float, shape: float) -> float:
    """E[K] for K ~ TNB(η = shape, γ): P[K = k] ∝ C(k+η−1, k)(1−γ)^k for k ≥ 1 (η = 0: ∝ (1−γ)^k / k)."""
    shape = _check_shape(shape)
    gamma = _number("gamma", gamma)
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"gamma: must be in (0, 1], got {gamma}")
    if gamma == 1.0:
        return 1.0
    if shape == 1.0:
        return 1.0 / gamma
    if shape == 0.0:
        return (1.0 / gamma - 1.0) / math.log(1.0 / gamma)
    return shape * (1.0 / gamma - 1.0) / -math.expm1(shape * math.log(gamma))


def tnb_gamma(mean: float, shape: float, rel_tol: float = 1e-12) -> float:
    """The γ with tnb_mean(γ, shape) = mean (to ~rel_tol; E[K] decreases in γ). Use tnb_mean of the result, not
    `mean`, wherever the exact mean of the distribution sampled from matters."""
    mean, shape = _check_mean(mean), _check_shape(shape)
    if mean == 1.0:
        return 1.0
    if shape == 1.0:
        return 1.0 / mean
    lo, hi = 0.0, 1.0  # tnb_mean(lo → 0) = ∞ > mean ≥ tnb_mean(hi = 1) = 1
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if tnb_mean(mid, shape) > mean:
            lo = mid
        else:
            hi = mid
    return hi


def draw_runs(rng: np.random.Generator, gamma: float, shape: float) -> int:
    """One draw of K ~ TNB(shape, gamma), K ≥ 1. `rng` must be secret: the guarantee assumes nobody learns K."""
    shape = _check_shape(shape)
    if gamma == 1.0:
        return 1
    if shape == 0.0:  # logarithmic: P[k] = −(1−γ)^k / (k log γ), numpy's logseries(p = 1 − γ)
        return int(rng.logseries(1.0 - gamma))
    while True:  # negative binomial(η, γ) conditioned on K ≥ 1
        k = int(rng.negative_binomial(shape, gamma))
        if k >= 1:
            return k


def repetition_event(run_event: dp_accounting.DpEvent, score_noise: float) -> dp_accounting.DpEvent:
    """One repetition: its training run's event (privacy.dp.run_event) composed with the Gaussian noisy score.
    `score_noise` is the score noise std over the sensitivity of the summed score (1: per-example scores in [0, 1],
    under add/remove-one and replace-one alike)."""
    score_noise = _number("score_noise", score_noise)
    if not (score_noise > 0.0 and math.isfinite(score_noise)):
        raise ConfigError(f"score_noise: must be finite and > 0, got {score_noise}")
    return dp_accounting.ComposedDpEvent([run_event, dp_accounting.GaussianDpEvent(noise_multiplier=score_noise)])


def selection_epsilon(event: dp_accounting.DpEvent, mean: float, shape: float, delta: float, sampling: str) -> float:
    """ε at δ of releasing the best of K ~ TNB(shape, mean) repetitions of `event` (RDP accountant, Papernot &
    Steinke Thm. 2 through dp_accounting). `mean` should be tnb_mean of the γ that K is drawn with."""
    mean, shape = _check_mean(mean), _check_shape(shape)
    delta = _number("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta: must be in (0, 1), got {delta}")
    accountant = rdp_privacy_accountant.RdpAccountant(neighboring_relation=dp.relation(sampling))
    selected = dp_event.RepeatAndSelectDpEvent(event=event, mean=mean, shape=shape)
    if not accountant.supports(selected):
        raise ConfigError("method: the RDP accountant has no rule for this run's mechanism and sampling, so its "
                          "selection cannot be accounted (DP-ZO's Laplace needs method.batch_size = the pool)")
    return float(accountant.compose(selected).get_epsilon(delta))


def run_epsilon_for(total: float, total_of, rel_tol: float = 1e-3, field: str = "epsilon") -> float:
    """The largest per-run ε e (to relative precision ~rel_tol, from below) with total_of(e) ≤ total, where
    total_of(e) is the selection's ε when each run is calibrated to e (increasing in e). Bisection in log e over
    (total / 10⁴, total]; `field` names the budget in errors."""
    total = _number("epsilon", total)
    if not (total > 0.0 and math.isfinite(total)):
        raise ConfigError(f"{field}: must be finite and > 0, got {total}")
    hi, lo = total, total * 1e-4
    if total_of(hi) <= total:
        return hi
    if total_of(lo) > total:
        raise ConfigError(f"{field}: {total:g} is too small for this selection: even runs at ε = {lo:.3g} cost "
                          "more (fewer expected runs, more validation examples or a noisier score cost less)")
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if total_of(mid) <= total:
            lo = mid
        else:
            hi = mid
    return lo
