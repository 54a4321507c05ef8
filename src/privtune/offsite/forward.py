"""Verbalizer logits of a Llama-style causal LM with gradients (the ZO engine's forward is no-grad by design).

Same geometry as privtune.zo.engine: left padding, position ids counted over real tokens, additive causal+padding
mask, logits only at the last position and only for the verbalizer rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Example, render
from ..errors import ConfigError


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(x) for x in batch)
    ids = torch.full((len(batch), T), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    for row, x in enumerate(batch):
        ids[row, T - len(x):] = torch.tensor(x, dtype=torch.long)
        attn[row, T - len(x):] = 1
    return ids, attn


def geometry(model, attn: torch.Tensor, h: torch.Tensor) -> dict:
    """What every block needs besides h: the additive causal+padding mask, position ids, rotary embeddings."""
    T = attn.shape[1]
    allowed = torch.ones((T, T), dtype=torch.bool).tril()[None] & attn[:, None, :].bool()
    mask = torch.zeros(allowed.shape, dtype=h.dtype).masked_fill(~allowed, torch.finfo(h.dtype).min)[:, None]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"attention_mask": mask, "position_ids": pos, "position_embeddings": model.model.rotary_emb(h, pos)}


def run_blocks(layers, h: torch.Tensor, geo: dict) -> torch.Tensor:
    for layer in layers:
        h = layer(h, **geo)
        h = h[0] if isinstance(h, tuple) else h
    return h


def verbalizer_logits(model, batch: list[list[int]], verb: list[int], pad_id: int = 0) -> torch.Tensor:
    """[B, C] float logits of the verbalizer tokens after each prompt in `batch` (token id lists)."""
    base = model.model
    ids, attn = pad_batch(batch, pad_id)
    h = base.embed_tokens(ids)
    h = run_blocks(base.layers, h, geometry(model, attn, h))
    head = model.get_output_embeddings().weight[torch.as_tensor(verb)]
    return (base.norm(h[:, -1]) @ head.T).float()


def encode(codec, template: str, examples: list[Example]) -> tuple[list[list[int]], torch.Tensor]:
    ids = [codec.encode(render(template, ex.text)) for ex in examples]
    return ids, torch.tensor([ex.label for ex in examples], dtype=torch.long)


def batches(n: int, size: int, order=None):
    order = list(range(n)) if order is None else list(order)
    return [order[s:s + size] for s in range(0, n, size)]


@torch.no_grad()
def accuracy(model, ids: list[list[int]], labels: torch.Tensor, verb: list[int], pad_id: int = 0,
             micro_batch: int = 16) -> tuple[float, int]:
    """Accuracy of argmax over the verbalizer logits (length-sorted micro-batches: little padding)."""
    if not ids:
        raise ConfigError("limit: no examples to evaluate")
    order = sorted(range(len(ids)), key=lambda j: (len(ids[j]), j))
    correct = 0
    for chunk in batches(len(ids), micro_batch, order):
        pred = verbalizer_logits(model, [ids[j] for j in chunk], verb, pad_id).argmax(-1)
        correct += int((pred == labels[chunk]).sum())
    return correct / len(ids), correct


def loss(model, ids: list[list[int]], labels: torch.Tensor, verb: list[int], pad_id: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the verbalizer logits of one batch (with gradients)."""
    return F.cross_entropy(verbalizer_logits(model, ids, verb, pad_id), labels)
