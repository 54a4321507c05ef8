"""The privacy ledger: the one writer of `privacy.json`.

A charge is written atomically (temp file + fsync + rename) *before* the released value is applied, and is keyed by
step, so a crash at any instant never loses a charge and a resumed run that recomputes a step never pays twice.

Only a method that charges a budget in nats (PACZero) has `budget` and `spent` in privacy.json (its ledger_fields put
them there); for every other method a `spent: 0.0` would read as "nothing spent" next to, say, ε = 2. DP methods
report what they have spent as `epsilon_spent` instead. Every field is documented in docs/privacy_json.md.
"""

from __future__ import annotations

import json

from .. import atomic as A
from ..errors import BudgetError, PrivtuneError
from .rundir import RunDir

BUDGET_SLACK = 1e-12  # float round-off allowed when the last step spends exactly what remains


class Ledger:
    def __init__(self, run: RunDir, state: dict):
        self.path = run.privacy
        self.state = state

    @classmethod
    def create(cls, run: RunDir, **fields) -> "Ledger":
        state = {"steps_done": 0, "last_charged_step": -1, **fields}
        led = cls(run, state)
        led._write()
        return led

    @classmethod
    def open(cls, run: RunDir) -> "Ledger":
        path = run.privacy
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PrivtuneError(f"{path}: unreadable privacy ledger ({type(e).__name__})") from None
        return cls(run, state)

    @property
    def budget(self) -> float | None:
        return self.state.get("budget")

    @property
    def spent(self) -> float:
        """Nats charged so far (0 for a ledger without a nats budget)."""
        return float(self.state.get("spent", 0.0))

    def remaining(self) -> float:
        b = self.budget
        return float("inf") if b is None else max(float(b) - self.spent, 0.0)

    def exhausted(self) -> bool:
        b = self.budget
        return b is not None and self.spent >= float(b) - BUDGET_SLACK and self.state.get("steps_total", 0) > self.state["steps_done"]

    def charge(self, step: int, amount: float, summary=None, **counters) -> None:
        """Record step `step`'s cost. Idempotent: a step already charged (a recomputation after resume) pays nothing.
        `summary(state)` gives the derived fields (MI, posterior bound, ...) written in the same atomic write."""
        if step <= int(self.state["last_charged_step"]):
            return
        if step != int(self.state["last_charged_step"]) + 1:
            raise PrivtuneError(f"{self.path}: charge for step {step} but last charged step is {self.state['last_charged_step']}")
        b = self.budget
        if b is not None and self.spent + amount > float(b) + BUDGET_SLACK:
            raise BudgetError(f"privacy budget: step {step} would spend {amount:.6g} with {self.remaining():.6g} nats left of {b}")
        if "spent" in self.state:
            self.state["spent"] = self.spent + float(amount)
        elif amount != 0.0:  # a method that charges nats must declare its `spent` field in ledger_fields
            raise PrivtuneError(f"{self.path}: step {step} charges {amount:.6g} nats but this ledger keeps no nats budget")
        self.state["last_charged_step"] = step
        self.state["steps_done"] = step + 1
        for k, v in counters.items():
            self.state[k] = self.state.get(k, 0) + v
        if summary is not None:
            self.state.update(summary(self.state))
        self._write()

    def update(self, **fields) -> None:
        self.state.update(fields)
        self._write()

    def _write(self) -> None:
        A.atomic_write_json(self.path, self.state)
