"""BBoxER's generalization bound (arXiv 2507.01752): Hoeffding + a union bound over ≤ 2^b outputs."""

import math

import pytest

from privtune.errors import ConfigError
from privtune.privacy.generalization import (
    bits_mi_bound,
    generalization_gap_bound,
    ranking_bits,
    released_bits,
)


def test_bound_against_hand_computed_values():
    # b = 10, s = 1000, δ = 0.05: (10·0.693147 + ln 40 = 3.688879) / 2000 = 0.00531018 → 0.0728710
    assert generalization_gap_bound(10, 1000, 0.05) == pytest.approx(0.0728710, abs=1e-7)
    # b = 0 is plain two-sided Hoeffding: sqrt(ln(2/0.01) / 200) = sqrt(5.298317 / 200) = 0.1627624
    assert generalization_gap_bound(0, 100, 0.01) == pytest.approx(0.1627624, abs=1e-7)
    # b = 300, s = 2000, δ = 0.05: (207.944154 + 3.688879) / 4000 = 0.0529083 → 0.2300180
    assert generalization_gap_bound(300, 2000, 0.05) == pytest.approx(0.2300180, abs=1e-7)


@pytest.mark.parametrize("b,s,delta", [(0, 10, 0.1), (7, 500, 0.05), (300, 2000, 1e-3), (4.58, 64, 0.5)])
def test_bound_makes_the_union_of_hoeffding_tails_equal_delta(b, s, delta):
    t = generalization_gap_bound(b, s, delta)
    assert 2 ** b * 2 * math.exp(-2 * s * t * t) == pytest.approx(delta, rel=1e-9)


def test_bound_grows_with_bits_and_shrinks_with_examples():
    assert generalization_gap_bound(30, 2000, 0.05) < generalization_gap_bound(100, 2000, 0.05)
    assert generalization_gap_bound(100, 4000, 0.05) < generalization_gap_bound(100, 2000, 0.05)


def test_ranking_bits_are_log2_factorial():
    assert ranking_bits(1) == 0.0
    assert ranking_bits(2) == pytest.approx(1.0)
    assert ranking_bits(4) == pytest.approx(math.log2(24))
    assert ranking_bits(8) == pytest.approx(math.log2(40320))
    assert released_bits(5, "ranking", 4) == pytest.approx(5 * math.log2(24))
    assert released_bits(30) == 30.0
    assert bits_mi_bound(3) == pytest.approx(3 * math.log(2))


@pytest.mark.parametrize("call,name", [
    (lambda: generalization_gap_bound(1, 100, 0.0), "delta"),
    (lambda: generalization_gap_bound(1, 100, 1.0), "delta"),
    (lambda: generalization_gap_bound(-1, 100, 0.1), "bits"),
    (lambda: generalization_gap_bound(1, 0, 0.1), "n_examples"),
    (lambda: ranking_bits(0), "population"),
    (lambda: released_bits(3, "pairs"), "comparison"),
])
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ConfigError) as e:
        call()
    assert str(e.value).startswith(name + ":")
