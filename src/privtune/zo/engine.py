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

from .. import dist
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
        self.values: dict[int, torch.Tensor] = {}  # perturbed tensors of the layer being run

    @staticmethod
    def draw(seed: int, i: int, p: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=p.device)
        g.manual_seed(derive_seed(seed, i))
        return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)

    def z(self, i: int, p: torch.Tensor) -> torch.Tensor:
        return self.draw(self.seed, i, p)


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
_LAST_POS_OK = {"LlamaDecoderLayer", "MistralDecoderLayer"}


class ZOEngine:
    def __init__(self, selection: Selection, verbalizer_ids: list[int], device: torch.device | str = "cpu",
                 micro_batch: int = 64, use_cache: bool = True, keep_z: bool | None = None,
                 z_kernel: str = "torch"):
        from .kernels import backend, resolve

        self.sel = selection
        self.model = selection.model
        self.params = selection.params
        self.device = torch.device(device)
        self.micro_batch = int(micro_batch)
        self.verb = torch.tensor(verbalizer_ids, dtype=torch.long, device=self.device)
        # Where z comes from (zo.kernels): torch (z materialized, banked) or triton (fused, z never stored).
        self.z_kernel = resolve(z_kernel, self.device)
        self.zb = backend(self.z_kernel)
        self.base, self.layers = decoder_parts(self.model)
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        head = inner.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)
        self.cache_layer = selection.first_trainable_layer if (use_cache and self.base is not None) else 0
        self.index = {id(p): i for i, (_, p) in enumerate(self.params)}
        n_train = sum(p.numel() for _, p in self.params)
        n_all = sum(p.numel() for p in self.model.parameters())
        # Keep the step's z between the ± passes and the update when it costs ≤ 10% of the model's memory:
        # one draw of z per step instead of two. Otherwise z lives one layer at a time. The fused backend keeps
        # no z at all: it regenerates z inside the kernel that uses it.
        self.keep_z = (n_train <= 0.1 * n_all) if keep_z is None else bool(keep_z)
        self.keep_z = self.keep_z and not self.zb.fused
        # The last block computed only at the last position (keys/values still for all positions): exact for
        # Llama-style blocks, whose loss needs nothing else.
        self.last_position_only = bool(self.layers is not None and type(self.layers[-1]).__name__ in _LAST_POS_OK)
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
                    module._parameters[n] = self._value(p)
        return pre

    def _make_post(self, owned):
        def post(module, args, out):
            if self._active is not None:
                for n, p in owned:
                    module._parameters[n] = p
        return post

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

    def _value(self, p: torch.Tensor) -> torch.Tensor:
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

    def _forget(self, directions, keep: set[int] = frozenset()) -> None:
        """Drop the perturbed tensors (and z, unless kept for the update) of the layer just run."""
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

    # ------------------------------------------------------------------------------------------------ encoding
    def encode(self, ids: list[list[int]], labels, disk_key: str | None = None) -> Encoded:
        """Tokenized examples plus, when the lower blocks are frozen, their output (the frozen-prefix cache).

        With `disk_key` (identifying the model weights), the cache is also kept on disk under PRIVTUNE_CACHE, so
        runs that share a model, a trainable boundary and examples build it once.
        """
        data = Encoded([list(x) for x in ids], torch.as_tensor(labels, dtype=torch.long))
        if self.cache_layer > 0 and disk_key is not None:
            path = self._disk_path(disk_key, data)
            if path.exists():
                try:
                    data.cache = self._trim([t.to(self.device) for t in torch.load(path, weights_only=True)])
                    return data
                except Exception:  # a torn or foreign file: rebuild it
                    path.unlink(missing_ok=True)
        if self.cache_layer > 0:
            data.cache = [None] * len(data)
            with torch.no_grad():
                for chunk in self._chunks(list(range(len(data))), data):
                    ids_, attn = self._pad(data, chunk)
                    h = self._run_layers(self.base.embed_tokens(ids_), attn, 0, self.cache_layer)
                    for row, j in enumerate(chunk):
                        n = len(data.ids[j])
                        data.cache[j] = h[row, h.shape[1] - n:].clone()
            if disk_key is not None:
                import io

                from ..rundir import atomic_write_bytes

                buf = io.BytesIO()
                torch.save([t.cpu() for t in data.cache], buf)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, buf.getvalue())
            data.cache = self._trim(data.cache)
        return data

    def _caches_everything(self) -> bool:
        return self.layers is not None and self.cache_layer == len(self.layers)

    def _trim(self, cache: list[torch.Tensor]) -> list[torch.Tensor]:
        """When every block is cached only the last position is ever read: keep just that row."""
        return [c[-1:].clone() for c in cache] if self._caches_everything() else cache

    def _disk_path(self, disk_key: str, data: Encoded):
        import hashlib

        from ..models import cache_dir

        h = hashlib.sha256(f"{disk_key}|layer={self.cache_layer}|mb={self.micro_batch}|{self.device.type}".encode())
        for x in data.ids:
            h.update(b"|" + ",".join(map(str, x)).encode())
        return cache_dir() / "prefix" / f"{h.hexdigest()[:40]}.pt"

    def _chunks(self, idx: list[int], data: Encoded) -> list[list[int]]:
        """Length-sorted micro-batches. Every chunk but the last is full, so the chunks of a union of whole chunks
        are those same chunks: a rank handed chunks r, r+P, ... computes exactly what one process computes."""
        order = sorted(idx, key=lambda j: (len(data.ids[j]), j))  # length-sorted: little padding, deterministic
        return [order[s:s + self.micro_batch] for s in range(0, len(order), self.micro_batch)]

    def chunks(self, data: Encoded, idx=None) -> list[list[int]]:
        """The micro-batches the examples `idx` (distinct; None = all) are computed in, in their fixed order."""
        idx = range(len(data)) if idx is None else idx
        return self._chunks(sorted({int(i) for i in idx}), data)

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

    def _geometry(self, attn: torch.Tensor, h: torch.Tensor):
        """Additive causal+padding mask [B,1,T,T], position ids (left padding) and rotary embeddings."""
        T = attn.shape[1]
        causal = torch.ones((T, T), dtype=torch.bool, device=attn.device).tril()
        allowed = causal[None] & attn[:, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=attn.device).masked_fill(~allowed, torch.finfo(h.dtype).min)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        return mask[:, None], pos, self.base.rotary_emb(h, pos)

    def _layer(self, layer, h, geo):
        mask, pos, pe = geo
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        return h[0] if isinstance(h, tuple) else h  # older transformers return (hidden,)

    def _last_position_block(self, layer, h, geo):
        """A Llama decoder block evaluated only at the last position: [B,T,d] → [B,1,d]."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        mask, _, (cos, sin) = geo
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        B, T, _ = x.shape
        hd = attn.head_dim
        q = attn.q_proj(x[:, -1:]).view(B, 1, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, -1, hd).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, -1:, :], scale=attn.scaling)
        h_last = h[:, -1:] + attn.o_proj(o.transpose(1, 2).reshape(B, 1, -1))
        return h_last + layer.mlp(layer.post_attention_layernorm(h_last))

    def _run_layers(self, h, attn, start, end):
        geo = self._geometry(attn, h)
        for layer in self.layers[start:end]:
            h = self._layer(layer, h, geo)
        return h

    def _start_states(self, data: Encoded, chunk: list[int]):
        """Input of the first computed block for a chunk: the cached prefix output, or token ids to embed."""
        if data.cache is not None and self._caches_everything():
            h = torch.stack([data.cache[j] for j in chunk])  # [B, 1, d]: the final hidden state at the last position
            return h, None, torch.ones((len(chunk), 1), dtype=torch.long, device=self.device)
        if data.cache is not None:
            T = max(len(data.ids[j]) for j in chunk)
            h = data.cache[chunk[0]].new_zeros((len(chunk), T, data.cache[chunk[0]].shape[-1]))
            attn = torch.zeros((len(chunk), T), dtype=torch.long, device=self.device)
            for row, j in enumerate(chunk):
                n = len(data.ids[j])
                h[row, T - n:] = data.cache[j]
                attn[row, T - n:] = 1
            return h, None, attn
        ids, attn = self._pad(data, chunk)
        return None, ids, attn

    # ------------------------------------------------------------------------------------------------- forward
    def _forward(self, data: Encoded, chunks: list[list[int]], directions: list) -> list[list[torch.Tensor]]:
        """Verbalizer logits per direction per chunk. Layer-major: each block's perturbed weights (and z) are built
        once and used for every chunk and both signs, then dropped, so memory stays ≈ inference."""
        if self.base is None:
            return [[self._generic_logits(data, c, d) for c in chunks] for d in directions]
        starts = [self._start_states(data, c) for c in chunks]
        start = self.cache_layer if data.cache is not None else 0
        states = []
        geos = [self._geometry(attn, h0 if h0 is not None else self.base.embed_tokens.weight[:1, None])
                if start < len(self.layers) else None for h0, ids, attn in starts]
        for d in directions:
            self._active = d
            states.append([h0 if h0 is not None else self.base.embed_tokens(ids) for h0, ids, _ in starts])
        self._active = None
        head_keep = {self.index[id(self.head_weight)]} if id(self.head_weight) in self.index else set()
        self._forget(directions, keep=head_keep)
        n_layers = len(self.layers)
        for li in range(start, n_layers):
            layer = self.layers[li]
            run = self._last_position_block if (li == n_layers - 1 and self.last_position_only) else self._layer
            for di, d in enumerate(directions):
                self._active = d
                states[di] = [run(layer, h, g) for h, g in zip(states[di], geos)]
            self._active = None
            self._forget(directions, keep=head_keep)
        out = []
        for di, d in enumerate(directions):
            self._active = d
            w = self._value(self.head_weight)[self.verb]
            b = self._value(self.head_bias)[self.verb] if self.head_bias is not None else None
            rows = []
            for h in states[di]:
                lg = self.base.norm(h[:, -1]) @ w.T
                rows.append((lg + b if b is not None else lg).float())
            out.append(rows)
            self._active = None
        self._forget(directions)
        return out

    def _generic_logits(self, data: Encoded, chunk: list[int], d) -> torch.Tensor:
        """Any HF causal LM (no prefix cache): full forward, last position only."""
        ids, attn = self._pad(data, chunk)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        self._active = d
        try:
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1)
        finally:
            self._active = None
            self._forget([d])
        return out.logits[:, -1, self.verb].float()

    def logits_multi(self, data: Encoded, idx, directions: list) -> list[torch.Tensor]:
        """Verbalizer logits [B, C] (float32) of examples `idx` at θ + each direction (None = θ itself)."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        return self._per_example(data, idx, directions, lambda c, rows: rows)

    def _per_example(self, data: Encoded, idx: list[int], directions: list, fn) -> list[torch.Tensor]:
        """fn(chunk, logits of the chunk) per direction, computed chunk by chunk, then put back in `idx` order."""
        chunks = self._chunks(sorted(set(idx)), data)
        try:
            with torch.no_grad():
                per_dir = self._forward(data, chunks, directions)
        finally:
            self._active = None
        results = []
        for rows in per_dir:
            by_example = {}
            for chunk, lg in zip(chunks, rows):
                for r, v in enumerate(fn(chunk, lg)):
                    by_example[chunk[r]] = v
            results.append(torch.stack([by_example[j] for j in idx]))
        return results

    def logits(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        return self.logits_multi(data, idx, [direction])[0]

    def losses(self, data: Encoded, idx=None, direction: Direction | None = None) -> torch.Tensor:
        """Per-example cross-entropy over the verbalizer logits, float32 [B]."""
        return self._ce(data, idx, self.logits(data, idx, direction))

    def _ce(self, data: Encoded, idx, lg: torch.Tensor) -> torch.Tensor:
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        return F.cross_entropy(lg, data.labels[idx].to(lg.device), reduction="none")

    def pair_losses(self, data: Encoded, idx, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses at θ+εz and θ−εz (float64): one batched pass over the whole batch, both signs sharing
        each block's z."""
        idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
        ce = lambda chunk, lg: F.cross_entropy(lg, data.labels[chunk].to(lg.device), reduction="none").double()
        lp, lm = self._per_example(data, idx, [Direction(seed, +eps), Direction(seed, -eps)], ce)  # per chunk
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


def zo_scalars(lp: torch.Tensor, lm: torch.Tensor, eps: float) -> torch.Tensor:
    """g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε (MeZO, Malladi et al. 2023, Alg. 1: projected gradient)."""
    return (lp - lm) / (2.0 * eps)


# ---------------------------------------------------------------------------- sums in one fixed order, sharded
def ordered_sum(rows) -> np.ndarray:
    """Σ of the rows of a [k, w] float64 array, added one row at a time in row order."""
    rows = np.asarray(rows, dtype=np.float64)
    total = np.zeros(rows.shape[1:], dtype=np.float64)
    for row in rows:
        total += row
    return total


def chunk_sums(engine, data, idx, rows_of, width: int) -> np.ndarray:
    """Σ_i rows_of(examples)_i over the distinct examples `idx` (None = all): float64 [width], summed in one order
    that does not depend on the number of processes — example order inside each of the engine's chunks, then chunk
    order. `rows_of(examples)` gives one float64 row of `width` per example (elementwise in its inputs).

    Under torchrun rank r computes only chunks r, r+P, ... (the very chunks one process uses, so the same floats);
    the per-chunk partial sums are gathered (dist.gather_rows) and added in chunk order on every rank, so every
    method's data-dependent sum, and with it the final weights, is bit-identical for any P. Every method uses this.
    An engine without micro-batches (a test double) is one chunk."""
    idx = list(range(len(data))) if idx is None else [int(i) for i in idx]
    chunks = engine.chunks(data, idx) if hasattr(engine, "chunks") else ([idx] if idx else [])
    mine = [chunks[c] for c in dist.shard(len(chunks))]
    part = np.zeros((len(mine), width), dtype=np.float64)
    flat = [j for c in mine for j in c]
    if flat:
        rows = np.asarray(rows_of(flat), dtype=np.float64).reshape(len(flat), width)
        at = 0
        for k, c in enumerate(mine):
            part[k] = ordered_sum(rows[at:at + len(c)])
            at += len(c)
    return ordered_sum(dist.gather_rows(part, len(chunks)))


def pair_sums(engine, data, idx, seed: int, eps: float, values, width: int) -> np.ndarray:
    """chunk_sums of values(ℓ⁺, ℓ⁻, examples) → [n, width], from the per-example losses at θ ± εz (one batched pass
    per sign over this rank's chunks)."""
    def rows_of(flat):
        lp, lm = engine.pair_losses(data, flat, seed, eps)
        return values(lp.cpu(), lm.cpu(), flat)
    return chunk_sums(engine, data, idx, rows_of, width)


def accuracy(engine: ZOEngine, data: Encoded) -> tuple[float, int]:
    """Eval accuracy; under torchrun each rank scores its share of the chunks."""
    def hits(flat):
        lg = engine.logits(data, flat)
        return (lg.argmax(-1).cpu() == data.labels[flat]).double().numpy()
    correct = int(chunk_sums(engine, data, None, hits, 1)[0])
    return correct / max(len(data), 1), correct
