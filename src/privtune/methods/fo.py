"""First-order reference (`method: fo`): AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization")
on the same trainable set and data path as every other method, with no privacy guarantee. It is what a user would
otherwise run, and the privacy–utility frontier's ceiling (zero-shot is its floor).

Per step: the public batch B_t = data.sample_batch(N, B, train.seed, t) (MeZO's), the engine's per-example loss
ℓ_i (cross-entropy over the verbalizer logits at the last position, frozen-prefix cache included), differentiated by
autograd one micro-batch chunk at a time: g = ∇(1/B)·Σ_i ℓ_i, accumulated in the engine's chunk order;
θ ← AdamW(θ, g, lr_t), decoupled weight decay on matrices only (as MeZO's and DP-SGD's). The gradient itself is not
released: the transcript keeps its digest (so a resumed run's recomputed steps are checked bit for bit) and cannot
rebuild θ, so `privtune replay` refuses an fo run. AdamW's moments are resume state kept out of the run dir (the
shareable artifact), like DP-SGD's.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from ..config import PosFloat
from ..data import sample_batch
from ..errors import PrivtuneError, TrainingDiverged
from .base import BatchCfg, Method, Release, StepCfg, register

Beta = Annotated[float, Field(ge=0, lt=1)]


class Config(StepCfg, BatchCfg):
    name: Literal["fo"] = "fo"
    lr: PosFloat = 1e-3
    beta1: Beta = 0.9  # AdamW's decay rate of the gradient's running mean (β₁)
    beta2: Beta = 0.999  # AdamW's decay rate of the squared gradient's running mean (β₂)


class FirstOrder(Method):
    name = "fo"
    display = "First-order (AdamW)"
    guarantee = "none"
    multi_process = False  # the backward pass is not sharded across torchrun ranks
    frontier_role: ClassVar[str | None] = "ceiling"  # the report draws it as the frontier's ceiling, not a point

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)
        self.params = [p for _, p in engine.params]
        groups = [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
        # foreach=False: one kernel per tensor, the same floats whatever the parameter grouping
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                     foreach=False)

    # ------------------------------------------------------------------------------------------------- step
    def step(self, t: int) -> Release:
        fwd, n = self.engine.forward, self.cfg.batch_size
        idx = sample_batch(len(self.pool), n, self.run_seed, t)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in fwd.chunks(self.pool, idx):  # one chunk per backward pass: memory stays one micro-batch's
            with torch.enable_grad():
                logits = fwd.chunk_logits(self.pool, [chunk])[0][0]
                loss = fwd.loss(logits, self.pool.labels[chunk], reduction="sum")
                (loss / n).backward()
            total += float(loss.detach())
        h = hashlib.sha256()
        for p in self.params:
            if p.grad is None:  # a parameter the loss does not reach: AdamW sees a zero gradient, every step alike
                p.grad = torch.zeros_like(p)
            if not bool(torch.isfinite(p.grad).all()):
                self.opt.zero_grad(set_to_none=True)
                raise TrainingDiverged(f"training: loss or gradient is NaN/inf at step {t}")
            h.update(p.grad.detach().cpu().contiguous().numpy().tobytes())
        # The digest is what a resumed run's recomputed step is compared against; the batch-mean loss is a monitoring
        # value (fo promises no privacy, like MeZO, which logs it too).
        return Release(updates=[], public={"grad_digest": h.hexdigest()[:32]}, monitor={"train_loss": total / n})

    def apply(self, rel: Release, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @classmethod
    def replay(cls, cfg, setup, lines, callback=None) -> None:
        raise PrivtuneError("replay: an fo run releases no update its transcript records (only gradient digests); "
                            "it cannot be rebuilt from its transcript (resume and checkpoints are exact instead)")

    # ----------------------------------------------------------------------------- state across a resume
    def private_state(self) -> dict:
        """AdamW's moments and step counts: a resume needs them to continue bit for bit, and they are a function of
        the training gradients, so they stay out of the run dir like DP-SGD's."""
        return {"optimizer": self.opt.state_dict()}

    def load_private_state(self, state: dict) -> None:
        if state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])

    def ledger_fields(self) -> dict:
        return {**super().ledger_fields(), "optimizer": "adamw",
                "trainable_parameters": sum(p.numel() for p in self.params)}


register(Config, FirstOrder)
