"""The shared zeroth-order step engine: every ZO method (MeZO, PACZero, DPZero, DP-ZO) calls this.

* A direction z is never stored: it is regenerated from (step seed, parameter index) whenever it is needed.
* θ is never modified to evaluate θ ± εz. A forward pre-hook on each module that owns a trainable parameter swaps in
  the perturbed tensor p + s·εz just in time, and the forward hook swaps the original Parameter object back, so θ is
  bit-exactly unchanged after any number of perturbed passes (MeZO's in-place +εz, −2εz, +εz is not).
* Per-example losses come from one batched pass per sign over the whole batch (length-sorted micro-batches, left
  padding), with the LM head computed only at the last position and only for the verbalizer rows.
* Frozen-prefix cache: when every trainable parameter sits in the top blocks, the embedding and the frozen lower
  blocks run once per example and their output is cached, so a step costs only the trainable top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..trainable import Selection, decoder_parts


# ----------------------------------------------------------------------------------------------------------- seeds
def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of integer parts (numpy SeedSequence hashing)."""
    a, b = np.random.SeedSequence([int(x) & 0xFFFFFFFFFFFFFFFF for x in parts]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b)) & 0x7FFFFFFFFFFFFFFF


def direction_seed(run_seed: int, step: int, k: int = 0) -> int:
    """Public seed of direction k at `step` (tag 1 keeps it apart from other derived seeds)."""
    return derive_seed(run_seed, 1, step, k)


