"""Generalization bound of a run whose output is a function of b released bits (BBoxER, "Tuning without Peeking",
arXiv 2507.01752): pure functions, no torch, no I/O.

If the trained model is a deterministic function of public seeds and b released bits, it is one of at most 2^b
models fixed before the data is seen. For each of them Hoeffding gives P(|R − R̂| > t) ≤ 2·exp(−2st²) for a loss in
[0, 1] (e.g. the 0-1 error) averaged over s i.i.d. scoring examples; a union bound over the 2^b models gives, with
probability ≥ 1 − δ over the scoring set,

    |R − R̂| ≤ sqrt((b·ln 2 + ln(2/δ)) / (2s)).

A ranking of λ candidates (ties broken by index, so a permutation) releases log₂(λ!) bits.
"""

from __future__ import annotations

import math

from privtune.errors import ConfigError
from privtune.privacy._checks import number as _number

LN2 = math.log(2.0)


def ranking_bits(population: int) -> float:
    """Bits in one ranking of `population` candidates: log₂(λ!) (λ! possible permutations)."""
    lam = int(population)
    if lam < 1:
        raise ConfigError(f"population: must be >= 1, got {population}")
    return math.lgamma(lam + 1) / LN2


def released_bits(steps: int, comparison: str = "incumbent", population: int = 1) -> float:
    """Bits released by `steps` steps: one per incumbent comparison, log₂(λ!) per ranked generation."""
    if steps < 0:
        raise ConfigError(f"steps: must be >= 0, got {steps}")
    if comparison == "incumbent":
        return float(steps)
    if comparison == "ranking":
        return steps * ranking_bits(population)
    raise ConfigError(f"comparison: must be incumbent or ranking, got {comparison!r}")


def generalization_gap_bound(bits: float, n_examples: int, delta: float) -> float:
    """Hoeffding + union bound over ≤ 2^bits outputs: sqrt((bits·ln 2 + ln(2/δ)) / (2s)) (BBoxER, arXiv 2507.01752).

    Holds simultaneously for every output reachable by a bit string, for any loss with values in [0, 1]."""
    bits = _number("bits", bits)
    delta = _number("delta", delta)
    if bits < 0:
        raise ConfigError(f"bits: must be >= 0, got {bits}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta: must be in (0, 1), got {delta}")
    if int(n_examples) < 1:
        raise ConfigError(f"n_examples: must be >= 1, got {n_examples}")
    return math.sqrt((bits * LN2 + math.log(2.0 / delta)) / (2.0 * int(n_examples)))


def bits_mi_bound(bits: float) -> float:
    """I(data; output) ≤ H(output) ≤ bits·ln 2 nats: the output is a function of `bits` released bits."""
    bits = _number("bits", bits)
    if bits < 0:
        raise ConfigError(f"bits: must be >= 0, got {bits}")
    return bits * LN2
