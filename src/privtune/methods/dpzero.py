"""DPZero (Zhang et al. 2024, "DPZero: Private Fine-Tuning of Language Models without Backpropagation",
arXiv 2310.09639, Alg. 1): MeZO made (ε, δ)-DP by privatizing the one data-dependent scalar.

Per step: a batch B_t; per example g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε (the shared engine, one pass per sign);
  ĝ = (1/B)·Σ_i clip_C(g_i) + (σC/B)·ξ,  ξ ~ N(0, 1) from the run's secret key;   θ ← θ − η(ĝ·z + λθ).
clip_C(x) = min(max(x, −C), C). Only ĝ is released (transcript "projected_grad"); per-example values, the batch
mean and the loss never leave this object. σ is calibrated once, for the whole run, by privtune.privacy.dp.

Noise scale. The noise std on the summed clipped scalars is σ·C, with C the add/remove-one sensitivity of that sum
(privacy/dp.py's convention; under sampling="fixed" the accountant itself charges the replace-one sensitivity 2C).
The reference code (Liang137/DPZero, opt/src/trainer.py) adds std 2·σ·C/B with σ from Opacus' Poisson calibration,
i.e. it charges the replace-one sensitivity 2C everywhere; here dp.py charges 2C under "fixed" and C under "poisson".
Sampling. "fixed": B distinct pool examples drawn uniformly without replacement from the secret key (who is in
the batch stays private, which the accountant's sampled-without-replacement event assumes), replace-one neighbours.
"poisson": each pool example joins step t's batch with probability q = B/N, drawn from the secret key; the sum is
divided by the expected batch size B (as Opacus does), so the noise std on ĝ is σC/B in both cases. At σ = 0 the
run claims nothing, and "fixed" keeps MeZO's public batch (privtune.data.sample_batch), so it is MeZO bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from .. import dist
from ..config import MethodCfg, PosFloat
from ..data import sample_batch
from ..errors import ConfigError, TrainingDiverged
from ..privacy import dp
from ..privacy.bounds import eps_to_posterior
from ..zo.seeds import direction_seed
from ..zo.sums import pair_sums, zo_scalars
from .base import TIMING_RESIDUAL, BatchCfg, Delta, Method, Release, ZOCfg, register

Clip = Annotated[float, Field(gt=0)]  # inf allowed (no clipping) only with noise_multiplier = 0


class DPCfg(MethodCfg):
    """The (ε, δ)-DP fields DPZero, DP-ZO and DP-SGD share: the budget, the clip, the accountant and the sampling."""

    epsilon: PosFloat | None = None  # target ε for the whole run (or give noise_multiplier)
    delta: Delta = 1e-5
    clip: Clip = 25.0  # C: each per-example projected gradient g_i is clipped to [−C, C]
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # σ given directly; ε computed
    accountant: Literal["rdp", "pld"] = "rdp"
    sampling: Literal["fixed", "poisson"] = "poisson"

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("method.epsilon: give exactly one of method.epsilon (σ is calibrated) or "
                             "method.noise_multiplier (ε is computed)")
        if math.isinf(self.clip) and self.noise_multiplier != 0:
            raise ValueError("method.clip: must be finite when noise is added (only noise_multiplier=0 allows inf)")
        return self


class Config(ZOCfg, BatchCfg, DPCfg):
    name: Literal["dpzero"] = "dpzero"
    # The ε the step size was tuned at. At a smaller method.epsilon the step is lr·ε/lr_epsilon: the noise on each
    # released scalar grows as ε shrinks, and a step tuned at ε = 2 then random-walks away from the signal
    # (benchmarks/results/tune_presets_low_eps.json: the best lr fell with ε). Never scaled up above lr_epsilon.
    lr_epsilon: PosFloat | None = None

    @model_validator(mode="after")
    def _lr_epsilon_needs_epsilon(self):
        if self.lr_epsilon is not None and self.epsilon is None:
            raise ValueError("method.lr_epsilon: scales the step with method.epsilon, so it needs method.epsilon "
                             "(not method.noise_multiplier)")
        return self

    def lr_at(self, t: int, steps: int) -> float:
        """StepCfg's schedule, times min(1, ε / lr_epsilon) when lr_epsilon is set (post-processing: no privacy
        cost)."""
        lr = super().lr_at(t, steps)
        return lr * min(1.0, self.epsilon / self.lr_epsilon) if self.lr_epsilon is not None else lr


# Fields of privtune.privacy.dp's error messages → the config keys they come from.
_FIELDS = {"epsilon": "method.epsilon", "delta": "method.delta", "sigma": "method.noise_multiplier",
           "scale": "method.noise_multiplier", "accountant": "method.accountant", "sampling": "method.sampling",
           "sampling_rate": "method.batch_size", "steps": "train.steps", "dataset_size": "task.pool_size"}


@contextlib.contextmanager
def config_errors(field: str = "method"):
    """Re-raise privacy.dp's ConfigErrors under the dotted config key, and dp_accounting's overflow or memory
    errors (absurd ε or σ) under `field`; keep dp_accounting's absl warnings (RDP orders it skips) off the terminal."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    except ConfigError as e:
        head, sep, rest = str(e).partition(":")
        raise ConfigError(f"{_FIELDS.get(head, head)}{sep}{rest}") from None
    except (OverflowError, MemoryError) as e:
        raise ConfigError(f"{field}: out of the range the privacy accountant can compute ({type(e).__name__})") from None
    finally:
        absl.setLevel(level)


