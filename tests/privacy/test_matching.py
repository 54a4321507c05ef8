"""Matched budgets: exact values pinned with mpmath, rounding never in PACZero's favour, every shipped claim checked."""

import re
from pathlib import Path

import pytest
from conftest import load_bench

from privtune import methods as M
from privtune.errors import ConfigError
from privtune.privacy import bounds as B
from privtune.privacy import matched_budget, matched_mi

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
# the claim a PACZero-MI config carries on its budget line, e.g. "budget: 0.3278   # matched: epsilon=2, delta=1e-5"
CLAIM = re.compile(r"^\s*budget:\s*([0-9.eE+-]+)\s*#\s*matched:\s*epsilon=([0-9.eE+-]+),\s*delta=([0-9.eE+-]+)",
                   re.MULTILINE)
# any MI written in a config's prose: "0.3278 nats", "a 0.3278-nat budget"
NATS = re.compile(r"(\d+\.\d+)[\s-]*nats?\b")


def test_matched_mi_pinned():
    # p = (e^ε + δ)/(1 + e^ε), I = p·ln 2p + (1−p)·ln 2(1−p), with mpmath at 30 digits
    assert matched_mi(2.0, 1e-5) == pytest.approx(0.327815709537944927, abs=1e-15)
    assert matched_mi(6.0, 1e-5) == pytest.approx(0.675835904839919550, abs=1e-15)
    assert matched_mi(2.0) == pytest.approx(0.327813325472737701, abs=1e-15)


@pytest.mark.parametrize("eps, want", [(2.0, 0.3278), (6.0, 0.6758)])
def test_matched_budget_rounds_down_never_above_the_match(eps, want):
    budget = matched_budget(eps, 1e-5)
    assert budget == want
    assert budget <= matched_mi(eps, 1e-5) < budget + 1e-4
    assert B.mi_to_posterior(budget) <= B.eps_to_posterior(eps, 1e-5)


def test_rounding_to_nearest_favoured_paczero():
    # the old budgets: 0.33 nats allows posterior 0.8819 > 0.8808 (ε = 2); 0.68 allows 0.9982 > 0.9975 (ε = 6)
    assert B.mi_to_posterior(0.33) > B.eps_to_posterior(2.0, 1e-5) + 1e-3
    assert B.mi_to_posterior(0.68) > B.eps_to_posterior(6.0, 1e-5) + 5e-4


def test_matched_budget_edges():
    assert matched_budget(0.0) == 0.0
    assert matched_budget(2.0, 1e-5, decimals=2) == 0.32  # not 0.33
    assert matched_budget(6.0, 1e-5, decimals=1) == 0.6
    for eps in [0.1 * k for k in range(1, 80)]:  # never above the match, whatever ε
        assert matched_budget(eps, 1e-5) <= matched_mi(eps, 1e-5)
    with pytest.raises(ConfigError, match="^decimals:"):
        matched_budget(2.0, 1e-5, decimals=-1)
    with pytest.raises(ConfigError, match="^epsilon:"):
        matched_budget(-1.0)


def _mi_configs():
    out = []
    for path in CONFIGS:
        cfg = M.load_config(path)
        if cfg.method.name == "paczero" and cfg.method.mode == "mi":
            out.append(path)
    return out


def test_every_shipped_mi_config_states_its_match():
    assert len(_mi_configs()) >= 4  # tiny, sst2, paper lora, paper full


@pytest.mark.parametrize("path", _mi_configs(), ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_mi_budget_is_the_rounded_down_match_it_claims(path):
    text = path.read_text(encoding="utf-8")
    claims = CLAIM.findall(text)
    assert len(claims) == 1, f"{path.name}: the budget line must say '# matched: epsilon=E, delta=D'"
    written, eps, delta = (float(v) for v in claims[0])
    budget = M.load_config(path).method.budget
    assert budget == written == matched_budget(eps, delta)
    assert B.mi_to_posterior(budget) <= B.eps_to_posterior(eps, delta)  # not in PACZero's favour


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_mi_named_in_a_config_is_a_rounded_down_match(path):
    allowed = {matched_budget(eps, 1e-5) for eps in (2.0, 6.0)}
    for value in NATS.findall(path.read_text(encoding="utf-8")):
        assert float(value) in allowed, f"{path.name}: {value} nats is not the rounded-down match of ε = 2 or 6"


def test_benchmark_budgets_are_the_matches():
    bench = load_bench("privacy_table_sst2")
    assert bench.DELTA == M.load_config(REPO / "configs" / "sst2_dpzero.yaml").method.delta
    for name, eps in [("mi_e2", 2.0), ("mi_e6", 6.0)]:
        path, overrides = bench.METHODS[name]
        assert M.load_config(REPO / path, overrides).method.budget == matched_budget(eps, bench.DELTA)
