"""Packed multi-token scoring (zo.sequences) equals scoring each choice / answer after its prompt on its own."""

from __future__ import annotations

import pytest
import torch

from privtune.errors import ConfigError, DataError
from privtune.models import build_tiny
from privtune.trainable import select
from privtune.zo.forward import Forward
from privtune.zo.sequences import SeqSpec, SequenceForward, pack

PROMPTS = [[1, 5, 9, 14, 3], [1, 7, 2], [1, 30, 31, 32, 33, 34, 35, 36]]
BRANCHES = [[[40, 41], [42], [43, 44, 45]], [[50], [51, 52]], [[60, 61, 62], [63], [64], [65, 66]]]
LABELS = [2, 0, 3]


def reference(model, prompt, branch) -> torch.Tensor:
    """Σ log p(branch tokens | prompt, earlier branch tokens), from the model's own full forward of one sequence."""
    ids = torch.tensor([prompt + branch])
    with torch.no_grad():
        lp = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    P = len(prompt)
    return sum(lp[P - 1 + j, tok] for j, tok in enumerate(branch))


def scores(kind: str, task_type: str, choice_score: str = "sum", use_cache: bool = True, micro_batch: int = 2):
    lm = build_tiny(0)
    sel = select(lm.model, kind)
    fwd = SequenceForward(sel.model, SeqSpec(task_type, choice_score), micro_batch=micro_batch,
                          cache_layer=sel.first_trainable_layer if use_cache else 0)
    branches = BRANCHES if task_type == "multiple_choice" else [b[:1] for b in BRANCHES]
    data = fwd.encode_packed(PROMPTS, branches, LABELS if task_type == "multiple_choice" else [0, 0, 0])
    out = fwd.per_example(data, [0, 1, 2], lambda c, rows: rows)[0]
    return lm, sel.model, fwd, data, out


@pytest.mark.parametrize("kind,use_cache", [("final_norm", True), ("final_norm", False), ("top_layers:2", True),
                                            ("lora", False)])
def test_packed_choices_score_like_separate_sequences(kind, use_cache):
    lm, model, fwd, data, out = scores(kind, "multiple_choice", use_cache=use_cache)
    assert out.shape == (3, 4)
    for i, (p, bs) in enumerate(zip(PROMPTS, BRANCHES)):
        for k, b in enumerate(bs):
            assert out[i, k].item() == pytest.approx(float(reference(model, p, b)), abs=1e-4)
        assert torch.isneginf(out[i, len(bs):]).all()  # fewer choices than the widest item


def test_mean_choice_score_divides_by_each_choice_length():
    _, model, _, _, out = scores("final_norm", "multiple_choice", "mean")
    for k, b in enumerate(BRANCHES[0]):
        assert out[0, k].item() == pytest.approx(float(reference(model, PROMPTS[0], b)) / len(b), abs=1e-4)


def test_multiple_choice_loss_is_cross_entropy_over_the_choices():
    _, _, fwd, data, out = scores("final_norm", "multiple_choice")
    loss = fwd.loss(out, data.labels)
    expect = -(out.log_softmax(-1)[torch.arange(3), data.labels])
    assert torch.allclose(loss, expect)
    assert torch.isfinite(loss).all()


def test_generation_output_is_the_answers_mean_log_prob_and_loss_its_negative():
    _, model, fwd, data, out = scores("top_layers:1", "generation")
    assert out.shape == (3, 1)
    for i, (p, bs) in enumerate(zip(PROMPTS, BRANCHES)):
        assert out[i, 0].item() == pytest.approx(float(reference(model, p, bs[0])) / len(bs[0]), abs=1e-4)
    assert torch.allclose(fwd.loss(out, data.labels), -out[:, 0])


def test_cache_keeps_only_the_target_rows_when_every_block_is_frozen():
    _, _, fwd, data, _ = scores("final_norm", "multiple_choice")
    assert [c.shape[0] for c in data.cache] == [6, 3, 7]  # one row per target token


def test_micro_batch_does_not_change_the_scores():
    a = scores("top_layers:2", "multiple_choice", micro_batch=1)[-1]
    b = scores("top_layers:2", "multiple_choice", micro_batch=3)[-1]
    assert torch.allclose(a, b, atol=1e-5)


def test_pack_layout():
    ids, t = pack([1, 2, 3], [[7, 8], [9]])
    assert ids == [1, 2, 3, 7, 8, 9]
    assert t.branch == (-1, -1, -1, 0, 0, 1) and t.pos == (0, 1, 2, 3, 4, 3)
    assert t.pred == (2, 3, 2) and t.target == (7, 8, 9) and t.tbranch == (0, 0, 1)
    with pytest.raises(DataError):
        pack([1], [[]])


def test_head_kinds_and_non_llama_models_are_refused():
    lm = build_tiny(0)
    sel = select(lm.model, "head", verbalizer_ids=[5, 6])
    with pytest.raises(ConfigError, match="trainable.kind"):
        SequenceForward(sel.model, SeqSpec("multiple_choice"))


def test_the_spec_is_the_one_source_of_task_type_and_choice_score():
    """SequenceForward takes the task's type and choice scoring only from its SeqSpec, and its task_type /
    choice_score (read by zo.sums, BBoxER) are that spec's, read-only: they cannot drift apart from it."""
    sel = select(build_tiny(0).model, "final_norm")
    spec = SeqSpec("multiple_choice", "mean")
    fwd = SequenceForward(sel.model, spec)
    assert fwd.spec is spec and (fwd.task_type, fwd.choice_score) == ("multiple_choice", "mean")
    with pytest.raises(AttributeError):
        fwd.choice_score = "sum"
    with pytest.raises(ConfigError, match="task.type: 'classification'"):
        SequenceForward(sel.model, SeqSpec("classification"))


def test_classification_forward_unchanged_by_trees():
    lm = build_tiny(0)
    sel = select(lm.model, "final_norm")
    fwd = Forward(sel.model, [5, 6], cache_layer=sel.first_trainable_layer)
    data = fwd.encode(PROMPTS, [0, 1, 0])
    assert data.trees is None and [c.shape[0] for c in data.cache] == [1, 1, 1]
