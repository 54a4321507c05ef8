"""The shared zeroth-order step engine: every ZO method (MeZO, PACZero, DPZero, DP-ZO) calls this.

* A direction z is never stored: it is regenerated from (step seed, parameter index) whenever it is needed
  (zo.seeds; drawn by the backend of zo.kernels).
* θ is never modified to evaluate θ ± εz. A forward pre-hook on each module that owns a trainable parameter swaps in
  the perturbed tensor p + s·εz just in time, and the forward hook swaps the original Parameter object back, so θ is
  bit-exactly unchanged after any number of perturbed passes (MeZO's in-place +εz, −2εz, +εz is not).
* Per-example losses come from one batched pass per sign over the whole batch (zo.forward.Forward: length-sorted
  micro-batches, left padding, the frozen-prefix cache, the LM head only at the last position and only for the
  verbalizer rows). The engine is the `perturbation` that forward runs under: `at`, `value`, `forget`.
* The update θ ← θ − lr·(Σ_k c_k·z_k + λθ) regenerates (or reuses) the same z.
"""

from __future__ import annotations

import contextlib

import torch

from ..trainable import Selection
from .forward import Encoded, Forward
from .kernels import backend, resolve
from .seeds import Direction
from .sequences import SeqSpec, SequenceForward
from .sums import zo_scalars


