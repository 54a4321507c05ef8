"""Pure privacy math (no torch, no I/O): attacker bounds, PACZero's binary-channel MI, DP accounting."""

from privtune.privacy.bounds import (
    eps_to_posterior,
    match_posterior,
    mi_to_posterior,
    posterior_to_eps,
    posterior_to_mi,
    privacy_views,
    tradeoff_tpr,
)
from privtune.privacy.dp import (
    gaussian_epsilon,
    gaussian_sigma_for_epsilon,
    laplace_epsilon,
    laplace_scale_for_epsilon,
)
from privtune.privacy.matching import matched_budget, matched_mi
from privtune.privacy.pac import (
    bernoulli_entropy,
    binary_gaussian_mi,
    calibrate_sigma,
    cap_budget,
    is_unanimous_mi,
    is_unanimous_zpl,
    posterior_update,
    posterior_update_sign,
    q_plus,
    sign_release_mi,
    step_budget,
)

__all__ = [
    "bernoulli_entropy",
    "binary_gaussian_mi",
    "calibrate_sigma",
    "cap_budget",
    "eps_to_posterior",
    "gaussian_epsilon",
    "gaussian_sigma_for_epsilon",
    "is_unanimous_mi",
    "is_unanimous_zpl",
    "laplace_epsilon",
    "laplace_scale_for_epsilon",
    "match_posterior",
    "matched_budget",
    "matched_mi",
    "mi_to_posterior",
    "posterior_to_eps",
    "posterior_to_mi",
    "posterior_update",
    "posterior_update_sign",
    "privacy_views",
    "q_plus",
    "sign_release_mi",
    "step_budget",
    "tradeoff_tpr",
]
