"""Verbalizer logits of a whole Llama-style causal LM with gradients, for the off-site emulator (no prefix cache, no
perturbation). The geometry is the ZO engine's own (privtune.zo.forward): left padding, position ids counted over real
tokens, additive causal+padding mask, logits only at the last position and only for the verbalizer rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Example, render
from ..errors import ConfigError
from ..zo.forward import geometry, last_position_logits, left_pad, length_sorted_chunks, run_blocks


def verbalizer_logits(model, batch: list[list[int]], verb: list[int], pad_id: int = 0) -> torch.Tensor:
    """[B, C] float logits of the verbalizer tokens after each prompt in `batch` (token id lists)."""
    base = model.model
    ids, attn = left_pad(batch, pad_id)
    h = base.embed_tokens(ids)
    h = run_blocks(base.layers, h, geometry(base.rotary_emb, attn, h))
    head = model.get_output_embeddings().weight[torch.as_tensor(verb)]
    return last_position_logits(base.norm, h, head)


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
    correct = 0
    for chunk in length_sorted_chunks(ids, range(len(ids)), micro_batch):
        pred = verbalizer_logits(model, [ids[j] for j in chunk], verb, pad_id).argmax(-1)
        correct += int((pred == labels[chunk]).sum())
    return correct / len(ids), correct


def loss(model, ids: list[list[int]], labels: torch.Tensor, verb: list[int], pad_id: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the verbalizer logits of one batch (with gradients)."""
    return F.cross_entropy(verbalizer_logits(model, ids, verb, pad_id), labels)
