"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1) and DP-LoRA (the same on LoRA
adapters, Yu et al. 2022, "Differentially Private Fine-tuning of Language Models") through Opacus: the first-order
baseline the zeroth-order methods are compared with.

Per step: a batch B_t (Poisson sampling from the run's secret key, as DPZero's); per-example gradients g_i of all
trainable parameters from `opacus.GradSampleModule`; `opacus.optimizers.DPOptimizer` clips each to L2 norm C, sums,
adds N(0, σ²C²) per coordinate (drawn from the secret key) and divides by the expected batch size B:
  ĝ = (Σ_i g_i·min(1, C/‖g_i‖) + σC·ξ) / B,   θ ← SGD or Adam step on ĝ.
σ is calibrated for the whole run by privtune.privacy.dp (dp_accounting) exactly as for DPZero; the released
quantity is the d-dimensional ĝ, so only its digest enters the transcript (the run cannot be replayed from it).

Forward passes run on the shared engine's path (frozen-prefix cache, last-position head on the verbalizer rows), one
micro-batch chunk per backward pass so that Opacus sees one activation per module and call; the chunks' per-sample
gradients are concatenated before clipping, so the micro-batch size never changes the mechanism.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import ClassVar, Literal

import torch
from pydantic import model_validator

from ..config import PosFloat
from ..errors import ConfigError, PrivtuneError, TrainingDiverged
from . import dpzero
from .base import BatchCfg, Release, StepCfg, register


class Config(StepCfg, BatchCfg, dpzero.DPCfg):
    name: Literal["dpsgd"] = "dpsgd"
    unused: ClassVar[tuple[str, ...]] = ("eps", "directions")  # zeroth-order fields an older schema forced on it
    clip: dpzero.Clip = 1.0  # C: L2 bound of each per-example gradient (all trainable parameters together)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: PosFloat = 1e-3

    @model_validator(mode="before")
    @classmethod
    def _first_order(cls, data):
        # directions was accepted (and had to be 1) before it was dropped: other values still mean a mistake
        if isinstance(data, dict) and data.get("directions", 1) != 1:
            raise ValueError("method.directions: DP-SGD has no ZO directions; leave it at 1")
        return data


class _Suffix(torch.nn.Module):
    """The modules a DP step differentiates through (the blocks above the frozen-prefix cache, the final norm and a
    trained verbalizer head), registered under one parent so that opacus.GradSampleModule hooks every one owning a
    trainable parameter."""

    def __init__(self, forward):
        super().__init__()
        self.blocks = torch.nn.ModuleList(forward.layers[forward.cache_layer:])
        self.norm = forward.base.norm
        if forward.verbalizer_head is not None:
            self.head = forward.verbalizer_head


