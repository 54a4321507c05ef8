"""A run's budget in nats (PACZero): the one object that knows how much of the guarantee is spent.

The method asks it for each step's allowance β_t and charges it what the step's releases cost; it is the only
running total and the only place that refuses to overspend. The ledger persists `fields()` at every charge
(privacy.json `spent`) and adds nothing of its own; a resume restores `spent` with the checkpoint's private state, so
the steps recomputed after it are allotted exactly what they were the first time.
"""

from __future__ import annotations

from ..errors import BudgetError
from ..privacy import pac


class NatsBudget:
    def __init__(self, total: float | None, steps_total: int, allocation: str):
        self.total = total  # None: nothing may be spent (PACZero-ZPL, I = 0)
        self.steps_total, self.allocation = int(steps_total), allocation
        self.spent = 0.0

    def allowance(self, step: int) -> float:
        """β_t for step `step`: what it may spend at most (privacy.pac.step_budget keeps spent + β_t ≤ B exactly)."""
        return pac.step_budget(self.total, self.spent, self.steps_total, step, self.allocation)

    def remaining(self) -> float:
        return float("inf") if self.total is None else max(float(self.total) - self.spent, 0.0)

    def refuse(self, step: int) -> BudgetError:
        """The error of a step that must release something costly with nothing left to pay for it."""
        return BudgetError(f"privacy budget: spent at step {step}; the run stops here")

    def charge(self, step: int, amount: float) -> None:
        """Add step `step`'s cost; a charge over the budget is refused and leaves the total as it was."""
        if self.total is None:
            if amount != 0.0:
                raise BudgetError(f"privacy budget: step {step} would spend {amount:.6g} nats of a zero budget")
        elif pac.overspends(self.total, self.spent, amount):
            raise BudgetError(f"privacy budget: step {step} would spend {amount:.6g} with {self.remaining():.6g} "
                              f"nats left of {self.total}")
        self.spent = self.spent + float(amount)

    def fields(self) -> dict:
        """What the ledger persists (privacy.json)."""
        return {"spent": self.spent}