class Direction:
    """A perturbation θ + scale·z(seed); z for parameter i is drawn from its own generator, seeded (seed, i)."""

    def __init__(self, seed: int, scale: float):
        self.seed = int(seed)
        self.scale = float(scale)
        self._memo: dict[int, torch.Tensor] = {}

    def z(self, i: int, p: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=p.device)
        g.manual_seed(derive_seed(self.seed, i))
        return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)

    def value(self, i: int, p: torch.Tensor, memo: bool = False) -> torch.Tensor:
        if memo and i in self._memo:
            return self._memo[i]
        v = torch.add(p.detach(), self.z(i, p), alpha=self.scale)
        if memo:
            self._memo[i] = v
        return v


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class Encoded:
    """Tokenized examples (and, once the engine built it, their frozen-prefix cache)."""

    ids: list[list[int]]
    labels: torch.Tensor  # long [N]
    cache: list[torch.Tensor] | None = field(default=None, repr=False)  # per example [len_i, d] at the cache layer

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------------------------------------- engine
class ZOEngine:
    def __init__(self, selection: Selection, verbalizer_ids: list[int], device: torch.device | str = "cpu",
                 micro_batch: int = 64, use_cache: bool = True):
        self.sel = selection
        self.model = selection.model
        self.params = selection.params
        self.device = torch.device(device)
        self.micro_batch = int(micro_batch)
        self.verb = torch.tensor(verbalizer_ids, dtype=torch.long, device=self.device)
        self.base, self.layers = decoder_parts(self.model)
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        head = inner.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)
        self.cache_layer = selection.first_trainable_layer if (use_cache and self.base is not None) else 0
        self.index = {id(p): i for i, (_, p) in enumerate(self.params)}
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
                    module._parameters[n] = self._value(p)
        return pre

    def _make_post(self, owned):
        def post(module, args, out):
            if self._active is not None:
                for n, p in owned:
                    module._parameters[n] = p
        return post

    def _value(self, p: torch.Tensor) -> torch.Tensor:
        i = self.index.get(id(p))
        if self._active is None or i is None:
            return p
        return self._active.value(i, p, memo=p is self.head_weight)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    # ------------------------------------------------------------------------------------------------ encoding
    def encode(self, ids: list[list[int]], labels) -> Encoded:
        data = Encoded([list(x) for x in ids], torch.as_tensor(labels, dtype=torch.long))
        if self.cache_layer > 0:
            data.cache = [None] * len(data)
            with torch.inference_mode():
                for chunk in self._chunks(list(range(len(data))), data):
                    h, attn = self._prefix(data, chunk)
                    for row, j in enumerate(chunk):
                        n = len(data.ids[j])
                        data.cache[j] = h[row, h.shape[1] - n:].clone()
        return data

    def _chunks(self, idx: list[int], data: Encoded) -> list[list[int]]:
        order = sorted(idx, key=lambda j: (len(data.ids[j]), j))  # length-sorted: little padding, deterministic
        return [order[s:s + self.micro_batch] for s in range(0, len(order), self.micro_batch)]

    def _pad(self, data: Encoded, chunk: list[int]):
        T = max(len(data.ids[j]) for j in chunk)
        ids = torch.full((len(chunk), T), self._pad_id(), dtype=torch.long)
        attn = torch.zeros((len(chunk), T), dtype=torch.long)
        for row, j in enumerate(chunk):
            x = data.ids[j]
            ids[row, T - len(x):] = torch.tensor(x, dtype=torch.long)
            attn[row, T - len(x):] = 1
        return ids.to(self.device), attn.to(self.device)

    def _pad_id(self) -> int:
        pid = getattr(self.model.config, "pad_token_id", None)
        return int(pid) if isinstance(pid, int) else 0

    def _mask(self, attn: torch.Tensor, dtype: torch.dtype):
        T = attn.shape[1]
        causal = torch.ones((T, T), dtype=torch.bool, device=attn.device).tril()
        allowed = causal[None] & attn[:, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=dtype, device=attn.device).masked_fill(~allowed, torch.finfo(dtype).min)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        return mask[:, None], pos

    def _run_layers(self, h, attn, start, end):
        mask, pos = self._mask(attn, h.dtype)
        pe = self.base.rotary_emb(h, pos)
        for layer in self.layers[start:end]:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
            if isinstance(h, tuple):  # older transformers return (hidden,)
                h = h[0]
        return h

    def _prefix(self, data: Encoded, chunk: list[int]):
        ids, attn = self._pad(data, chunk)
        h = self.base.embed_tokens(ids)
        return self._run_layers(h, attn, 0, self.cache_layer), attn

    # ------------------------------------------------------------------------------------------------- forward
    def _chunk_logits(self, data: Encoded, chunk: list[int]) -> torch.Tensor:
        if self.base is None:  # generic causal LM: full forward, last position
            ids, attn = self._pad(data, chunk)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1)
            return out.logits[:, -1, self.verb].float()
        if data.cache is not None:
            T = max(len(data.ids[j]) for j in chunk)
            d = data.cache[chunk[0]].shape[-1]
            h = data.cache[chunk[0]].new_zeros((len(chunk), T, d))
            attn = torch.zeros((len(chunk), T), dtype=torch.long, device=self.device)
            for row, j in enumerate(chunk):
                n = len(data.ids[j])
                h[row, T - n:] = data.cache[j]
                attn[row, T - n:] = 1
            start = self.cache_layer
        else:
            ids, attn = self._pad(data, chunk)
            h = self.base.embed_tokens(ids)
            start = 0
        h = self._run_layers(h, attn, start, len(self.layers))
        last = self.base.norm(h[:, -1])
        w = self._value(self.head_weight)[self.verb]
        logits = last @ w.T
        if self.head_bias is not None:
            logits = logits + self._value(self.head_bias)[self.verb]
        return logits.float()

    def logits(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        """Verbalizer logits [B, C] (float32) for examples `idx` of `data`, at θ or at θ + direction."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        out = torch.empty((len(idx), len(self.verb)), dtype=torch.float32, device=self.device)
        where = {}
        for pos, j in enumerate(idx):
            where.setdefault(j, []).append(pos)
        self._active = direction
        try:
            with torch.inference_mode():
                for chunk in self._chunks(sorted(set(idx)), data):
                    lg = self._chunk_logits(data, chunk)
                    for row, j in enumerate(chunk):
                        for pos in where[j]:
                            out[pos] = lg[row]
        finally:
            self._active = None
            if direction is not None:
                direction._memo.clear()
        return out

    def losses(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        """Per-example cross-entropy over the verbalizer logits, float32 [B]."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        lg = self.logits(data, idx, direction)
        return F.cross_entropy(lg, data.labels[idx].to(lg.device), reduction="none")

    def pair_losses(self, data: Encoded, idx, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses at θ+εz and θ−εz (float64), one batched pass each over the whole batch."""
        lp = self.losses(data, idx, Direction(seed, +eps)).double()
        lm = self.losses(data, idx, Direction(seed, -eps)).double()
        return lp, lm

    def scalars(self, data: Encoded, idx, seed: int, eps: float) -> torch.Tensor:
        """Per-example ZO scalars g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε in float64 (MeZO, Malladi et al. 2023, Alg. 1)."""
        lp, lm = self.pair_losses(data, idx, seed, eps)
        return (lp - lm) / (2.0 * eps)

    # -------------------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def apply_update(self, updates: list[tuple[int, float]], lr: float, weight_decay: float = 0.0) -> None:
        """θ ← θ − lr·(Σ_k c_k·z_k + λθ); weight decay only on matrices (not norms or biases), as MeZO does."""
        for i, (_, p) in enumerate(self.params):
            step = None
            for seed, coeff in updates:
                z = Direction(seed, 1.0).z(i, p)
                step = z.mul_(float(coeff)) if step is None else step.add_(z, alpha=float(coeff))
            if step is None:
                continue
            if weight_decay and p.ndim >= 2:
                step.add_(p, alpha=float(weight_decay))
            p.sub_(step, alpha=float(lr))


def accuracy(engine: ZOEngine, data: Encoded) -> tuple[float, int]:
    lg = engine.logits(data)
    correct = int((lg.argmax(-1).cpu() == data.labels).sum())
    return correct / max(len(data), 1), correct