class DPSGD(dpzero.DPZero):
    name = "dpsgd"
    display = "DP-SGD"
    multi_process = False  # Opacus' per-sample gradients are not sharded across torchrun ranks
    directions = 1  # one vector release per step (the DP accounting of DPZero with K = 1)
    clipped = "per-example gradient of all trainable parameters (L2 norm)"
    released = "only the noisy clipped-gradient average (a vector over the trainable parameters) is released"

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)
        # imported here, not at the top: Opacus takes seconds to import and only a DP-SGD run needs it
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        fwd = engine.forward
        if fwd.base is None:
            raise ConfigError("model.name: dpsgd needs a Llama-style decoder (model.layers, model.norm)")
        if id(fwd.head_weight) in engine.index or id(fwd.base.embed_tokens.weight) in engine.index:
            raise ConfigError(f"trainable.kind: {engine.sel.kind!r} trains the embedding / LM head, which DP-SGD "
                              "here does not support; use lora, norms, final_norm or top_layers:K")
        self.params = [p for _, p in engine.params]
        self.suffix = _Suffix(fwd)
        self.gsm = GradSampleModule(self.suffix, batch_first=True, loss_reduction="sum", strict=False)
        self.gsm.disable_hooks()  # on only inside per_sample_grads: evaluation and other passes stay untouched
        groups = [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        base = (torch.optim.AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adam"
                else torch.optim.SGD(groups, lr=cfg.lr))
        clip = min(cfg.clip, torch.finfo(torch.float32).max)  # C = ∞ (allowed with σ = 0): σ·C must stay 0, not NaN
        self.opt = DPOptimizer(base, noise_multiplier=self.sigma, max_grad_norm=clip,
                               expected_batch_size=cfg.batch_size, loss_reduction="mean")

    def __repr__(self) -> str:
        return f"DPSGD(σ={self.sigma:.4g}, C={self.cfg.clip}, ε={self.epsilon:.4g})"

    # ------------------------------------------------------------------------------------------------- step
    def per_sample_grads(self, idx: list[int]) -> None:
        """Fill p.grad_sample [|idx|, *p.shape] with the per-example gradients of the summed verbalizer CE, rows in
        the engine's chunk order (kept in `self.order`; the mechanism only ever sums them)."""
        fwd = self.engine.forward
        for p in self.params:
            p.grad_sample = None
        self.order = []
        if not idx:  # an empty Poisson batch: nothing to clip, the release is noise only
            for p in self.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            return
        parts: dict[int, list[torch.Tensor]] = {id(p): [] for p in self.params}
        chunks = fwd.chunks(self.pool, idx)
        self.order = [j for c in chunks for j in c]
        self.suffix.train()  # Opacus records activations only in training mode (the blocks have no dropout here)
        self.gsm.enable_hooks()
        try:
            for chunk in chunks:
                with torch.enable_grad(), warnings.catch_warnings():
                    # the cached prefix states need no gradient; Opacus' hooks still fire on the modules' outputs
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    logits = fwd.chunk_logits(self.pool, [chunk])[0][0]
                    loss = fwd.loss(logits, self.pool.labels[chunk], reduction="sum")
                    loss.backward()
                for p in self.params:
                    parts[id(p)].append(p.grad_sample)
                    p.grad_sample = None
        finally:
            self.gsm.disable_hooks()
            self.suffix.eval()
        for p in self.params:
            p.grad_sample = torch.cat(parts[id(p)])
            p.grad = None

    def step(self, t: int) -> Release:
        self.per_sample_grads(self.batch(t))
        self.opt.generator = self.secret.torch("noise", t, device=self.params[0].device)
        self.opt.pre_step()  # clip, sum, add σC·N(0, I) from the secret key, divide by B
        h = hashlib.sha256()
        for p in self.params:
            if not bool(torch.isfinite(p.grad).all()):
                self.opt.zero_grad(set_to_none=True)
                raise TrainingDiverged(f"training: loss or gradient is NaN/inf at step {t}")
            h.update(p.grad.detach().cpu().contiguous().numpy().tobytes())
        return Release(updates=[], public={"grad_digest": h.hexdigest()[:32]})

    def apply(self, rel: Release, lr: float) -> None:
        for g in self.opt.original_optimizer.param_groups:
            g["lr"] = lr
        self.opt.original_optimizer.step()
        self.opt.zero_grad(set_to_none=True)

    @classmethod
    def replay(cls, cfg, setup, lines, callback=None) -> None:
        raise PrivtuneError("replay: a dpsgd run releases noisy gradient vectors, recorded only as digests; it "
                            "cannot be rebuilt from its transcript (resume and checkpoints are exact instead)")

    # ----------------------------------------------------------------------------- state across a resume
    def private_state(self) -> dict:
        """Adam's moments (a post-processing of released gradients, kept out of the run dir with the rest)."""
        return {"optimizer": self.opt.original_optimizer.state_dict()} if self.cfg.optimizer == "adam" else {}

    def load_private_state(self, state: dict) -> None:
        if state.get("optimizer") is not None:
            self.opt.original_optimizer.load_state_dict(state["optimizer"])

    def ledger_fields(self) -> dict:
        fields = super().ledger_fields()
        for k in ("directions", "noise_std"):
            fields.pop(k, None)
        return {**fields, "optimizer": self.cfg.optimizer, "noise_std_per_coordinate": self.noise_std,
                "trainable_parameters": sum(p.numel() for p in self.params)}


register(Config, DPSGD)
