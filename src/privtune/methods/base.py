"""What every method is: a config section, a `Method` that says what is different, and one `register` call.

A method's `step(t)` returns a `Release`: the updates (direction seed, coefficient) to apply as
θ ← θ − lr·(Σ_k c_k z_k + λθ), the public values released at this step, and the privacy cost it charged. The recipe
(privtune.run.loop) charges the ledger, appends the transcript, then applies the release, in that order.

Shared code asks a method class, never a method name, for what differs between methods: whether it holds a secret,
whether it runs under torchrun, the membership game its guarantee covers (the audit), the secret subset a known
secret selects (the audit), its display name, frontier line and frontier role (the report), the learning rate it
records, and how its guarantee reads in the summary line at the end of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .. import dist
from ..config import MethodCfg, NonNegFloat, PosFloat, PosInt, TaskCfg

# A method with a secret (needs_secret) may do secret-dependent work per step (a Poisson batch's size is hidden, its
# compute time is not), so the training loop (privtune.run.loop) writes no per-step wall time or traffic for it; the total stays. Its
# privacy.json assumptions end with this clause.
TIMING_RESIDUAL = ("no per-step timing or traffic is released; the run's total wall time (eval.json wall_time_s) "
                   "is, and it is not covered: it can reveal the run's total work (e.g. the summed Poisson batch "
                   "sizes)")

POOL_VS_HELDOUT = "pool-vs-heldout"  # the training pool against held-out examples of the same distribution
SECRET_SUBSET = "secret-subset"  # the secret subset S_J against the rest of the pool (PAC privacy of J)

MAX_STEP_SCALE = 1e4  # cap on method.lr, eps, weight_decay: far above any useful value, below float16's max 65504


# ------------------------------------------------------------------------------------------------ config pieces
class StepCfg(MethodCfg):
    """Fields of a method that moves θ by a learning rate."""

    lr: PosFloat = 1e-6
    weight_decay: NonNegFloat = 0.0
    lr_schedule: Literal["constant", "linear", "polynomial"] = "constant"
    lr_power: PosFloat = 2.0  # for polynomial decay

    @model_validator(mode="after")
    def _fits_the_model(self):
        for key in ("lr", "eps", "weight_decay"):  # scalar factors on θ: each must fit the model's dtype
            if key in type(self).model_fields and getattr(self, key) > MAX_STEP_SCALE:
                raise ValueError(f"method.{key}: {getattr(self, key):g} is above {MAX_STEP_SCALE:g} (it would "
                                 "overflow the model's floats)")
        return self

    def lr_at(self, t: int, steps: int) -> float:
        """Learning rate at step t: constant, linear or polynomial decay to 0 at `steps`."""
        frac = 1.0 - t / steps
        if self.lr_schedule == "linear":
            return self.lr * frac
        if self.lr_schedule == "polynomial":
            return self.lr * frac ** self.lr_power
        return self.lr


class BatchCfg(MethodCfg):
    """A method that trains on batches drawn from the pool."""

    batch_size: PosInt = 16

    def check_task(self, task: TaskCfg) -> None:
        super().check_task(task)
        if self.batch_size > task.pool_size:  # the one check: every batch is drawn from the task.pool_size pool
            raise ValueError(f"method.batch_size: {self.batch_size} is larger than task.pool_size {task.pool_size}")


class ZOCfg(StepCfg):
    """Fields of a zeroth-order (two-point) step."""

    eps: PosFloat = 1e-3
    directions: PosInt = 1  # K directions per step


Delta = Annotated[float, Field(gt=0, lt=1)]


# ---------------------------------------------------------------------------------------------------- release
@dataclass
class Release:
    updates: list[tuple[int, float]]
    public: dict = field(default_factory=dict)  # released values → transcript and metrics
    charge: float = 0.0  # privacy cost of this step (already charged to the method's accountant, see spending())
    counters: dict = field(default_factory=dict)  # ledger counters (e.g. unanimous steps, coin flips)
    monitor: dict = field(default_factory=dict)  # monitoring values a non-private method may log (never per-example)


# ----------------------------------------------------------------------------------------------------- method
class Method:
    """Base class. Subclasses set `name`, `guarantee`, and implement `step`; `register` makes them known."""

    name = "base"
    display = "base"  # how reports name it
    guarantee = "none"
    needs_secret = False  # True: the recipe hands the method a SecretKey (privtune.run.keystore) as `secret`
    multi_process = True  # False: its step is not sharded, so a torchrun launch is refused
    threat_model = POOL_VS_HELDOUT  # the membership game its guarantee covers (what privtune audit checks)
    # How the report draws its frontier lines: None, a point per privacy level; "ceiling", a horizontal line above
    # the others (the non-private reference a user would otherwise run, fo).
    frontier_role: ClassVar[str | None] = None

    def __init__(self, cfg, engine, pool, run_seed: int, total_steps: int, secret=None):
        if not self.multi_process:
            dist.require_single(self.name)
        self.cfg, self.engine, self.pool = cfg, engine, pool
        self.run_seed, self.total_steps, self.secret = int(run_seed), int(total_steps), secret

    def step(self, t: int) -> Release:  # pragma: no cover - interface
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        """The learning rate of step t (recorded in the transcript and passed to apply)."""
        return self.cfg.lr_at(t, self.total_steps)

    def ledger_fields(self) -> dict:
        """Initial privacy.json fields (guarantee type, parameters, assumptions). A method that spends a budget in
        nats (PACZero) puts `budget` and `spent` here; the ledger then persists spending() (docs/privacy_json.md)."""
        return {"method": self.name, "guarantee": self.guarantee}

    def spending(self) -> dict:
        """The ledger fields of the run's accountant after the steps taken so far (e.g. {"spent": nats}); the ledger
        writes them at every charge and tracks nothing itself. A method without a budget has none."""
        return {}

    def summary(self, ledger_state: dict) -> dict:
        """privacy.json fields every method reports on one axis: guarantee, mi_nats, epsilon, delta,
        mia_posterior_bound and the assumptions. A method with no guarantee says so rather than nothing."""
        return {"guarantee": self.guarantee, "mi_nats": None, "epsilon": None, "delta": None,
                "mia_posterior_bound": None, "assumptions": "no privacy guarantee"}

    def final_fields(self, final_eval: dict) -> dict:
        """Extra privacy.json fields once the run is done, given the final eval (e.g. an observed train − eval gap)."""
        return {}

    def apply(self, rel: Release, lr: float) -> None:
        """Apply a release to θ (after it was charged and written to the transcript). ZO methods move θ along their
        seeded directions; a method whose update is not a sum of directions (DP-SGD, BBoxER) overrides this."""
        self.engine.apply_update(rel.updates, lr, self.cfg.weight_decay)

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

    # ------------------------------------------------------------------ hooks for the audit and the report
    @classmethod
    def secret_subset(cls, cfg, run_seed: int, n_pool: int, secret):
        """Audit mode (threat_model SECRET_SUBSET): (the public design [n_pool, M] of candidate subsets, the index J
        that `secret` selects), derived exactly as a training run derives them. None for other methods."""
        return None

    @classmethod
    def mechanisms(cls) -> dict[str, tuple[str, str]]:
        """Frontier lines this method draws: mechanism id → (display name, guarantee) (report sweep rows use the ids)."""
        return {cls.name: (cls.display, cls.guarantee)}

    @classmethod
    def mechanism_of(cls, method_cfg: dict) -> str:
        """The frontier line of a run with this config section (a dict from its config.yaml)."""
        return cls.name

    @classmethod
    def guarantee_line(cls, privacy: dict) -> str:
        """The run's guarantee in a few words, from its privacy.json (the summary line at the end of privtune
        train): (ε, δ)-DP or PAC's MI bound, and the membership-inference posterior bound they imply."""
        if privacy.get("guarantee") in (None, "none"):
            return "no privacy guarantee"
        if privacy.get("epsilon") is not None:
            what = f"(ε={privacy['epsilon']:.3g}, δ={privacy.get('delta') or 0:g})-DP"
        elif privacy.get("mi_nats") is not None:
            what = f"PAC privacy, I ≤ {privacy['mi_nats']:.4g} nats"
        else:
            what = str(privacy["guarantee"])
        post = privacy.get("mia_posterior_bound")
        return what if post is None else f"{what}, MIA posterior ≤ {post:.3f}"

    @classmethod
    def label_of(cls, method_cfg: dict) -> str:
        """A run's short label in reports, from its config section."""
        if method_cfg.get("epsilon") is not None:
            return f"{method_cfg['name']} ε={method_cfg['epsilon']:g}"
        return str(method_cfg.get("name", "?"))


# --------------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, tuple[type[MethodCfg], type[Method]]] = {}


def register(config: type[MethodCfg], method: type[Method]) -> type[Method]:
    """Make a method known to the config schema, the recipe, the audit and the report (one call per method file)."""
    name = config.model_fields["name"].default
    if name != method.name:
        raise ValueError(f"register: config name {name!r} differs from the method's {method.name!r}")
    if name in _REGISTRY and _REGISTRY[name] != (config, method):
        raise ValueError(f"register: a method named {name!r} is already registered")
    _REGISTRY[name] = (config, method)
    return method


def config_classes() -> list[type[MethodCfg]]:
    """Every registered method's config class, in registration order (the first is the default method)."""
    return [cfg for cfg, _ in _REGISTRY.values()]


def method_classes() -> list[type[Method]]:
    return [m for _, m in _REGISTRY.values()]


def method_class(name: str) -> type[Method]:
    """The registered Method class called `name` (KeyError if none is)."""
    return _REGISTRY[name][1]
