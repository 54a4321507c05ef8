"""Multi-token targets on the shared forward: multiple-choice and generative (teacher-forced) tasks.

An example is packed into ONE sequence: its prompt, then every branch (a multiple-choice item's choices, or a
generative example's gold answer followed by the stop string). A branch's tokens see the prompt and the earlier
tokens of their own branch only (a tree mask), and count their positions from the prompt's end, so each branch is
scored exactly as if it followed the prompt alone, while the choices of one question share the prompt's computation
(one pass over the prompt, not one per choice).

The output of a row is read only where it predicts a target token (the branch tokens): the last block runs its
queries only there (`positions_block`, the multi-position form of zo.forward.last_position_block), and when every
block is frozen the frozen-prefix cache keeps only those rows. The LM head (full vocabulary) then gives each target
token's log-probability, summed per branch:
* multiple_choice: outputs [B, C] = each choice's score, the sum (task.choice_score "sum") or the per-token mean
  ("mean") of its tokens' log-probs; a missing choice (an item with fewer than C) is −inf. The loss is the
  cross-entropy over the choices, the prediction their argmax, as for classification's label words.
* generation: outputs [B, 1] = the mean log-prob of the answer's tokens; the loss is its negative (the mean token
  cross-entropy under teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..trainable import verbalizer_head
from .decode import cut_at, greedy
from .forward import Encoded, Forward, Geometry, run_block

SEQUENCE_TYPES = ("multiple_choice", "generation")


@dataclass(frozen=True)
class Tree:
    """The layout of one packed example (token k of the packed ids is described by branch[k] and pos[k])."""

    branch: tuple[int, ...]  # -1: a prompt token; b: a token of branch b
    pos: tuple[int, ...]  # its position id: the prompt's 0..P-1, then P.. again for every branch
    pred: tuple[int, ...]  # for each target token, the packed index whose output predicts it
    target: tuple[int, ...]  # the target token ids, branch after branch
    tbranch: tuple[int, ...]  # each target's branch
    n_branches: int


def pack(prompt: list[int], branches: list[list[int]]) -> tuple[list[int], Tree]:
    """The packed token ids of a prompt and its branches, and their tree."""
    if not prompt:
        raise DataError("task: a prompt encodes to no tokens")
    P = len(prompt)
    ids, branch, pos = list(prompt), [-1] * P, list(range(P))
    pred, target, tbranch = [], [], []
    for b, toks in enumerate(branches):
        if not toks:
            raise DataError("task: an answer or choice encodes to no tokens")
        start = len(ids)
        for j, tok in enumerate(toks):
            pred.append(P - 1 if j == 0 else start + j - 1)
            target.append(int(tok))
            tbranch.append(b)
        ids.extend(int(t) for t in toks)
        branch.extend([b] * len(toks))
        pos.extend(range(P, P + len(toks)))
    return ids, Tree(tuple(branch), tuple(pos), tuple(pred), tuple(target), tuple(tbranch), len(branches))


class TreeGeometry(NamedTuple):
    """zo.forward.Geometry plus where the last block's queries are read: query [B, Q], padded indices into T."""

    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    query: torch.Tensor


