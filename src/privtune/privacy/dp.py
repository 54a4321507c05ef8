"""(ε, δ)-DP accounting for the DP zeroth-order baselines (DPZero, DP-ZO), through Google's dp_accounting.

No privacy formula is written here: each function builds a dp_accounting DpEvent for `steps` releases of a
(sub-sampled) Gaussian or Laplace mechanism and asks an accountant for ε at δ, or calibrates the noise with
dp_accounting.mechanism_calibration.calibrate_dp_mechanism (which guarantees ε(noise) ≤ target).

Noise parameters are always relative to C, the most one example can change the released sum (its
add/remove-one L2 sensitivity; for Laplace the L1 sensitivity): the noise standard deviation is sigma·C.
- sampling="poisson": each example joins each step's batch independently with probability `sampling_rate`;
  neighbours differ by adding or removing one example (dp_accounting ADD_OR_REMOVE_ONE).
- sampling="fixed": a batch of round(sampling_rate·N) distinct examples drawn uniformly without replacement;
  neighbours differ by replacing one example (REPLACE_ONE), so the sensitivity is 2C. dp_accounting 0.6 is not
  uniform here: its PLD accountant models REPLACE_ONE as a shift of 2 noise units by itself, while its RDP
  rules (GaussianDpEvent, and SampledWithoutReplacementDpEvent after Wang, Balle & Kasiviswanathan,
  AISTATS 2019, Thm. 27) take the noise relative to the replace-one sensitivity. We therefore hand the RDP
  accountant sigma/2 under "fixed", so both accountants answer for the same mechanism. Sampling without
  replacement at sampling_rate < 1 has an RDP rule only (ConfigError for "pld"). The amplification needs a batch
  nobody can recompute: callers draw it from the run's secret key, never from a public seed.
- sampling_rate = 1 means every step uses the full data set: `steps` plain compositions of the mechanism
  (neighbouring relation as above).

Pure functions on floats; no torch, no I/O.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Callable

import dp_accounting
from dp_accounting import mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from privtune.errors import ConfigError
from privtune.privacy._checks import number as _number

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")
# dp_accounting's default value_discretization_interval for the PLD accountant; it builds pessimistic PLDs (privacy
# losses rounded up to the grid), so the discretization over-states ε, never under-states it
PLD_DISCRETIZATION = 1e-4
SPENT_GRID = 64  # epsilon_spent_curve asks a PLD accountant (~0.1 s a call) at most this many times per run

_NeighborRel = dp_accounting.NeighboringRelation


def _check_common(steps, sampling_rate, delta, accountant, sampling) -> tuple[int, float, float]:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")
    rate = _number("sampling_rate", sampling_rate)
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"sampling_rate: must be in (0, 1], got {rate}")
    delta = _number("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta: must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant: must be one of {ACCOUNTANTS}, got {accountant!r}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling: must be one of {SAMPLINGS}, got {sampling!r}")
    return int(steps), rate, delta


def _check_epsilon(epsilon) -> float:
    epsilon = _number("epsilon", epsilon)
    if not (epsilon > 0.0 and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon: must be finite and > 0, got {epsilon}")
    return epsilon


def _fixed_sizes(rate: float, dataset_size: int | None) -> tuple[int, int]:
    """(source_dataset_size, sample_size) for sampling without replacement at `rate`."""
    if dataset_size is None:
        frac = Fraction(rate).limit_denominator(1_000_000)
        return frac.denominator, frac.numerator
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, numbers.Integral) or dataset_size < 1:
        raise ConfigError(f"dataset_size: must be an integer >= 1, got {dataset_size!r}")
    sample_size = round(rate * dataset_size)
    if sample_size < 1:
        raise ConfigError(f"sampling_rate: {rate} x dataset_size {dataset_size} rounds to an empty batch")
    return dataset_size, sample_size


def _noise_for(accountant: str, sampling: str, x: float) -> float:
    """The noise parameter dp_accounting expects for noise x·C (see the module docstring)."""
    # RDP rules take noise relative to the replace-one sensitivity 2C  (Wang, Balle & Kasiviswanathan 2019)
    return x / 2.0 if (accountant == "rdp" and sampling == "fixed") else x


def _sampled(base: dp_accounting.DpEvent, steps: int, rate: float, sampling: str,
             dataset_size: int | None) -> dp_accounting.DpEvent:
    if rate == 1.0:
        step = base
    elif sampling == "poisson":
        step = dp_accounting.PoissonSampledDpEvent(sampling_probability=rate, event=base)
    else:
        n, k = _fixed_sizes(rate, dataset_size)
        step = dp_accounting.SampledWithoutReplacementDpEvent(source_dataset_size=n, sample_size=k, event=base)
    return dp_accounting.SelfComposedDpEvent(event=step, count=steps)


_BASE = {"gaussian": dp_accounting.GaussianDpEvent, "laplace": dp_accounting.LaplaceDpEvent}


def _event(mechanism: str, accountant: str, sampling: str, noise: float, steps: int, rate: float,
           dataset_size: int | None) -> dp_accounting.DpEvent:
    """`steps` releases of the (sub-sampled) mechanism with noise noise·C, as `accountant` expects it."""
    return _sampled(_BASE[mechanism](noise_multiplier=_noise_for(accountant, sampling, noise)), steps, rate, sampling,
                    dataset_size)


def run_event(mechanism: str, noise: float, steps: int, sampling_rate: float, sampling: str = "poisson",
              dataset_size: int | None = None) -> dp_accounting.DpEvent:
    """The DpEvent of a whole run for the RDP accountant (what gaussian_epsilon / laplace_epsilon account with
    accountant="rdp"), for accounting that builds on it: privacy.selection (privtune tune)."""
    if mechanism not in _BASE:
        raise ConfigError(f"mechanism: must be 'gaussian' or 'laplace', got {mechanism!r}")
    noise = _number("noise", noise)
    if not (noise > 0.0 and math.isfinite(noise)):
        raise ConfigError(f"noise: must be finite and > 0, got {noise}")
    steps, rate, _ = _check_common(steps, sampling_rate, 0.5, "rdp", sampling)  # an event has no δ (0.5: any valid)
    return _event(mechanism, "rdp", sampling, noise, steps, rate, dataset_size)


def relation(sampling: str) -> dp_accounting.NeighboringRelation:
    """The neighbouring relation a run's `sampling` implies (module docstring): poisson add/remove-one, fixed
    replace-one."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling: must be one of {SAMPLINGS}, got {sampling!r}")
    return _NeighborRel.ADD_OR_REMOVE_ONE if sampling == "poisson" else _NeighborRel.REPLACE_ONE


