"""Matched budgets: the PAC mutual-information budget with the same attacker bound as an (ε, δ)-DP guarantee.

A PACZero-MI run "matched" to ε must not allow a stronger membership-inference attacker than ε does, so its
budget is the exact MI of the ε posterior (bounds.eps_to_posterior, then bounds.posterior_to_mi), written into
configs rounded DOWN to MATCH_DECIMALS. Rounding to nearest would favour PACZero: 0.33 nats is posterior
0.8819, above the 0.8808 of ε = 2, δ = 1e-5 (exact match 0.32782 nats).

Pure functions on floats; no torch, no I/O.
"""

from __future__ import annotations

import math

from privtune.errors import ConfigError
from privtune.privacy.bounds import eps_to_posterior, posterior_to_mi

MATCH_DECIMALS = 4  # shipped configs carry matched budgets to 4 decimals (0.3278, 0.6758), rounded down


def matched_mi(epsilon: float, delta: float = 0.0) -> float:
    """The MI (nats) whose PAC posterior bound equals the best attacker's posterior against (ε, δ)-DP (prior ½)."""
    # one attacker, two bounds: (e^ε + δ)/(1 + e^ε) = p = mi_to_posterior(I)  (Kairouz et al. 2015; Xiao & Devadas)
    return posterior_to_mi(eps_to_posterior(epsilon, delta))


def matched_budget(epsilon: float, delta: float = 0.0, decimals: int = MATCH_DECIMALS) -> float:
    """matched_mi(ε, δ) rounded DOWN to `decimals` places: a budget never above the exact match."""
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 12:
        raise ConfigError(f"decimals: must be an integer in [0, 12], got {decimals!r}")
    exact = matched_mi(epsilon, delta)
    scale = 10**decimals
    units = math.floor(exact * scale)
    if units / scale > exact:  # exact·scale rounded up onto the next integer
        units -= 1
    return units / scale
