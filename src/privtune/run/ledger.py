"""The privacy ledger: the one writer of `privacy.json`.

A charge is written atomically (temp file + fsync + rename) *before* the released value is applied, and is keyed by
step, so a crash at any instant never loses a charge and a resumed run that recomputes a step never pays twice.

The ledger tracks no spending of its own: at each charge it persists the method's accountant fields
(Method.spending(), e.g. PACZero's `spent` nats from methods.budget.NatsBudget, which alone refuses an overspend).
Only a method that spends a budget in nats (PACZero) has `budget` and `spent` in privacy.json (its ledger_fields put
them there); for every other method a `spent: 0.0` would read as "nothing spent" next to, say, ε = 2. DP methods
report what they have spent as `epsilon_spent` instead. Every field is documented in docs/privacy_json.md.
"""

from __future__ import annotations

import json

from .. import atomic as A
from ..errors import PrivtuneError
from ..privacy import pac
from .rundir import RunDir


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

    def exhausted(self) -> bool:
        """The persisted budget is used up while steps remain: a resume must not go on."""
        b = self.state.get("budget")
        return (b is not None and pac.exhausted(b, float(self.state.get("spent", 0.0)))
                and self.state.get("steps_total", 0) > self.state["steps_done"])

    def charge(self, step: int, spending: dict, summary=None, **counters) -> None:
        """Record step `step`: `spending` is the method's accountant after it (Method.spending()). Idempotent: a step
        already charged (a recomputation after resume) writes nothing. `summary(state)` gives the derived fields (MI,
        posterior bound, ...) written in the same atomic write."""
        if step <= int(self.state["last_charged_step"]):
            return
        if step != int(self.state["last_charged_step"]) + 1:
            raise PrivtuneError(f"{self.path}: charge for step {step} but last charged step is {self.state['last_charged_step']}")
        undeclared = sorted(set(spending) - set(self.state))
        if undeclared:  # a method that spends a budget must declare its fields in ledger_fields
            raise PrivtuneError(f"{self.path}: step {step} charges {undeclared} but this ledger keeps no such field")
        self.state.update(spending)
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
