"""The shared forward (zo.forward): left padding and geometry, micro-batches, the frozen-prefix cache on disk, and
one implementation behind the engine, the off-site emulator and the audit."""

import numpy as np
import torch

from privtune.audit.attacks import token_stats
from privtune.models import build_tiny
from privtune.offsite import forward as OF
from privtune.trainable import select
from privtune.zo.forward import (Encoded, Forward, geometry, left_pad, left_pad_states, length_sorted_chunks,
                                 position_ids)

TEXTS = ["a fine film", "the worst thing i have seen in years , truly", "ok", "great great great acting here",
         "not bad at all but too long", "dull", "a charming , funny and moving story", "why"]


def tiny(cache_layer=0, micro=4):
    lm = build_tiny(0)
    fwd = Forward(lm.model, lm.codec.verbalizer_ids([" bad", " good"]), micro_batch=micro, cache_layer=cache_layer)
    return lm, fwd, [lm.codec.encode(t) for t in TEXTS]


def test_left_pad_puts_every_last_token_at_the_last_position():
    ids, attn = left_pad([[5, 6, 7], [8]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and attn.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(attn).tolist() == [[0, 1, 2], [0, 0, 0]]  # a padded prompt sees the positions it has alone
    h, m = left_pad_states([torch.ones(2, 3), torch.full((1, 3), 2.0)])
    assert h.shape == (2, 2, 3) and m.tolist() == [[1, 1], [0, 1]]
    assert h[1, 0].abs().sum() == 0 and torch.equal(h[1, 1], torch.full((3,), 2.0))


def test_geometry_masks_padding_and_the_future():
    lm, fwd, _ = tiny()
    attn = torch.tensor([[0, 1, 1]])
    h = torch.zeros(1, 3, 4)
    geo = geometry(fwd.base.rotary_emb, attn, h)
    allowed = geo.attention_mask[0, 0] == 0
    assert allowed.tolist() == [[False, False, False], [False, True, False], [False, True, True]]
    assert geo.position_ids.tolist() == [[0, 0, 1]]


def test_chunks_of_a_union_of_whole_chunks_are_those_chunks():
    """What makes sharding exact: rank r handed chunks r, r+P, ... recomputes exactly those micro-batches."""
    rng = np.random.default_rng(0)
    fwd = Forward.__new__(Forward)
    fwd.micro_batch = 4
    data = Encoded([[1] * int(n) for n in rng.integers(1, 9, 37)], torch.zeros(37, dtype=torch.long))
    idx = rng.choice(37, 30, replace=False).tolist()
    chunks = fwd.chunks(data, idx)
    assert sorted(j for c in chunks for j in c) == sorted(idx)
    for P in (2, 3, 5):
        for r in range(P):
            mine = chunks[r::P]
            assert fwd.chunks(data, [j for c in mine for j in c]) == mine


def test_length_sorted_chunks_sort_by_length_then_index():
    ids = [[1] * n for n in (3, 1, 2, 1, 3)]
    assert length_sorted_chunks(ids, range(5), 2) == [[1, 3], [2, 0], [4]]


def test_duplicate_indices_and_order_preserved():
    _, fwd, ids = tiny()
    data = fwd.encode(ids, [0] * len(ids))
    lg = fwd.per_example(data, [3, 1, 3, 0], lambda c, rows: rows)[0]
    assert torch.equal(lg[0], lg[2])
    assert torch.allclose(lg[1], fwd.per_example(data, [1], lambda c, rows: rows)[0][0], atol=1e-6)


def test_the_offsite_forward_is_the_same_computation():
    """offsite.forward (with gradients, whole model) and Forward give the same logits bit for bit on one batch in
    Forward's order, once Forward runs its last block in full too."""
    lm, fwd, ids = tiny(micro=len(TEXTS))
    fwd.last_position_only = False
    data = fwd.encode(ids, [0] * len(ids))
    order = fwd.chunks(data)[0]
    with torch.no_grad():
        ours = fwd.chunk_logits(data, [order])[0][0]
        theirs = OF.verbalizer_logits(lm.model, [ids[j] for j in order], fwd.verb.tolist(), fwd.pad_id)
    assert torch.equal(ours, theirs)


def test_chunk_logits_keep_autograd_for_a_first_order_caller():
    lm, fwd, ids = tiny(cache_layer=1)
    sel = select(lm.model, "top_layers:1", seed=0)
    data = fwd.encode(ids, [0] * len(ids))
    lg = fwd.chunk_logits(data, fwd.chunks(data)[:1])[0][0]
    lg.sum().backward()
    assert all(p.grad is not None for _, p in sel.params)


def test_audit_token_stats_of_a_padded_batch_equal_one_at_a_time():
    lm, _, ids = tiny()
    batched = token_stats(lm.model, ids, "cpu", lm.codec.pad_id, micro_batch=4)
    for j in (0, 2, 6):
        alone = token_stats(lm.model, [ids[j]], "cpu", lm.codec.pad_id)[0]
        for k in ("logp", "mu", "sigma"):  # float32 sums over the vocabulary, blocked differently when padded
            assert np.allclose(batched[j][k], alone[k], rtol=1e-3, atol=1e-5)


def test_prefix_cache_on_disk_is_reused_and_a_torn_file_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path))
    _, fwd, ids = tiny(cache_layer=2)
    built = fwd.encode(ids, [0] * len(ids), disk_key="tiny-0")
    files = list((tmp_path / "prefix").glob("*.pt"))
    assert len(files) == 1
    loaded = fwd.encode(ids, [0] * len(ids), disk_key="tiny-0")
    assert all(torch.equal(a, b) for a, b in zip(built.cache, loaded.cache))
    files[0].write_bytes(b"torn")
    rebuilt = fwd.encode(ids, [0] * len(ids), disk_key="tiny-0")
    assert all(torch.equal(a, b) for a, b in zip(built.cache, rebuilt.cache))
    assert len(torch.load(files[0], weights_only=True)) == len(ids)  # rewritten whole
    assert fwd.encode(ids, [0] * len(ids)).cache is not None and len(list((tmp_path / "prefix").iterdir())) == 1


def test_confidence_is_the_logit_scaled_probability_and_does_not_saturate():
    """Forward.confidence = log p_y − log(1 − p_y): equal to it where float64 can compute it from the softmax, and still
    ranking examples whose float32 loss is exactly 0 (what a memorising run gives its members and its confident
    non-members alike)."""
    _, fwd, _ = tiny()
    z = torch.tensor([[1.0, -0.5, 0.2], [0.0, 3.0, -1.0], [-2.0, 0.5, 0.1]])
    y = torch.tensor([0, 1, 2])
    p = z.double().softmax(-1).gather(1, y[:, None])[:, 0]
    assert torch.allclose(fwd.confidence(z, y), (p / (1 - p)).log(), atol=1e-12)
    sat = torch.tensor([[30.0, 0.0], [40.0, 0.0]])  # margins 30 and 40 nats
    label = torch.tensor([0, 0])
    assert fwd.loss(sat, label).eq(0).all()  # the loss ties them ...
    assert fwd.confidence(sat, label).tolist() == [30.0, 40.0]  # ... the margin does not
    # a missing choice (−inf score, a multiple-choice item with fewer choices) is no competitor
    mc = torch.tensor([[2.0, 1.0, float("-inf")]])
    assert fwd.confidence(mc, torch.tensor([0])).item() == 1.0
