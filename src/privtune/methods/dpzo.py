"""DP-ZO (Tang et al. 2024, "Private Fine-tuning of Large Language Models with Zeroth-order Optimization",
arXiv 2401.04343, Alg. 1): the only data-dependent quantity of a SPSA step is a scalar, so privatize that scalar.

Per step: a batch B_t; per example the loss difference Δ_i = ℓ_i(θ+εz) − ℓ_i(θ−εz), clipped to [−C, C];
  R = Σ_i clip_C(Δ_i) + noise,  noise ~ N(0, σ²C²) or Laplace(0, b·C)   (the released, privatized sum);
  ĝ = R / (2ε·B);   θ ← θ − η(ĝ·z + λθ).
Unlike DPZero, C bounds the raw loss difference (units of loss, not of gradient), and the noise may be Laplace
(pure-ε-style mechanism, accounted by PLD under Poisson sampling). σ or b is calibrated once by privtune.privacy.dp;
everything else (batches, secret noise, directions, ledger) is DPZero's, see dpzero.py.
"""

from __future__ import annotations

from typing import Literal

from . import dpzero
from .base import register


class Config(dpzero.Config):
    name: Literal["dpzo"] = "dpzo"
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    clip: dpzero.Clip = 0.05  # C on the loss difference Δ_i (= 2ε·25 at ε = 1e-3: DPZero's C = 25 on g_i)
    accountant: Literal["rdp", "pld"] = "pld"  # dp_accounting accounts sub-sampled Laplace with PLD only
    sampling: Literal["fixed", "poisson"] = "poisson"


class DPZO(dpzero.DPZero):
    name = "dpzo"
    display = "DP-ZO"
    clipped = "per-example loss difference Δ_i = l_i(θ+εz) − l_i(θ−εz)"

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        self.mechanism = cfg.mechanism
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)

    @property
    def noise_scale(self) -> float:
        """Noise on the released sum R: σC (Gaussian std) or b·C (Laplace scale); 0 when the multiplier is 0."""
        return self.sigma * self.cfg.clip if self.sigma > 0 else 0.0

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on ĝ = R / (2εB); a Laplace(b) draw has std √2·b."""
        std = self.noise_scale * (1.0 if self.mechanism == "gaussian" else 2.0 ** 0.5)
        return std / (2.0 * self.cfg.eps * self.cfg.batch_size)

    def clipped_values(self, lp, lm):
        """The per-example values whose sum is privatized: clip_C(Δ_i)."""
        return (lp - lm).clamp(-self.cfg.clip, self.cfg.clip)

    def privatize(self, total: float, xi: float) -> tuple[float, dict]:
        """R = Σ_i clip_C(Δ_i) + noise; ĝ = R/(2εB)  (DP-ZO, arXiv 2401.04343, Alg. 1)."""
        cfg = self.cfg
        released = total + self.noise_scale * xi if self.noise_scale > 0 else total
        return released / (2.0 * cfg.eps * cfg.batch_size), {"noisy_sum": released}

    def ledger_fields(self) -> dict:
        return {**super().ledger_fields(), "noise_scale_sum": self.noise_scale}


register(Config, DPZO)