class ZOEngine:
    """θ ± εz without touching θ, per-example losses there, and the update along z. The batched forward is
    `self.forward` (a zo.forward.Forward over the selection's model); the engine perturbs the weights it sees."""

    def __init__(self, selection: Selection, verbalizer_ids: list[int], device: torch.device | str = "cpu",
                 micro_batch: int = 64, use_cache: bool = True, keep_z: bool | None = None,
                 z_kernel: str = "torch", seq: SeqSpec | None = None):
        self.sel = selection
        self.model = selection.model
        self.params = selection.params
        self.device = torch.device(device)
        # The blocks below the first trainable one are frozen: their output is cached (unless use_cache is off).
        # A prompt's label-word logits (classification) or its answer's / choices' log-probs (zo.sequences)
        cache_layer = selection.first_trainable_layer if use_cache else 0
        if seq is None:
            self.forward = Forward(self.model, verbalizer_ids, self.device, micro_batch, cache_layer=cache_layer)
        else:
            self.forward = SequenceForward(self.model, seq, self.device, micro_batch, cache_layer=cache_layer)
        # Where z comes from (zo.kernels): torch (z materialized, banked) or triton (fused, z never stored).
        self.z_kernel = resolve(z_kernel, self.device)
        self.zb = backend(self.z_kernel)
        self.index = {id(p): i for i, (_, p) in enumerate(self.params)}
        n_train = sum(p.numel() for _, p in self.params)
        n_all = sum(p.numel() for p in self.model.parameters())
        # Keep the step's z between the ± passes and the update when it costs ≤ 10% of the model's memory:
        # one draw of z per step instead of two. Otherwise z lives one layer at a time. The fused backend keeps
        # no z at all: it regenerates z inside the kernel that uses it.
        self.keep_z = (n_train <= 0.1 * n_all) if keep_z is None else bool(keep_z)
        self.keep_z = self.keep_z and not self.zb.fused
        self._bank: dict[int, torch.Tensor] = {}
        self._bank_seed: int | None = None
        self._active: Direction | None = None
        self._install_hooks()

    # ------------------------------------------------------------------ just-in-time perturbation (θ untouched)
    def _install_hooks(self) -> None:
        self._hooks = []
        for module in self.model.modules():
            owned = [(n, p) for n, p in module._parameters.items() if p is not None and id(p) in self.index]
            if owned:
                self._hooks.append(module.register_forward_pre_hook(self._make_pre(owned)))
                self._hooks.append(module.register_forward_hook(self._make_post(owned)))

    def _make_pre(self, owned):
        def pre(module, args):
            if self._active is not None:
                for n, p in owned:
                    module._parameters[n] = self.value(p)
        return pre

    def _make_post(self, owned):
        def post(module, args, out):
            if self._active is not None:
                for n, p in owned:
                    module._parameters[n] = p
        return post

    @contextlib.contextmanager
    def at(self, direction: Direction | None):
        """Inside the block every module that owns a trainable parameter runs at θ + direction (None: θ)."""
        self._active = direction
        try:
            yield
        finally:
            self._active = None

    def _z(self, seed: int, i: int, p: torch.Tensor) -> torch.Tensor:
        """z_i for `seed`, drawn once and shared by every direction (±) and chunk that needs it (torch backend; the
        fused backend banks nothing: its kernels regenerate z)."""
        if self._bank_seed != seed:
            self._bank.clear()
            self._bank_seed = seed
        z = self._bank.get(i)
        if z is None:
            z = self.zb.draw(seed, i, p)
            if not self.zb.fused:
                self._bank[i] = z
        return z

    def value(self, p: torch.Tensor) -> torch.Tensor:
        """The tensor that stands for parameter p now: p + scale·z under the active direction (built once per
        direction and kept until `forget`), p itself when no direction is active or p is not trainable."""
        d, i = self._active, self.index.get(id(p))
        if d is None or i is None:
            return p
        v = d.values.get(i)
        if v is None:
            if self.zb.fused:  # p + scale·z in one kernel: z never exists in memory
                v = d.values[i] = self.zb.perturbed(p, d.seed, i, d.scale)
            else:
                v = d.values[i] = torch.add(p.detach(), self._z(d.seed, i, p), alpha=d.scale)
        return v

    def forget(self, directions, keep=()) -> None:
        """Drop the perturbed tensors (and z, unless kept for the update) of the layer just run, except those of
        the parameters in `keep` (tensors)."""
        keep = {self.index[id(t)] for t in keep if id(t) in self.index}
        for d in directions:
            if d is not None:
                for i in [i for i in d.values if i not in keep]:
                    del d.values[i]
        if not self.keep_z:
            for i in [i for i in self._bank if i not in keep]:
                del self._bank[i]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    # ------------------------------------------------------------------------------------------ perturbed passes
    def chunks(self, data: Encoded, idx=None) -> list[list[int]]:
        """The micro-batches the examples `idx` (distinct; None = all) are computed in, in their fixed order (the
        order zo.sums adds in)."""
        return self.forward.chunks(data, idx)

    def logits_multi(self, data: Encoded, idx, directions: list) -> list[torch.Tensor]:
        """Verbalizer logits [B, C] (float32) of examples `idx` at θ + each direction (None = θ itself)."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        return self.forward.per_example(data, idx, lambda c, rows: rows, directions, perturbation=self)

    def logits(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        return self.logits_multi(data, idx, [direction])[0]

    def losses(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        """Per-example cross-entropy over the verbalizer logits, float32 [B]."""
        lg = self.logits(data, idx, direction)
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        return self.forward.loss(lg, data.labels[idx])

    def pair_losses(self, data: Encoded, idx, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses at θ+εz and θ−εz (float64): one batched pass over the whole batch, both signs sharing
        each block's z."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        ce = lambda chunk, lg: self.forward.loss(lg, data.labels[chunk]).double()
        lp, lm = self.forward.per_example(data, idx, ce, [Direction(seed, +eps), Direction(seed, -eps)],
                                          perturbation=self)
        return lp, lm

    def scalars(self, data: Encoded, idx, seed: int, eps: float) -> torch.Tensor:
        """Per-example ZO scalars g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε in float64 (MeZO, Malladi et al. 2023, Alg. 1)."""
        lp, lm = self.pair_losses(data, idx, seed, eps)
        return zo_scalars(lp, lm, eps)

    # -------------------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def apply_update(self, updates: list[tuple[int, float]], lr: float, weight_decay: float = 0.0) -> None:
        """θ ← θ − lr·(Σ_k c_k·z_k + λθ); weight decay only on matrices (not norms or biases), as MeZO does."""
        if self.zb.fused:
            return self._apply_fused(updates, lr, weight_decay)
        for i, (_, p) in enumerate(self.params):
            step = None
            for seed, coeff in updates:
                kept = self._bank.pop(i, None) if self._bank_seed == seed else None  # z kept from the ± passes
                z = kept if kept is not None else self.zb.draw(seed, i, p)
                step = z.mul_(float(coeff)) if step is None else step.add_(z, alpha=float(coeff))
            if step is None:
                continue
            if weight_decay and p.ndim >= 2:
                step.add_(p, alpha=float(weight_decay))
            p.sub_(step, alpha=float(lr))
        self._bank.clear()
        self._bank_seed = None

    def _apply_fused(self, updates: list[tuple[int, float]], lr: float, weight_decay: float) -> None:
        """The same update with the fused kernel, one in-place sweep per direction: the first applies the decay
        factor (1 − lr·λ) to θ as it was before the step, then θ += (−lr·c_k)·z_k."""
        for i, (_, p) in enumerate(self.params):
            decay = 1.0 - float(lr) * float(weight_decay) if (weight_decay and p.ndim >= 2) else 1.0
            for k, (seed, coeff) in enumerate(updates):
                self.zb.axpy_(p, seed, i, -float(lr) * float(coeff), decay if k == 0 else 1.0)
