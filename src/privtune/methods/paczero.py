"""PACZero (arXiv 2605.06505, "PAC-Private Fine-Tuning of Language Models via Sign Quantization").

A pool of N examples, M candidate subsets in a balanced design (every example in exactly M/2 subsets, so the prior
membership of each example is ½), and a secret index J ~ Uniform[M]; the model is trained on S_J. Each step:
per-example ZO scalars for all N examples (two batched passes over the union, from the shared engine), clipped to
[−c, c]; subset means G_m; signs s_m (0 → +1).
  ZPL (I = 0): all M signs equal → release the common sign, else a fair coin from a public RNG.
  MI (budget B nats): q₊ = Σ p_m [s_m = +1] under the posterior p; q₊ ∈ {0,1} → release s_J free; else
  R = s_J + N(0, σ²) with I(S; R) = β_t, release sign(R), update p_m ∝ p_m·exp(−(s_m − R)²/2σ²), charge β_t.
θ ← θ − η_t(Y·z + λθ). J and the per-subset statistics never leave this object: the transcript holds only the public
step seed, the released sign, the public σ and whether the step was unanimous.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from .. import dist
from ..config import PosFloat, PosInt
from ..errors import ConfigError, TrainingDiverged
from ..privacy import bounds, pac
from ..zo.seeds import derive_seed, direction_seed
from ..zo.sums import pair_sums, zo_scalars
from .base import SECRET_SUBSET, TIMING_RESIDUAL, Method, Release, ZOCfg, register
from .budget import NatsBudget


class Config(ZOCfg):
    name: Literal["paczero"] = "paczero"
    unused: ClassVar[tuple[str, ...]] = ("batch_size",)  # every step uses the whole pool
    mode: Literal["zpl", "mi"] = "zpl"
    subsets: PosInt = 128  # M (even)
    clip: PosFloat = 25.0  # c: per-example scalar clipped to [−c, c]
    budget: PosFloat | None = Field(default=None, description="total MI budget in nats (mode mi)")
    allocation: Literal["adaptive", "uniform"] = "adaptive"
    lr: PosFloat = 1e-3
    eps: PosFloat = 1e-2

    @model_validator(mode="after")
    def _check(self):
        if self.subsets < 2 or self.subsets % 2:
            raise ValueError(f"method.subsets: must be an even number >= 2, got {self.subsets}")
        if self.mode == "mi" and self.budget is None:
            raise ValueError("method.budget: required (nats) when method.mode is mi")
        return self


def balanced_design(n: int, m: int, seed: int) -> np.ndarray:
    """Membership matrix [n, m] (bool): each example in exactly m/2 subsets, chosen uniformly (public seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    keys = rng.random((n, m))
    cols = np.argsort(keys, axis=1, kind="stable")[:, : m // 2]
    member = np.zeros((n, m), dtype=bool)
    np.put_along_axis(member, cols, True, axis=1)
    return member


def subset_means(g: np.ndarray, member: np.ndarray) -> np.ndarray:
    """G_m = mean of g_i over the examples of subset m, for all m at once (float64, fixed summation order)."""
    counts = member.sum(axis=0).astype(np.float64)
    if np.any(counts == 0):
        raise ConfigError("task.pool_size: too small for method.subsets (a subset is empty)")
    return (member.astype(np.float64).T @ g) / counts


def subset_rows(g: np.ndarray, member: np.ndarray, clip: float) -> np.ndarray:
    """Per example: clip_c(g_i) in the columns of its subsets (0 elsewhere), then 1 if g_i is NaN/inf. Summed over
    examples (zo.sums.chunk_sums) this gives every subset's sum of clipped scalars and the count of bad scalars."""
    rows = np.where(member, np.clip(g, -clip, clip)[:, None], 0.0)
    return np.column_stack([rows, ~np.isfinite(g)])


def signs_of(G: np.ndarray) -> np.ndarray:
    return np.where(G >= 0, 1, -1).astype(np.int8)  # sign with 0 → +1


def secret_index(cfg: Config, secret) -> int:
    """J ~ Uniform[M], drawn from the run's secret key (tag "subset"): the one derivation, used by the run and by
    the audit of a run trained with a known secret."""
    return int(secret.numpy("subset").integers(cfg.subsets))


class PACZero(Method):
    name = "paczero"
    display = "PACZero"
    needs_secret = True
    threat_model = SECRET_SUBSET

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)
        if secret is None:
            raise ConfigError("method: paczero needs a secret key (run it through privtune.train)")
        self.guarantee = "pac-zpl" if cfg.mode == "zpl" else "pac-mi"
        if cfg.subsets > len(pool):  # the design is a [pool, subsets] matrix: bound it by the pool
            raise ConfigError(f"method.subsets: {cfg.subsets} is more than the {len(pool)} examples of the pool "
                              "(task.pool_size)")
        self.member = balanced_design(len(pool), cfg.subsets, run_seed)
        subset_means(np.zeros(len(pool)), self.member)  # fail early on empty subsets
        self.counts = self.member.sum(axis=0).astype(np.float64)
        # J: never written anywhere, and under torchrun held by rank 0 only (the others never see the key)
        self._secret_index = secret_index(cfg, secret) if dist.is_main() else None
        self.posterior = np.full(cfg.subsets, 1.0 / cfg.subsets)
        # the run's one running total of nats spent (ZPL: a budget of none); the ledger persists it
        self.budget = NatsBudget(cfg.budget if cfg.mode == "mi" else None, total_steps, cfg.allocation)

    def __repr__(self) -> str:
        return f"PACZero(mode={self.cfg.mode}, M={self.cfg.subsets})"

    # ------------------------------------------------------------------------------------------------ the step
    def step(self, t: int) -> Release:
        snapshot = (self.posterior.copy(), self.budget.spent)
        try:
            return self._step(t)
        except BaseException:
            self.posterior, self.budget.spent = snapshot  # a failed step leaves no trace in the mechanism's state
            raise

    def _step(self, t: int) -> Release:
        cfg, K = self.cfg, self.cfg.directions
        updates, released, unanimous, sigmas = [], [], [], []
        charge = 0.0
        self._charged_now = []
        if cfg.mode == "mi":
            self._beta_step = self.budget.allowance(t)
        for k in range(K):
            seed = direction_seed(self.run_seed, t, k)
            rows = lambda lp, lm, ex: subset_rows(zo_scalars(lp, lm, cfg.eps).numpy(), self.member[ex], cfg.clip)
            sums = pair_sums(self.engine, self.pool, None, seed, cfg.eps, rows, cfg.subsets + 1)
            if sums[-1] > 0:
                raise TrainingDiverged(f"training: loss is NaN/inf at step {t}")
            s = signs_of(sums[:-1] / self.counts)  # subset means of the clipped scalars, summed in chunk order
            # the release reads J (and, for MI, the noise and the posterior): rank 0 computes it, all ranks get it
            y, free, sigma, cost = dist.from_main(lambda: (self._zpl if cfg.mode == "zpl" else self._mi)(s, t, k))
            charge += cost
            self._charged_now.append(cost)
            updates.append((seed, y / K))
            released.append(y)
            unanimous.append(free)
            sigmas.append(sigma)
        self.budget.charge(t, charge)
        n_free = sum(unanimous)
        counters = {"directions": K, "unanimous": n_free,
                    ("coin_flips" if cfg.mode == "zpl" else "noisy_releases"): K - n_free}
        public = {"sign": released, "unanimous": unanimous}
        if cfg.mode == "mi":
            public["sigma"] = sigmas
            public["charged_nats"] = charge
        return Release(updates=updates, public=public, charge=charge, counters=counters)

    def _zpl(self, s: np.ndarray, t: int, k: int):
        if pac.is_unanimous_zpl(s):
            return int(s[self._secret_index]), True, 0.0, 0.0  # every J gives this same sign: I = 0
        return self._coin(t, k), False, 0.0, 0.0

    def _coin(self, t: int, k: int) -> int:
        """A fair ±1 coin from a public RNG (run seed, step, direction): independent of the data and of J."""
        rng = np.random.default_rng(np.random.SeedSequence([derive_seed(self.run_seed, 3, t, k)]))
        return 1 if rng.random() < 0.5 else -1

    def _mi(self, s: np.ndarray, t: int, k: int):
        cfg, K = self.cfg, self.cfg.directions
        # tol = 0: free only if every subset with posterior mass > 0.0 agrees; a mass that underflowed to 0.0
        # (< 5e-324) counts as ruled out, leaving at most H(5e-324) ≈ 4e-321 nats a step uncharged (not strictly
        # conservative, but below any budget's float resolution)
        if pac.is_unanimous_mi(self.posterior, s):
            return int(s[self._secret_index]), True, 0.0, 0.0  # q₊ ∈ {0,1}: the release is known in advance
        q = pac.q_plus(self.posterior, s)
        beta = (self._beta_step - sum(self._charged_now)) / (K - k)  # this direction's share of β_t
        h = pac.bernoulli_entropy(q)
        if h <= beta:
            # Releasing s_J itself leaks exactly H(q₊) ≤ β_t (entropy ceiling, I(S;S) = H(S)): no noise needed.
            # This happens once the posterior is nearly sure of the sign (q₊ within float reach of 0 or 1).
            y = int(s[self._secret_index])
            self.posterior = np.where(s == y, self.posterior, 0.0)
            self.posterior /= self.posterior.sum()
            return y, False, 0.0, h
        if beta <= 0.0:
            raise self.budget.refuse(t)
        beta = pac.cap_budget(beta, q)
        sigma = pac.calibrate_sigma(q, beta)
        noise = float(self.secret.numpy("noise", t * K + k).standard_normal())
        r = float(s[self._secret_index]) + sigma * noise
        self.posterior = pac.posterior_update(self.posterior, s, r, sigma)
        return (1 if r >= 0 else -1), False, sigma, beta

    # ------------------------------------------------------------------------------------------ ledger / state
    def ledger_fields(self) -> dict:
        budget = self.cfg.budget if self.cfg.mode == "mi" else None  # ZPL: I = 0, no budget to spend
        # `budget` / `spent` (nats): the ledger persists self.budget's here; mi_budget_nats / mi_spent_nats say the unit
        return {"method": self.name, "guarantee": self.guarantee, "mode": self.cfg.mode,
                "budget": budget, "spent": 0.0, "mi_budget_nats": budget,
                "pool_size": len(self.pool), "subsets": self.cfg.subsets, "clip": self.cfg.clip,
                "allocation": self.cfg.allocation if self.cfg.mode == "mi" else None,
                **self.summary({"spent": 0.0})}

    def summary(self, state: dict) -> dict:
        mi = 0.0 if self.cfg.mode == "zpl" else float(state.get("spent", 0.0))
        post = bounds.mi_to_posterior(mi)
        n = max(int(state.get("directions", 0)), 1)
        out = {"guarantee": self.guarantee, "mi_nats": mi, "mi_spent_nats": float(state.get("spent", 0.0)),
               "epsilon": None, "delta": None,
               "epsilon_matched": bounds.posterior_to_eps(post) if post < 1.0 else math.inf,
               "mia_posterior_bound": post,
               "unanimity_rate": float(state.get("unanimous", 0)) / n if "directions" in state else None,
               "assumptions": ("PAC privacy of the secret subset index J among M balanced subsets of the pool "
                               "(membership prior 1/2); MI bounds the attacker's posterior on membership; "
                               f"ε is given only as the DP ε with the same posterior bound; {TIMING_RESIDUAL}")}
        return out

    def spending(self) -> dict:
        return self.budget.fields()

    def private_state(self) -> dict:
        return {"posterior": self.posterior.copy(), "spent": self.budget.spent}

    def load_private_state(self, state: dict) -> None:
        if state:
            self.posterior = np.asarray(state["posterior"], dtype=np.float64)
            self.budget.spent = float(state["spent"])

    # ------------------------------------------------------------------------------------- audit / report
    @classmethod
    def secret_subset(cls, cfg, run_seed: int, n_pool: int, secret):
        return balanced_design(n_pool, cfg.subsets, run_seed), secret_index(cfg, secret)

    @classmethod
    def mechanisms(cls) -> dict[str, tuple[str, str]]:
        return {"paczero-zpl": ("PACZero-ZPL", "pac-zpl"), "paczero-mi": ("PACZero-MI", "pac-mi")}

    @classmethod
    def mechanism_of(cls, method_cfg: dict) -> str:
        return f"paczero-{method_cfg.get('mode', 'zpl')}"

    @classmethod
    def label_of(cls, method_cfg: dict) -> str:
        return "PACZero-" + ("ZPL" if method_cfg.get("mode") == "zpl" else f"MI {method_cfg.get('budget')} nats")


register(Config, PACZero)