def release_factor(mechanism: str, directions: int) -> float:
    """K scalars released per step on one batch are one K-dim mechanism of L2 sensitivity √K·C (Gaussian) or L1
    sensitivity K·C (Laplace): the accountant sees the per-scalar noise divided by this factor."""
    return math.sqrt(directions) if mechanism == "gaussian" else float(directions)


def _make_accountant(accountant: str, sampling: str):
    rel = relation(sampling)

    def fresh():
        if accountant == "rdp":
            return rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)
        return pld_privacy_accountant.PLDAccountant(neighboring_relation=rel,
                                                    value_discretization_interval=PLD_DISCRETIZATION)

    return fresh


def _require_support(fresh, event, accountant, sampling, rate, mechanism) -> None:
    if not fresh().supports(event):
        raise ConfigError(
            f"accountant: '{accountant}' cannot account the {mechanism} mechanism with sampling='{sampling}' and "
            f"sampling_rate={rate} (dp_accounting has no rule for this combination)")


def _epsilon(fresh, event, delta: float) -> float:
    return float(fresh().compose(event).get_epsilon(delta))


def gaussian_epsilon(sigma: float, steps: int, sampling_rate: float, delta: float, accountant: str = "rdp",
                     sampling: str = "poisson", dataset_size: int | None = None) -> float:
    """ε at δ after `steps` releases of the sub-sampled Gaussian mechanism with noise multiplier `sigma`.

    See the module docstring for the neighbouring relation each `sampling` implies. sampling="fixed" with
    sampling_rate < 1 is supported by the RDP accountant only (ConfigError for "pld"); `dataset_size` fixes
    the integer batch size round(sampling_rate·N) (default: the smallest fraction equal to sampling_rate).
    """
    sigma = _number("sigma", sigma)
    if not (sigma > 0.0 and math.isfinite(sigma)):
        raise ConfigError(f"sigma: must be finite and > 0, got {sigma}")
    steps, rate, delta = _check_common(steps, sampling_rate, delta, accountant, sampling)
    fresh = _make_accountant(accountant, sampling)
    event = _event("gaussian", accountant, sampling, sigma, steps, rate, dataset_size)
    _require_support(fresh, event, accountant, sampling, rate, "Gaussian")
    # ε(δ) of the composed sub-sampled Gaussian (Mironov 2017 RDP / Koskela et al. 2020 PLD, via dp_accounting)
    return _epsilon(fresh, event, delta)