def positions_block(layer, h: torch.Tensor, geo: TreeGeometry) -> torch.Tensor:
    """A Llama decoder block evaluated only at the positions geo.query: [B,T,d] → [B,Q,d] (keys and values for all
    positions). Exact for Llama-style blocks: a position's output depends on the others only through its keys and
    values."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    cos, sin = geo.position_embeddings
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    B, T, d = x.shape
    Q, hd = geo.query.shape[1], attn.head_dim
    at = geo.query[..., None]
    q = attn.q_proj(x.gather(1, at.expand(-1, -1, d))).view(B, Q, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, -1, hd).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
    cq, sq = cos.gather(1, at.expand(-1, -1, cos.shape[-1])), sin.gather(1, at.expand(-1, -1, sin.shape[-1]))
    q, _ = apply_rotary_pos_emb(q, q, cq, sq)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, rep), repeat_kv(v, rep)
    mask = geo.attention_mask.gather(2, geo.query[:, None, :, None].expand(-1, 1, -1, T))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
    h_q = h.gather(1, at.expand(-1, -1, h.shape[-1])) + attn.o_proj(o.transpose(1, 2).reshape(B, Q, -1))
    return h_q + layer.mlp(layer.post_attention_layernorm(h_q))


@dataclass(frozen=True)
class SeqSpec:
    """What a multiple-choice or generative task asks of the forward: how choices are scored, and for generation
    how answers are decoded (the codec turns ids back into text)."""

    task_type: str
    choice_score: str = "sum"
    codec: object = None
    stop: str = "\n"
    max_new_tokens: int = 32
    min_new_tokens: int = 1  # decoding never stops before this many new tokens


class SequenceForward(Forward):
    """Forward for multiple_choice and generation tasks: per-example choice scores or answer log-probs (module
    docstring), and for generation greedy answers (`generate`). Needs the Llama layout (model.layers, model.norm)."""

    def __init__(self, model, spec: SeqSpec, device="cpu", micro_batch: int = 64, cache_layer: int = 0):
        task_type = spec.task_type
        if task_type not in SEQUENCE_TYPES:
            raise ConfigError(f"task.type: {task_type!r} is not one of {', '.join(SEQUENCE_TYPES)}")
        if verbalizer_head(model) is not None:
            raise ConfigError(f"trainable.kind: the head kinds train label words' rows; a {task_type} task has none "
                              "(use final_norm, lora, norms or top_layers:K)")
        super().__init__(model, [], device, micro_batch, cache_layer)
        if self.base is None:
            raise ConfigError(f"model.name: task.type {task_type} needs a Llama-style decoder (model.layers, "
                              "model.norm)")
        self.spec = spec
        self.exact_positions = self.last_position_only  # Llama-style blocks: queries only where targets are read
        self.last_position_only = True  # the last block always goes through _last_block (which gathers)

    # The spec is the one source of what the task asks; these read it (callers check forward.task_type whatever
    # the forward's class: Forward's is "classification").
    @property
    def task_type(self) -> str:
        return self.spec.task_type

    @property
    def choice_score(self) -> str:
        return self.spec.choice_score

    # ------------------------------------------------------------------------------------------ encoding
    def encode_packed(self, prompts: list[list[int]], branches: list[list[list[int]]], labels,
                      disk_key: str | None = None) -> Encoded:
        """Examples as packed sequences (their prompt and branches, see `pack`), plus the frozen-prefix cache."""
        packed = [pack(p, b) for p, b in zip(prompts, branches)]
        return self.encode([ids for ids, _ in packed], labels, disk_key, trees=[t for _, t in packed])

    def _trim(self, data: Encoded, cache: list[torch.Tensor]) -> list[torch.Tensor]:
        """When every block is cached only the rows that predict a target are ever read: keep just those."""
        if not self._caches_everything():
            return cache
        return [c[list(t.pred)].clone() for c, t in zip(cache, data.trees)]

    def _start_states(self, data: Encoded, chunk: list[int]):
        if data.cache is not None and self._caches_everything():  # [B, Q, d], rows in target order, right-padded
            rows = [data.cache[j] for j in chunk]
            Q = max(r.shape[0] for r in rows)
            h = rows[0].new_zeros((len(rows), Q, rows[0].shape[-1]))
            for r, s in enumerate(rows):
                h[r, :s.shape[0]] = s
            return h, None, torch.ones((len(chunk), Q), dtype=torch.long, device=self.device)
        return super()._start_states(data, chunk)

    # ------------------------------------------------------------------------------------------ geometry
    def _geometry(self, data: Encoded, chunk: list[int], attn: torch.Tensor, h: torch.Tensor) -> TreeGeometry:
        """Left-padded rows under the tree mask: a token sees earlier prompt tokens and earlier tokens of its own
        branch; a row's queries for the last block are its target-predicting positions."""
        B, T = attn.shape
        trees = [data.trees[j] for j in chunk]
        branch = torch.full((B, T), -2, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        Q = max(len(t.pred) for t in trees)
        query = torch.full((B, Q), T - 1, dtype=torch.long)
        for r, t in enumerate(trees):
            off = T - len(t.branch)
            branch[r, off:] = torch.tensor(t.branch)
            pos[r, off:] = torch.tensor(t.pos)
            query[r, :len(t.pred)] = torch.tensor(t.pred) + off
        branch, pos, query = branch.to(attn.device), pos.to(attn.device), query.to(attn.device)
        key, q_branch = branch[:, None, :], branch[:, :, None]
        causal = torch.ones((T, T), dtype=torch.bool, device=attn.device).tril()
        allowed = causal[None] & (key != -2) & ((key == -1) | (key == q_branch))
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=attn.device).masked_fill(~allowed,
                                                                                        torch.finfo(h.dtype).min)
        return TreeGeometry(mask[:, None], pos, self.base.rotary_emb(h, pos), query)

    def _last_block(self, layer, h: torch.Tensor, geo: TreeGeometry) -> torch.Tensor:
        if self.exact_positions:
            return positions_block(layer, h, geo)
        full = run_block(layer, h, Geometry(geo.attention_mask, geo.position_ids, geo.position_embeddings))
        return full.gather(1, geo.query[..., None].expand(-1, -1, full.shape[-1]))

    # ------------------------------------------------------------------------------------------- outputs
    def _outputs(self, data: Encoded, chunks: list[list[int]], states: list[torch.Tensor], perturbation
                 ) -> list[torch.Tensor]:
        w = perturbation.value(self.head_weight)
        b = perturbation.value(self.head_bias) if self.head_bias is not None else None
        width = max(t.n_branches for t in data.trees)
        return [self._scores(data, chunk, h, w, b, width) for chunk, h in zip(chunks, states)]

    def _scores(self, data: Encoded, chunk: list[int], h: torch.Tensor, w, b, width: int) -> torch.Tensor:
        trees = [data.trees[j] for j in chunk]
        B, Q = len(trees), h.shape[1]
        target = torch.zeros((B, Q), dtype=torch.long)
        tbranch = torch.full((B, Q), width, dtype=torch.long)  # padding goes to a column that is dropped
        for r, t in enumerate(trees):
            target[r, :len(t.target)] = torch.tensor(t.target)
            tbranch[r, :len(t.tbranch)] = torch.tensor(t.tbranch)
        target, tbranch = target.to(h.device), tbranch.to(h.device)
        lg = F.linear(self.base.norm(h), w, b).float()  # [B, Q, V]
        lp = lg.log_softmax(-1).gather(-1, target[..., None])[..., 0]
        valid = tbranch < width
        lp = torch.where(valid, lp, torch.zeros_like(lp))
        sums = lp.new_zeros((B, width + 1)).scatter_add(1, tbranch, lp)[:, :width]
        counts = valid.float().new_zeros((B, width + 1)).scatter_add(1, tbranch, valid.float())[:, :width]
        if self.task_type == "generation":
            return sums / counts  # [B, 1]: the mean log-prob of the answer's tokens
        scores = sums / counts if self.choice_score == "mean" else sums
        return scores.masked_fill(counts == 0, float("-inf"))  # an item with fewer choices than the widest

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """multiple_choice: cross-entropy over the choices' scores; generation: the answer's mean token NLL."""
        if self.task_type == "multiple_choice":
            return super().loss(outputs, labels, reduction)
        nll = -outputs[:, 0]
        return {"none": nll, "sum": nll.sum(), "mean": nll.mean()}[reduction]

    def confidence(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """multiple_choice: the true choice's logit-scaled confidence over the choices (Forward.confidence);
        generation: the answer's mean token log-prob (a sum over the vocabulary per token has no one "other" class)."""
        if self.task_type == "multiple_choice":
            return super().confidence(outputs, labels)
        return outputs[:, 0].double()

    # ------------------------------------------------------------------------------------------ decoding
    def generate(self, prompts: list[list[int]], callback=None) -> list[str]:
        """Greedy answers (text cut at the stop string) of the model at θ for token-id prompts (zo.decode)."""
        codec, spec = self.spec.codec, self.spec
        if codec is None:
            raise ValueError("SequenceForward.generate: no codec to decode with (SeqSpec.codec)")
        out = greedy(self.model, prompts, spec.max_new_tokens, codec.stop_ids(spec.stop), self.pad_id, self.device,
                     max(1, min(self.micro_batch, 16)), callback, spec.min_new_tokens)
        return [cut_at(codec.decode(ids), spec.stop) for ids in out]
