"""Method registry: one file per mechanism, each a config class + a `Method` subclass that says what is different.

A method's `step(t)` returns a `Release`: the updates (direction seed, coefficient) to apply as
θ ← θ − lr·(Σ_k c_k z_k + λθ), the public values released at this step, and the privacy cost to charge first.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

_MODULES = ["mezo", "paczero", "dpzero", "dpzo", "dpsgd", "bboxer"]

# A method with a secret (needs_secret) may do secret-dependent work per step (a Poisson batch's size is hidden, its
# compute time is not), so the training loop (privtune.run.loop) writes no per-step wall time or traffic for it; the total stays. Its
# privacy.json assumptions end with this clause.
TIMING_RESIDUAL = ("no per-step timing or traffic is released; the run's total wall time (eval.json wall_time_s) "
                   "is, and it is not covered: it can reveal the run's total work (e.g. the summed Poisson batch "
                   "sizes)")


@dataclass
class Release:
    updates: list[tuple[int, float]]
    public: dict = field(default_factory=dict)  # released values → transcript and metrics
    charge: float = 0.0  # privacy cost of this step, charged to the ledger before the update is applied
    counters: dict = field(default_factory=dict)  # ledger counters (e.g. unanimous steps, coin flips)
    monitor: dict = field(default_factory=dict)  # monitoring values a non-private method may log (never per-example)


class Method:
    """Base class. Subclasses set `name`, `guarantee`, and implement `step`."""

    name = "base"
    guarantee = "none"
    needs_secret = False  # True: the recipe hands the method a SecretKey (privtune.run.keystore) as `secret`

    def __init__(self, cfg, engine, pool, run_seed: int, total_steps: int, secret=None):
        self.cfg, self.engine, self.pool = cfg, engine, pool
        self.run_seed, self.total_steps, self.secret = int(run_seed), int(total_steps), secret

    def step(self, t: int) -> Release:  # pragma: no cover - interface
        raise NotImplementedError

    def ledger_fields(self) -> dict:
        """Initial privacy.json fields (guarantee type, parameters, assumptions). A method that charges a budget in
        nats (PACZero) puts `budget` and `spent` here; the ledger charges only those (docs/privacy_json.md)."""
        return {"method": self.name, "guarantee": self.guarantee}

    def summary(self, ledger_state: dict) -> dict:
        """privacy.json fields every method reports on one axis: guarantee, mi_nats, epsilon, delta,
        mia_posterior_bound and the assumptions. A method with no guarantee says so rather than nothing."""
        return {"guarantee": self.guarantee, "mi_nats": None, "epsilon": None, "delta": None,
                "mia_posterior_bound": None, "assumptions": "no privacy guarantee"}

    def final_fields(self, final_eval: dict) -> dict:
        """Extra privacy.json fields once the run is done, given the final eval (e.g. an observed train − eval gap)."""
        return {}

    def apply(self, rel: Release, lr: float, weight_decay: float) -> None:
        """Apply a release to θ (after it was charged and written to the transcript). ZO methods move θ along their
        seeded directions; a method whose update is not a sum of directions (DP-SGD, BBoxER) overrides this."""
        self.engine.apply_update(rel.updates, lr, weight_decay)

    def resume(self, step: int, transcript: list[dict]) -> None:
        """Called on resume once θ is back at checkpoint `step`, with the transcript lines of steps < `step`, so a
        method with public state (an optimizer driven only by released bits) can rebuild it. ZO methods have none."""

    @classmethod
    def replay(cls, cfg, setup, lines: list[dict], callback=None) -> None:
        """Rebuild θ from the transcript alone (`privtune replay`): a ZO step is its public seeds and released
        coefficients. A method whose release does not determine its update overrides this to say so."""
        for n, line in enumerate(lines):
            setup.engine.apply_update([(int(s), float(c)) for s, c in line["updates"]], float(line["lr"]),
                                      cfg.method.weight_decay)
            if callback:
                callback({"event": "step", "step": n + 1, "steps": len(lines)})

    def private_state(self) -> dict:
        """State that must survive a resume but never enters the run dir (e.g. a posterior over secret subsets)."""
        return {}

    def load_private_state(self, state: dict) -> None:
        pass


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def config_classes():
    return [_module(m).Config for m in _MODULES]


def method_class(name: str) -> type[Method]:
    for m in _MODULES:
        mod = _module(m)
        if mod.Config.model_fields["name"].default == name:
            return mod.METHOD
    raise KeyError(name)