def _calibrate(fresh, make_event, epsilon: float, delta: float, tol: float, guess: float = 1.0) -> float:
    """Smallest noise parameter x with ε(x) ≤ epsilon (ε decreasing in x), via dp_accounting's calibrator.

    A geometric search from `guess` finds a bracket [lo, hi] with ε(lo) > epsilon ≥ ε(hi); then
    calibrate_dp_mechanism (Brent's method, result checked to satisfy ε ≤ epsilon) narrows it to tol·lo.
    """
    cache: dict[float, float] = {}

    def eps_at(x: float) -> float:
        if x not in cache:
            cache[x] = _epsilon(fresh, make_event(x), delta)
        return cache[x]

    # Bracket search only: the answer is always a noise x whose ε(x) was computed and is ≤ epsilon (conservative).
    factor = 1.25
    lo = hi = guess
    if eps_at(guess) > epsilon:
        while eps_at(hi) > epsilon:
            lo, hi = hi, hi * factor
            if hi > 1e8:
                raise ConfigError(f"epsilon: {epsilon} needs noise above 1e8 at delta={delta}")
    else:
        while eps_at(lo) <= epsilon:
            lo, hi = lo / factor, lo
            if lo < 1e-6:  # ε ≤ target even at tiny noise: hi (its ε was checked) is safe, if noisier than needed
                return hi
    # tol·lo is brentq's x-tolerance; calibrate_dp_mechanism returns an x with ε(x) ≤ epsilon (it re-checks and
    # falls back to bisection), so tol costs at most that much extra noise, never privacy
    x = mechanism_calibration.calibrate_dp_mechanism(
        fresh, make_event, epsilon, delta,
        bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi), tol=tol * lo)
    return float(x)


def gaussian_sigma_for_epsilon(epsilon: float, delta: float, steps: int, sampling_rate: float,
                               accountant: str = "rdp", sampling: str = "poisson",
                               dataset_size: int | None = None, tol: float = 1e-6) -> float:
    """Smallest noise multiplier σ with gaussian_epsilon(σ, ...) ≤ epsilon, to relative precision ~`tol`."""
    epsilon = _check_epsilon(epsilon)
    steps, rate, delta = _check_common(steps, sampling_rate, delta, accountant, sampling)
    fresh = _make_accountant(accountant, sampling)

    def make_event(s: float):
        return _event("gaussian", accountant, sampling, s, steps, rate, dataset_size)

    _require_support(fresh, make_event(1.0), accountant, sampling, rate, "Gaussian")
    guess = 1.0
    if accountant == "pld" and (rate == 1.0 or sampling == "poisson"):  # PLD is slow: start from the RDP answer
        guess = gaussian_sigma_for_epsilon(epsilon, delta, steps, rate, "rdp", sampling, dataset_size, tol=1e-3)
    return _calibrate(fresh, make_event, epsilon, delta, tol, guess)


def laplace_epsilon(scale: float, steps: int, sampling_rate: float, delta: float, accountant: str = "pld",
                    sampling: str = "poisson", dataset_size: int | None = None) -> float:
    """ε at δ after `steps` releases of the (Poisson-sub-sampled) Laplace mechanism, DP-ZO's Laplace variant.

    `scale` is the Laplace parameter b divided by C, the add/remove-one L1 sensitivity. (δ = 0 would give
    inf from both accountants, hence δ ∈ (0, 1) as for the Gaussian.) dp_accounting accounts sub-sampled Laplace only with the PLD accountant and Poisson sampling; the
    RDP accountant handles the full batch (sampling_rate = 1) only; PLD has no Laplace rule for "fixed".
    """
    scale = _number("scale", scale)
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ConfigError(f"scale: must be finite and > 0, got {scale}")
    steps, rate, delta = _check_common(steps, sampling_rate, delta, accountant, sampling)
    fresh = _make_accountant(accountant, sampling)
    event = _event("laplace", accountant, sampling, scale, steps, rate, dataset_size)
    _require_support(fresh, event, accountant, sampling, rate, "Laplace")
    # ε(δ) of the composed (sub-sampled) Laplace mechanism (Koskela et al. 2020 PLD, via dp_accounting)
    return _epsilon(fresh, event, delta)


