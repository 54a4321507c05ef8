"""Scores of a whole Llama-style causal LM with gradients, for the off-site emulator (no prefix cache, no
perturbation): verbalizer logits for classification, SequenceForward's choice scores for multiple choice (below).
The classification geometry is the ZO engine's own (privtune.zo.forward): left padding, position ids counted over
real tokens, additive causal+padding mask, logits only at the last position and only for the verbalizer rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Example, Task, render, render_example
from ..errors import ConfigError
from ..zo.forward import geometry, last_position_logits, left_pad, length_sorted_chunks, run_blocks
from ..zo.sequences import SeqSpec, SequenceForward, pack


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


# ------------------------------------------------------------------------------------------------ task batches
# The tuning loop, GradOT's calibration and the evaluation see a task's examples through one small interface:
# `ids` (the token sequences a forward pads, in example order), `labels`, `loss(model, idx)` (mean over idx, with
# gradients) and `accuracy(model)`. Classification keeps the verbalizer functions above unchanged; multiple choice
# is scored by the ZO engine's own SequenceForward (zo.sequences), so there is one choice scorer in privtune.


class Classification:
    """Classification examples: verbalizer logits at the prompt's last token (the functions above)."""

    def __init__(self, ids: list[list[int]], labels: torch.Tensor, verb: list[int], pad_id: int = 0):
        self.ids, self.labels, self.verb, self.pad_id = ids, labels, verb, pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def loss(self, model, idx: list[int]) -> torch.Tensor:
        return loss(model, [self.ids[j] for j in idx], self.labels[idx], self.verb, self.pad_id)

    def accuracy(self, model, micro_batch: int = 16) -> tuple[float, int]:
        return accuracy(model, self.ids, self.labels, self.verb, self.pad_id, micro_batch)


class MultipleChoice:
    """Multiple-choice examples packed as the ZO engine packs them (prompt, then " " + each choice, tree mask;
    zo.sequences.pack). A choice's score is SequenceForward's: the sum (task.choice_score "sum") or per-token mean
    of its tokens' log-probs; the loss is the cross-entropy over the choices, the prediction their argmax."""

    def __init__(self, codec, template: str, examples: list[Example], choice_score: str = "sum"):
        if not examples:
            raise ConfigError("task: no multiple-choice examples to score")
        self.spec = SeqSpec("multiple_choice", choice_score)
        self.prompts = [codec.encode(render_example(template, ex)) for ex in examples]
        self.branches = [[codec.continuation(" " + c) for c in ex.choices] for ex in examples]
        self.labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        # the packed sequences as the forward pads them (GradOT's K-FAC hooks read their padding mask)
        self.ids = [pack(p, b)[0] for p, b in zip(self.prompts, self.branches)]
        self._data = None

    def __len__(self) -> int:
        return len(self.prompts)

    def forward(self, model) -> SequenceForward:
        """The scorer for `model` (no frozen-prefix cache: offsite tuning trains the bottom blocks)."""
        return SequenceForward(model, self.spec, cache_layer=0)

    def data(self, fwd: SequenceForward):
        # Without a prefix cache the packed sequences do not depend on the model: pack once, reuse for every model.
        if self._data is None:
            self._data = fwd.encode_packed(self.prompts, self.branches, self.labels)
        return self._data

    def scores(self, model, idx: list[int]) -> torch.Tensor:
        """[B, C] choice scores of examples idx (−inf where an item has fewer choices), with autograd."""
        fwd = self.forward(model)
        return fwd.chunk_logits(self.data(fwd), [list(idx)])[0][0]

    def loss(self, model, idx: list[int]) -> torch.Tensor:
        """Mean cross-entropy over the choices' scores of examples idx (SequenceForward.loss), with autograd."""
        fwd = self.forward(model)
        scores = fwd.chunk_logits(self.data(fwd), [list(idx)])[0][0]
        return fwd.loss(scores, self.labels[list(idx)], reduction="mean")

    @torch.no_grad()
    def accuracy(self, model, micro_batch: int = 16) -> tuple[float, int]:
        """Accuracy of the argmax over the choices (length-sorted micro-batches, as the engine chunks them)."""
        fwd = self.forward(model)
        fwd.micro_batch = micro_batch
        data = self.data(fwd)
        correct = 0
        for chunk in fwd.chunks(data):
            pred = fwd.chunk_logits(data, [chunk])[0][0].argmax(-1)
            correct += int((pred == self.labels[chunk]).sum())
        return correct / len(self), correct


def task_examples(codec, task: Task, examples: list[Example]):
    """`examples` of `task` behind the interface above (Classification or MultipleChoice)."""
    if task.type == "classification":
        ids, labels = encode(codec, task.template, examples)
        return Classification(ids, labels, codec.verbalizer_ids(task.verbalizer), codec.pad_id)
    if task.type == "multiple_choice":
        return MultipleChoice(codec, task.template, examples, task.choice_score)
    raise ConfigError(f"--task: offsite tuning handles classification and multiple_choice tasks; {task.name} is a "
                      f"{task.type} task")