def fixed_batch(secret, n: int, size: int, t: int) -> list[int]:
    """Fixed-size sampling: `size` distinct pool positions for step t, uniformly without replacement, in draw order.
    Drawn from the secret key (tag "batch"), never from a public seed: the accountant's SampledWithoutReplacement
    event amplifies only if nobody can recompute the batch (train.seed is in config.yaml)."""
    return [int(i) for i in secret.numpy("batch", t).choice(n, size=size, replace=False)]


def poisson_batch(secret, n: int, rate: float, t: int) -> list[int]:
    """Poisson sampling: each of the n pool examples joins step t's batch independently with probability `rate`.
    Drawn from the secret key (tag "subset"), never from a public seed: who is in the batch must stay private."""
    return np.flatnonzero(secret.numpy("subset", t).random(n) < rate).tolist()


class DPZero(Method):
    name = "dpzero"
    display = "DPZero"
    guarantee = "dp"
    needs_secret = True
    mechanism = "gaussian"
    clipped = "per-example projected gradient g_i = (l_i(θ+εz) − l_i(θ−εz))/2ε"
    released = "clipped to [−C, C]; only the noisy scalar is released (the directions z are public, from train.seed)"

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)
        if secret is None:
            raise ConfigError(f"method: {self.name} needs a secret key (run it through privtune.train)")
        self.n = len(pool)
        self.rate = cfg.batch_size / self.n
        self._spent_curve = None  # steps done ↦ ε spent (privacy.dp.epsilon_spent_curve), built on first use
        self.sigma, self.epsilon = self._calibrate()
        if self.sigma == 0.0:
            self.guarantee = "none"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(σ={self.sigma:.4g}, C={self.cfg.clip}, ε={self.epsilon:.4g})"

    @property
    def directions(self) -> int:
        """K: the scalars released per step on one batch (the accountant's sensitivity grows with it)."""
        return self.cfg.directions

    # ------------------------------------------------------------------------------------------ calibration
    def _calibrate(self) -> tuple[float, float]:
        """(noise multiplier, ε) for the whole run. K directions per step are K scalars released on the same batch:
        one K-dim mechanism of L2 sensitivity √K·C (Gaussian) or L1 sensitivity K·C (Laplace), so the accountant
        sees the per-scalar noise divided by √K (resp. K)."""
        cfg = self.cfg
        per_step, kw = self._accounting()
        with config_errors("method.noise_multiplier" if cfg.noise_multiplier is not None else "method.epsilon"):
            if cfg.noise_multiplier is not None:
                x = float(cfg.noise_multiplier)
                if x == 0.0:
                    return 0.0, math.inf
                epsilon_of = dp.gaussian_epsilon if self.mechanism == "gaussian" else dp.laplace_epsilon
                return x, epsilon_of(x / per_step, **kw)
            noise_for = dp.gaussian_sigma_for_epsilon if self.mechanism == "gaussian" else dp.laplace_scale_for_epsilon
            return noise_for(cfg.epsilon, **kw) * per_step, float(cfg.epsilon)

    def _accounting(self) -> tuple[float, dict]:
        """(per_step, the accountant's arguments): the accountant sees noise / per_step (see _calibrate) for
        `total_steps` releases at rate B/N. Shared by the calibration and epsilon_spent, so the two never diverge."""
        cfg = self.cfg
        per_step = dp.release_factor(self.mechanism, self.directions)
        return per_step, dict(steps=self.total_steps, sampling_rate=self.rate, delta=cfg.delta,
                              accountant=cfg.accountant, sampling=cfg.sampling, dataset_size=self.n)

    def epsilon_spent(self, steps_done: int) -> float:
        """ε spent by the first `steps_done` releases: 0 before the first, ≤ self.epsilon, equal to the accountant's
        ε for the whole run at the end; never below the accountant's ε for steps_done (privacy.dp.epsilon_spent_curve,
        ~1 ms a call with RDP, so it is recomputed at every charge and privacy.json never under-reports it)."""
        steps_done = min(int(steps_done), self.total_steps)
        if steps_done <= 0:
            return 0.0
        if self.sigma == 0.0:
            return math.inf
        if self._spent_curve is None:
            per_step, kw = self._accounting()
            with config_errors():
                self._spent_curve = dp.epsilon_spent_curve(self.mechanism, self.sigma / per_step, **kw)
        with config_errors():
            return self._spent_curve(steps_done)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the released ĝ: σC/B (0 when σ = 0, whatever C)."""
        return self.sigma * self.cfg.clip / self.cfg.batch_size if self.sigma > 0 else 0.0

    # ------------------------------------------------------------------------------------------------- step
    def batch(self, t: int) -> list[int]:
        cfg = self.cfg
        if cfg.sampling == "fixed" and self.sigma == 0.0:  # no guarantee claimed: MeZO's public batch
            return sample_batch(self.n, cfg.batch_size, self.run_seed, t)
        if cfg.sampling == "fixed":
            return dist.from_main(lambda: fixed_batch(self.secret, self.n, cfg.batch_size, t))  # drawn where the key is
        return dist.from_main(lambda: poisson_batch(self.secret, self.n, self.rate, t))

    def noise(self, t: int) -> np.ndarray:
        """K unit draws for step t, a pure function of (secret key, t): a recomputed step releases the same ĝ."""
        rng = self.secret.numpy("noise", t)
        k = self.cfg.directions
        return rng.standard_normal(k) if self.mechanism == "gaussian" else rng.laplace(0.0, 1.0, k)

    def clipped_values(self, lp, lm):
        """The per-example values whose sum is privatized: clip_C(g_i)."""
        return zo_scalars(lp, lm, self.cfg.eps).clamp(-self.cfg.clip, self.cfg.clip)

    def privatize(self, total: float, xi: float) -> tuple[float, dict]:
        """ĝ = (1/B)·Σ_i clip_C(g_i) + (σC/B)·ξ  (DPZero, arXiv 2310.09639, Alg. 1). B is the fixed batch size, or
        the expected one under Poisson sampling; with σ = 0 and C = ∞ this is MeZO's batch mean, bit for bit."""
        avg = total / self.cfg.batch_size
        return (avg + self.noise_std * xi if self.noise_std > 0 else avg), {}

    def step(self, t: int) -> Release:
        cfg, K = self.cfg, self.cfg.directions
        idx = self.batch(t)
        updates, released, extra = [], [], {}
        for k in range(K):
            seed = direction_seed(self.run_seed, t, k)
            # Σ_i clip(·) in the engine's fixed chunk order (an empty Poisson batch sums to 0: only noise is released)
            total = float(pair_sums(self.engine, self.pool, idx, seed, cfg.eps,
                                    lambda lp, lm, ex: self.clipped_values(lp, lm)[:, None].numpy(), 1)[0])
            # the noise is drawn from the secret key, on rank 0 only; every rank gets the released value
            g, more = dist.from_main(lambda: self.privatize(total, float(self.noise(t)[k])))
            if not math.isfinite(g):
                raise TrainingDiverged(f"training: loss is NaN/inf at step {t}")
            updates.append((seed, g / K))
            released.append(g)
            for key, v in more.items():
                extra.setdefault(key, []).append(v)
        return Release(updates=updates, public={"projected_grad": released, **extra})  # the noisy scalars only

    # ------------------------------------------------------------------------------------------ ledger
    def ledger_fields(self) -> dict:
        cfg = self.cfg
        return {"method": self.name, "guarantee": self.guarantee, "mechanism": self.mechanism,
                "noise_multiplier": self.sigma, "noise_std": self.noise_std, "accountant": cfg.accountant,
                "sampling": cfg.sampling, "sampling_rate": self.rate, "pool_size": self.n,
                "batch_size": cfg.batch_size, "directions": self.directions, "clip": cfg.clip, "clipped": self.clipped,
                **self.summary({})}

    def summary(self, ledger_state: dict) -> dict:
        cfg = self.cfg
        # epsilon: the guarantee of the whole run (all total_steps releases); epsilon_spent: of the steps done so far
        spent = self.epsilon_spent(ledger_state.get("steps_done", 0))
        if self.sigma == 0.0:
            return {"guarantee": "none", "mi_nats": None, "epsilon": math.inf, "epsilon_spent": spent,
                    "delta": cfg.delta, "mia_posterior_bound": 1.0,
                    "assumptions": "noise_multiplier = 0: no privacy guarantee"}
        return {"guarantee": "dp", "mi_nats": None, "epsilon": self.epsilon, "epsilon_spent": spent, "delta": cfg.delta,
                "mia_posterior_bound": eps_to_posterior(self.epsilon, cfg.delta),
                "assumptions": (f"(ε, δ)-DP of all {self.total_steps} releases with respect to the training pool; "
                                f"{self.sampling_assumption()}; {cfg.accountant.upper()} accountant (dp_accounting) "
                                f"for the {self.mechanism} mechanism on the {self.clipped}; {self.released}; "
                                f"{TIMING_RESIDUAL}")}

    def sampling_assumption(self) -> str:
        """What the accountant charges per step (privacy/dp.py's conventions), in words, with q = B/n from the pool."""
        cfg, n, B, K = self.cfg, self.n, self.cfg.batch_size, self.directions
        pool = f"n = {n} is the pool size, including any canaries"
        # K scalars per step on one batch: L2 sensitivity √K·C (Gaussian), L1 K·C (Laplace), as in _calibrate
        k = "" if K == 1 else (f"√{K}·" if self.mechanism == "gaussian" else f"{K}·")
        if cfg.sampling == "poisson":
            neighbours = "neighbouring pools differ by adding or removing one example, sampled at the same q"
            sens = f"the add/remove-one sensitivity {k}C"
            how = (f"Poisson sampling: each pool example joins each step's batch independently with probability "
                   f"q = B/n = {B}/{n} = {self.rate:.6g} ({pool}), drawn from the secret key")
            event = "Poisson-subsampled (q)"
        else:
            neighbours = "neighbouring pools differ by replacing one example"
            sens = f"the replace-one sensitivity {k}2C"
            how = (f"fixed-size batches of B = {B} distinct examples drawn uniformly without replacement, from the "
                   f"secret key, out of the pool: q = B/n = {B}/{n} = {self.rate:.6g} ({pool})")
            event = f"sampled-without-replacement (B = {B} of n = {n})"
        if self.rate == 1.0:  # dp.py composes the plain mechanism: every step sees every example
            event = "full-batch (q = 1, no sampling amplification)"
        return (f"{how}; {neighbours}; each of the {self.total_steps} steps is charged as one {event} "
                f"{self.mechanism} mechanism with noise scale σ·C (σ = {self.sigma:.6g}) at {sens}")


register(Config, DPZero)