def laplace_scale_for_epsilon(epsilon: float, delta: float, steps: int, sampling_rate: float,
                              accountant: str = "pld", sampling: str = "poisson",
                              dataset_size: int | None = None, tol: float = 1e-6) -> float:
    """Smallest Laplace scale b (per unit L1 sensitivity) with laplace_epsilon(b, ...) ≤ epsilon."""
    epsilon = _check_epsilon(epsilon)
    steps, rate, delta = _check_common(steps, sampling_rate, delta, accountant, sampling)
    fresh = _make_accountant(accountant, sampling)

    def make_event(b: float):
        return _event("laplace", accountant, sampling, b, steps, rate, dataset_size)

    _require_support(fresh, make_event(1.0), accountant, sampling, rate, "Laplace")
    return _calibrate(fresh, make_event, epsilon, delta, tol)


def epsilon_spent_curve(mechanism: str, noise: float, steps: int, sampling_rate: float, delta: float,
                        accountant: str = "rdp", sampling: str = "poisson",
                        dataset_size: int | None = None) -> Callable[[int], float]:
    """t ↦ ε at δ spent by the first t of a run's `steps` releases (noise parameter `noise`, as in gaussian_epsilon /
    laplace_epsilon): never below the accountant's ε for t releases, equal to it wherever that is cheap.

    - RDP: the one-step RDP curve is computed once; ε(t) converts t·RDP, which is exactly what dp_accounting's
      RdpAccountant composes for t releases (so bit-identical to gaussian_epsilon(..., steps=t)), in ~1 ms.
    - PLD: every ε costs a composition (~0.1 s at T = 1000); ε(t) is the accountant's ε at the first point ≥ t of a
      grid of at most SPENT_GRID steps that ends at `steps`: exact on the grid, above the exact value in between
      (composition only adds privacy loss), never below it.
    ε(0) = 0 and ε(steps) is the ε of the whole run, ≤ the target a calibration aimed at.
    """
    if mechanism not in ("gaussian", "laplace"):
        raise ConfigError(f"mechanism: must be 'gaussian' or 'laplace', got {mechanism!r}")
    noise = _number("noise", noise)
    if not (noise > 0.0 and math.isfinite(noise)):
        raise ConfigError(f"noise: must be finite and > 0, got {noise}")
    total, rate, delta = _check_common(steps, sampling_rate, delta, accountant, sampling)
    fresh = _make_accountant(accountant, sampling)
    base = _BASE[mechanism](noise_multiplier=_noise_for(accountant, sampling, noise))
    _require_support(fresh, _sampled(base, total, rate, sampling, dataset_size), accountant, sampling, rate,
                     mechanism.capitalize())
    cache: dict[int, float] = {0: 0.0}
    one_step = None

    def epsilon_after(t: int) -> float:
        nonlocal one_step
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= total:
            raise ConfigError(f"steps_done: must be an integer in [0, {total}], got {t!r}")
        t = int(t)
        if accountant == "rdp":
            if one_step is None:
                one_step = fresh().compose(_sampled(base, 1, rate, sampling, dataset_size))
            # ε(δ) of t self-composed releases from the per-step RDP curve (Mironov 2017; dp_accounting's conversion)
            return 0.0 if t == 0 else float(rdp_privacy_accountant.compute_epsilon(one_step.orders, t * one_step.rdp,
                                                                                   delta)[0])
        stride = -(-total // SPENT_GRID)  # ceil: at most SPENT_GRID grid points
        at = min(-(-t // stride) * stride, total)  # the first grid point >= t (the run's last step is one)
        if at not in cache:
            cache[at] = _epsilon(fresh, _sampled(base, at, rate, sampling, dataset_size), delta)
        return cache[at]

    return epsilon_after
