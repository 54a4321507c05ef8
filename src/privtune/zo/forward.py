"""The shared forward pass: verbalizer logits of a Llama-style causal LM at the last position of each prompt.

The pieces, each used by the ZO engine, the off-site emulator (offsite/forward.py, offsite/distill.py) and the
audit's token statistics (audit/attacks.py), so there is one definition of the geometry they all rely on:
* `left_pad`, `left_pad_states`, `position_ids`, `geometry`: left padding (the last real token sits at the last
  position of every row), position ids counted over real tokens only, the additive causal+padding mask and the
  rotary embeddings: what every block needs besides its input.
* `run_block(s)`, `last_position_block`, `last_position_logits`: the blocks; the last block only at the last
  position (exact for Llama-style blocks: the loss reads nothing else); the LM head only there, and only on the
  verbalizer rows.
* `length_sorted_chunks`: micro-batches of similar length (little padding) in an order fixed by the examples.
* `Forward`: all of it for `Encoded` examples, plus the frozen-prefix cache: when every trainable parameter sits in
  the top blocks, the embedding and the frozen lower blocks run once per example (`encode`, also kept on disk under
  PRIVTUNE_CACHE) and a pass costs only the top. Blocks run layer-major for several weight settings (directions) at
  once; which weights a module sees is up to a `perturbation` — the ZO engine's just-in-time θ ± εz (zo/engine.py)
  — by default θ itself (`THETA`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..atomic import atomic_write_bytes
from ..paths import cache_dir
from ..errors import ConfigError
from ..trainable import decoder_parts, verbalizer_head


# ------------------------------------------------------------------------------------------------------- geometry
def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [B, T] (long, on the CPU) of token-id lists, padded on the left with pad_id."""
    T = max(len(x) for x in batch)
    ids = torch.full((len(batch), T), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    for row, x in enumerate(batch):
        ids[row, T - len(x):] = torch.tensor(x, dtype=torch.long)
        attn[row, T - len(x):] = 1
    return ids, attn


def left_pad_states(states: list[torch.Tensor], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [B, T, d] (zeros on the left) and attention mask [B, T] of per-sequence [len_i, d] states."""
    T = max(s.shape[0] for s in states)
    h = states[0].new_zeros((len(states), T, states[0].shape[-1]))
    attn = torch.zeros((len(states), T), dtype=torch.long, device=device)
    for row, s in enumerate(states):
        h[row, T - s.shape[0]:] = s
        attn[row, T - s.shape[0]:] = 1
    return h, attn


def position_ids(attn: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so a left-padded prompt sees the positions it would see alone."""
    return (attn.cumsum(-1) - 1).clamp(min=0)


class Geometry(NamedTuple):
    """What every decoder block takes besides its input (the keyword arguments of a transformers Llama layer)."""

    attention_mask: torch.Tensor  # additive causal+padding mask [B, 1, T, T] in the hidden states' dtype
    position_ids: torch.Tensor  # [B, T]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # rotary (cos, sin)


def geometry(rotary_emb, attn: torch.Tensor, h: torch.Tensor) -> Geometry:
    """The geometry of a left-padded batch with attention mask `attn`; `h` gives the dtype and device (its values
    are not read); `rotary_emb` is the decoder's rotary embedding module."""
    T = attn.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=attn.device).tril()
    allowed = causal[None] & attn[:, None, :].bool()
    mask = torch.zeros(allowed.shape, dtype=h.dtype, device=attn.device).masked_fill(~allowed, torch.finfo(h.dtype).min)
    pos = position_ids(attn)
    return Geometry(mask[:, None], pos, rotary_emb(h, pos))


def run_block(layer, h: torch.Tensor, geo: Geometry) -> torch.Tensor:
    h = layer(h, attention_mask=geo.attention_mask, position_ids=geo.position_ids,
              position_embeddings=geo.position_embeddings)
    return h[0] if isinstance(h, tuple) else h  # older transformers return (hidden,)


def run_blocks(layers, h: torch.Tensor, geo: Geometry) -> torch.Tensor:
    for layer in layers:
        h = run_block(layer, h, geo)
    return h


def last_position_block(layer, h: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """A Llama decoder block evaluated only at the last position: [B,T,d] → [B,1,d] (keys and values still for all
    positions). Exact for Llama-style blocks, whose loss needs nothing else."""
    # transformers is imported only where a model runs, so the CLI starts without it
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    cos, sin = geo.position_embeddings
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
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=geo.attention_mask[:, :, -1:, :], scale=attn.scaling)
    h_last = h[:, -1:] + attn.o_proj(o.transpose(1, 2).reshape(B, 1, -1))
    return h_last + layer.mlp(layer.post_attention_layernorm(h_last))


def last_position_logits(norm, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Float32 logits [B, C] of the head rows `weight` [C, d] (the verbalizer's) at the last position of h [B,T,d]."""
    lg = norm(h[:, -1]) @ weight.T
    return (lg + bias if bias is not None else lg).float()


def head_logits(norm, h: torch.Tensor, head: torch.nn.Module, bias: torch.Tensor | None = None) -> torch.Tensor:
    """last_position_logits with a trained verbalizer head (trainable.kind head): the rows come from calling the
    head module, so its hooks (ZO perturbation, Opacus) see it; F.linear is the same product x @ W.T."""
    lg = head(norm(h[:, -1]))
    return (lg + bias if bias is not None else lg).float()


def length_sorted_chunks(ids: list[list[int]], idx, size: int) -> list[list[int]]:
    """Micro-batches of at most `size` of the examples `idx`, sorted by (length, index): little padding, and an
    order that depends only on the examples. Every chunk but the last is full, so the chunks of a union of whole
    chunks are those same chunks."""
    order = sorted(idx, key=lambda j: (len(ids[j]), j))
    return [order[s:s + size] for s in range(0, len(order), size)]


# ------------------------------------------------------------------------------------------------------ examples
@dataclass
class Encoded:
    """Tokenized examples (and, once a Forward encoded them, their frozen-prefix cache)."""

    ids: list[list[int]]
    labels: torch.Tensor  # long [N]
    cache: list[torch.Tensor] | None = field(default=None, repr=False)  # per example [len_i, d] at the cache layer
    trees: list | None = field(default=None, repr=False)  # packed multi-token examples' layouts (zo.sequences.Tree)
    prompts: list[list[int]] | None = field(default=None, repr=False)  # generation: the prompts alone (decoding)
    answers: list[tuple[str, ...]] | None = field(default=None, repr=False)  # generation: the gold answers

    def __len__(self) -> int:
        return len(self.ids)


class Theta:
    """The perturbation of nobody: every module sees θ. The interface Forward runs its blocks under (zo.engine's
    ZOEngine is the other one): `at(d)` makes the modules see the weights of direction d while inside it, `value(p)`
    is what a parameter used outside any module (the LM head) is right now, `forget(directions, keep)` drops the
    perturbed tensors of the block just run except those of the parameters in `keep`."""

    @contextlib.contextmanager
    def at(self, direction):
        yield

    def value(self, p: torch.Tensor) -> torch.Tensor:
        return p

    def forget(self, directions, keep=()) -> None:
        return None


THETA = Theta()
_LAST_POS_OK = {"LlamaDecoderLayer", "MistralDecoderLayer"}


# ------------------------------------------------------------------------------------------------------- forward
class Forward:
    """Verbalizer logits of `model` for Encoded examples, in length-sorted micro-batches of `micro_batch`.

    `cache_layer`: the blocks below it (and the embedding) are frozen, so `encode` runs them once per example and
    caches their output (0: no cache). A model without the Llama layout (no model.layers / model.norm) runs whole,
    uncached, through its own forward."""

    task_type = "classification"

    def __init__(self, model, verbalizer_ids: list[int], device: torch.device | str = "cpu", micro_batch: int = 64,
                 cache_layer: int = 0):
        self.model = model
        self.device = torch.device(device)
        self.micro_batch = int(micro_batch)
        self.verb = torch.tensor(verbalizer_ids, dtype=torch.long, device=self.device)
        self.base, self.layers = decoder_parts(model)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = inner.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)
        # trainable.kind head: the verbalizer rows are a trained parameter of their own, in label order
        self.verbalizer_head = verbalizer_head(model)
        if self.verbalizer_head is not None and self.verbalizer_head.verbalizer_ids != [int(i) for i in verbalizer_ids]:
            raise ConfigError("task.verbalizer: the trained verbalizer head was built for other label words "
                              f"(token ids {self.verbalizer_head.verbalizer_ids}, not {list(verbalizer_ids)})")
        self.cache_layer = int(cache_layer) if self.base is not None else 0
        # The last block computed only at the last position: exact for Llama-style blocks (last_position_block).
        self.last_position_only = bool(self.layers is not None and type(self.layers[-1]).__name__ in _LAST_POS_OK)
        pid = getattr(model.config, "pad_token_id", None)
        self.pad_id = int(pid) if isinstance(pid, int) else 0

    # ------------------------------------------------------------------------------------ the frozen-prefix cache
    def encode(self, ids: list[list[int]], labels, disk_key: str | None = None, trees=None) -> Encoded:
        """Tokenized examples plus, when the lower blocks are frozen, their output (the frozen-prefix cache).

        With `disk_key` (identifying the model weights), the cache is also kept on disk under PRIVTUNE_CACHE, so
        runs that share a model, a trainable boundary and examples build it once.
        """
        data = Encoded([list(x) for x in ids], torch.as_tensor(labels, dtype=torch.long), trees=trees)
        if self.cache_layer == 0:
            return data
        path = self._disk_path(disk_key, data) if disk_key is not None else None
        if path is not None and path.exists():
            try:
                data.cache = self._trim(data, [t.to(self.device) for t in torch.load(path, weights_only=True)])
                return data
            except Exception:  # a torn or foreign file: rebuild it
                path.unlink(missing_ok=True)
        cache = self._prefix_states(data)
        if path is not None:
            buf = io.BytesIO()
            torch.save([t.cpu() for t in cache], buf)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
        data.cache = self._trim(data, cache)
        return data

    @torch.no_grad()
    def _prefix_states(self, data: Encoded) -> list[torch.Tensor]:
        """Per example [len_i, d]: the output of the embedding and the blocks below cache_layer."""
        cache = [None] * len(data)
        for chunk in self.chunks(data):
            ids, attn = self.pad(data, chunk)
            h = self.base.embed_tokens(ids)
            h = run_blocks(self.layers[:self.cache_layer], h, self._geometry(data, chunk, attn, h))
            for row, j in enumerate(chunk):
                cache[j] = h[row, h.shape[1] - len(data.ids[j]):].clone()
        return cache

    def _caches_everything(self) -> bool:
        return self.layers is not None and self.cache_layer == len(self.layers)

    def _trim(self, data: Encoded, cache: list[torch.Tensor]) -> list[torch.Tensor]:
        """When every block is cached only the last position is ever read: keep just that row."""
        return [c[-1:].clone() for c in cache] if self._caches_everything() else cache

    def _disk_path(self, disk_key: str, data: Encoded) -> Path:
        h = hashlib.sha256(f"{disk_key}|layer={self.cache_layer}|mb={self.micro_batch}|{self.device.type}".encode())
        for x in data.ids:
            h.update(b"|" + ",".join(map(str, x)).encode())
        for t in data.trees or ():  # a packed example's states depend on its tree mask and positions too
            h.update(f"|{t.branch}{t.pos}".encode())
        return cache_dir() / "prefix" / f"{h.hexdigest()[:40]}.pt"

    # --------------------------------------------------------------------------------------------- micro-batches
    def chunks(self, data: Encoded, idx=None) -> list[list[int]]:
        """The micro-batches the examples `idx` (distinct; None = all) are computed in, in their fixed order: a rank
        handed chunks r, r+P, ... of them computes exactly what one process computes (length_sorted_chunks)."""
        idx = range(len(data)) if idx is None else idx
        return length_sorted_chunks(data.ids, sorted({int(i) for i in idx}), self.micro_batch)

    def pad(self, data: Encoded, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded token ids and attention mask [B, T] of a chunk, on the device."""
        ids, attn = left_pad([data.ids[j] for j in chunk], self.pad_id)
        return ids.to(self.device), attn.to(self.device)

    def _start_states(self, data: Encoded, chunk: list[int]):
        """Input of the first computed block for a chunk: the cached prefix output, or token ids to embed."""
        if data.cache is not None and self._caches_everything():
            h = torch.stack([data.cache[j] for j in chunk])  # [B, 1, d]: the final hidden state at the last position
            return h, None, torch.ones((len(chunk), 1), dtype=torch.long, device=self.device)
        if data.cache is not None:
            h, attn = left_pad_states([data.cache[j] for j in chunk], self.device)
            return h, None, attn
        ids, attn = self.pad(data, chunk)
        return None, ids, attn

    # --------------------------------------------------------------------------------------------------- logits
    def chunk_logits(self, data: Encoded, chunks: list[list[int]], directions=(None,), perturbation=THETA
                     ) -> list[list[torch.Tensor]]:
        """Verbalizer logits [B, C] (float32) per direction per chunk. Layer-major: each block's perturbed weights
        (and z) are built once and used for every chunk and direction, then dropped, so memory stays ≈ inference.
        Autograd records the pass unless the caller turns it off (DP-SGD differentiates it; ZO passes do not)."""
        if self.base is None:
            return [[self._generic_logits(data, c, d, perturbation) for c in chunks] for d in directions]
        starts = [self._start_states(data, c) for c in chunks]
        start = self.cache_layer if data.cache is not None else 0
        n_layers = len(self.layers)
        geos = [self._geometry(data, c, attn, h0 if h0 is not None else self.base.embed_tokens.weight[:1, None])
                if start < n_layers else None for c, (h0, _, attn) in zip(chunks, starts)]
        head = (self.head_weight,)  # a trainable head's perturbed tensor must outlive the blocks: the head runs last
        if self.verbalizer_head is not None:
            head += (self.verbalizer_head.weight,)
        states = []
        for d in directions:
            with perturbation.at(d):
                states.append([h0 if h0 is not None else self.base.embed_tokens(ids) for h0, ids, _ in starts])
        perturbation.forget(directions, keep=head)
        for li in range(start, n_layers):
            layer = self.layers[li]
            run = self._last_block if (li == n_layers - 1 and self.last_position_only) else run_block
            for di, d in enumerate(directions):
                with perturbation.at(d):
                    states[di] = [run(layer, h, g) for h, g in zip(states[di], geos)]
            perturbation.forget(directions, keep=head)
        out = []
        for di, d in enumerate(directions):
            with perturbation.at(d):
                out.append(self._outputs(data, chunks, states[di], perturbation))
        perturbation.forget(directions)
        return out

    # ------------------------------------------------------ what a task type changes (zo.sequences overrides these)
    def _geometry(self, data: Encoded, chunk: list[int], attn: torch.Tensor, h: torch.Tensor) -> Geometry:
        """The geometry of a chunk's left-padded rows (a prompt is one causal sequence)."""
        return geometry(self.base.rotary_emb, attn, h)

    def _last_block(self, layer, h: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """The last block, computed only where the outputs read it: the last position of each prompt."""
        return last_position_block(layer, h, geo)

    def _outputs(self, data: Encoded, chunks: list[list[int]], states: list[torch.Tensor], perturbation
                 ) -> list[torch.Tensor]:
        """Per chunk, the [B, C] float32 logits of the verbalizer rows at the last position (under the active
        direction: the caller is inside perturbation.at)."""
        if self.verbalizer_head is not None:  # the head's own rows (the LM head's bias rows stay frozen)
            b = self.head_bias[self.verb] if self.head_bias is not None else None
            return [head_logits(self.base.norm, h, self.verbalizer_head, b) for h in states]
        w = perturbation.value(self.head_weight)[self.verb]
        b = perturbation.value(self.head_bias)[self.verb] if self.head_bias is not None else None
        return [last_position_logits(self.base.norm, h, w, b) for h in states]

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """The per-example training loss of a chunk's outputs: cross-entropy over the label words' logits."""
        return F.cross_entropy(outputs, labels.to(outputs.device), reduction=reduction)

    def confidence(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logit-scaled confidence of the true label, log p_y − log(1 − p_y) = z_y − logsumexp_{j≠y} z_j, float64
        [B] (Carlini et al., S&P 2022, "first principles"). A decreasing function of the loss, but it does not
        saturate: once the margin passes ~17 nats the float32 cross-entropy is exactly 0 for every confident example,
        and a membership attacker reading the loss can no longer rank them."""
        z = outputs.double()
        y = labels.to(z.device).long()[:, None]
        others = z.scatter(1, y, float("-inf"))
        return z.gather(1, y)[:, 0] - others.logsumexp(1)

    def _generic_logits(self, data: Encoded, chunk: list[int], d, perturbation) -> torch.Tensor:
        """Any HF causal LM (no prefix cache): full forward, last position only."""
        ids, attn = self.pad(data, chunk)
        try:
            with perturbation.at(d):
                out = self.model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn),
                                 logits_to_keep=1)
        finally:
            perturbation.forget([d])
        return out.logits[:, -1, self.verb].float()

    def per_example(self, data: Encoded, idx: list[int], fn, directions=(None,), perturbation=THETA
                    ) -> list[torch.Tensor]:
        """fn(chunk, logits of the chunk) per direction, computed chunk by chunk without autograd, then put back in
        `idx` order (duplicates allowed): one stacked tensor per direction."""
        chunks = self.chunks(data, idx)
        with torch.no_grad():
            per_dir = self.chunk_logits(data, chunks, directions, perturbation)
        results = []
        for rows in per_dir:
            by_example = {}
            for chunk, lg in zip(chunks, rows):
                for r, v in enumerate(fn(chunk, lg)):
                    by_example[chunk[r]] = v
            results.append(torch.stack([by_example[j] for j in idx]))
        return results
