"""methods.budget.NatsBudget: the one running total of a run's nats, and the one place that refuses an overspend."""

from __future__ import annotations

import json

import pytest

from privtune.errors import BudgetError, PrivtuneError
from privtune.methods.budget import NatsBudget
from privtune.privacy import pac
from privtune.run.ledger import Ledger
from privtune.run.rundir import RunDir


def test_allowance_follows_the_spending():
    b = NatsBudget(1.0, 4, "adaptive")
    assert b.allowance(0) == pac.step_budget(1.0, 0.0, 4, 0, "adaptive") == 0.25
    b.charge(0, 0.1)  # a step that spent less leaves more for the others (adaptive allocation)
    assert b.spent == 0.1 and b.allowance(1) == pac.step_budget(1.0, 0.1, 4, 1, "adaptive") == 0.9 / 3


def test_an_overspend_is_refused_and_leaves_the_total():
    b = NatsBudget(0.5, 10, "uniform")
    b.charge(0, 0.4)
    with pytest.raises(BudgetError, match=r"^privacy budget: step 1 would spend 0.2 with 0.1 nats left of 0.5$"):
        b.charge(1, 0.2)
    assert b.spent == 0.4
    b.charge(1, 0.1 + pac.BUDGET_SLACK / 2)  # float round-off on the last charge is allowed
    assert pac.exhausted(0.5, b.spent) and b.remaining() == 0.0
    assert "spent at step 7" in str(b.refuse(7))


def test_a_zero_budget_takes_no_charge():
    b = NatsBudget(None, 5, "adaptive")  # PACZero-ZPL: I = 0
    b.charge(0, 0.0)
    with pytest.raises(BudgetError):
        b.charge(1, 1e-9)
    assert b.fields() == {"spent": 0.0} and b.remaining() == float("inf")


def test_the_ledger_persists_the_accountant_and_adds_nothing(tmp_path):
    """The ledger writes the accountant's total as given (it used to keep a second running sum of the charges)."""
    led = Ledger.create(RunDir(tmp_path), steps_total=3, budget=1.0, spent=0.0, method="paczero")
    b = NatsBudget(1.0, 3, "adaptive")
    b.charge(0, 0.3)
    led.charge(0, b.fields(), unanimous=1)
    led.charge(0, {"spent": 99.0})  # a recomputed step after a resume: already charged, nothing is written
    state = json.loads(RunDir(tmp_path).privacy.read_text())
    assert state["spent"] == 0.3 and state["steps_done"] == 1 and state["unanimous"] == 1
    assert list(state) == ["steps_done", "last_charged_step", "steps_total", "budget", "spent", "method", "unanimous"]
    b.charge(1, 0.7)
    led.charge(1, b.fields())
    assert led.exhausted() and Ledger.open(RunDir(tmp_path)).state["spent"] == 1.0


def test_a_ledger_without_a_budget_refuses_spending_fields(tmp_path):
    led = Ledger.create(RunDir(tmp_path), method="dpzero")
    with pytest.raises(PrivtuneError, match=r"charges \['spent'\] but this ledger keeps no such field"):
        led.charge(0, {"spent": 0.1})
    led.charge(0, {})
    assert not led.exhausted()
