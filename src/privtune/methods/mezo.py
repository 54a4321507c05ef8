"""MeZO (Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes", Alg. 1): the non-private
baseline. g = (ℓ(θ+εz) − ℓ(θ−εz)) / 2ε on a sampled batch; θ ← θ − η(g·z + λθ)."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..data import sample_batch
from ..errors import TrainingDiverged
from ..zo.seeds import direction_seed
from ..zo.sums import pair_sums, zo_scalars
from .base import BatchCfg, Method, Release, ZOCfg, register


class Config(ZOCfg, BatchCfg):
    name: Literal["mezo"] = "mezo"


class Mezo(Method):
    name = "mezo"
    display = "MeZO"
    guarantee = "none"

    def step(self, t: int) -> Release:
        cfg = self.cfg
        idx = sample_batch(len(self.pool), cfg.batch_size, self.run_seed, t)
        updates, gs, losses = [], [], []
        for k in range(cfg.directions):
            seed = direction_seed(self.run_seed, t, k)
            rows = lambda lp, lm, ex: torch.stack([zo_scalars(lp, lm, cfg.eps), lp, lm], 1).numpy()
            sum_g, sum_lp, sum_lm = pair_sums(self.engine, self.pool, idx, seed, cfg.eps, rows, 3)
            g = float(sum_g) / len(idx)  # the batch mean of g_i, summed in chunk order (zo.sums.chunk_sums)
            losses.append((float(sum_lp) / len(idx) + float(sum_lm) / len(idx)) / 2)
            if not math.isfinite(g):
                raise TrainingDiverged(f"training: loss is NaN/inf at step {t}")
            updates.append((seed, g / cfg.directions))
            gs.append(g)
        return Release(updates=updates, public={"projected_grad": gs},
                       monitor={"train_loss": sum(losses) / len(losses)})  # batch mean: MeZO promises no privacy


register(Config, Mezo)
