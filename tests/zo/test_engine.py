import pytest
import torch

from privtune.models import build_tiny
from privtune.trainable import select
from privtune.zo.engine import Direction, ZOEngine, derive_seed, direction_seed

TEXTS = ["a fine film", "the worst thing i have seen in years , truly", "ok", "great great great acting here",
         "not bad at all but too long", "dull", "a charming , funny and moving story", "why"] * 2


def make(kind="top_layers:2", cache=True, micro=4, seed=0):
    lm = build_tiny(seed)
    sel = select(lm.model, kind, seed=seed)
    eng = ZOEngine(sel, lm.codec.verbalizer_ids([" bad", " good"]), micro_batch=micro, use_cache=cache)
    data = eng.encode([lm.codec.encode(t) for t in TEXTS], [i % 2 for i in range(len(TEXTS))])
    return sel, eng, data


def snapshot(sel):
    return {n: p.detach().clone() for n, p in sel.params}


@pytest.mark.parametrize("kind", ["top_layers:2", "full", "norms", "lora"])
def test_theta_bitwise_unchanged_after_perturbed_passes(kind):
    sel, eng, data = make(kind)
    before = snapshot(sel)
    for s in range(3):
        eng.pair_losses(data, None, direction_seed(0, s), 1e-2)
    assert all(torch.equal(before[n], p) for n, p in sel.params)


def test_perturbation_changes_losses_and_sign_matters():
    sel, eng, data = make()
    base = eng.losses(data)
    lp, lm = eng.pair_losses(data, None, 11, 1e-1)
    assert not torch.allclose(base.double(), lp) and not torch.allclose(lp, lm)


def test_same_seed_same_direction_different_seed_different():
    p = torch.zeros(5, 7)
    a, b, c = Direction(42, 1.0).z(3, p), Direction(42, 1.0).z(3, p), Direction(43, 1.0).z(3, p)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(Direction(42, 1.0).z(4, p), a)  # each parameter has its own stream
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)


def test_batched_per_example_losses_equal_one_at_a_time():
    sel, eng, data = make(cache=False, micro=16)
    d = Direction(5, 1e-2)
    batched = eng.losses(data, None, d)
    single = torch.stack([eng.losses(data, [i], Direction(5, 1e-2))[0] for i in range(len(data))])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("kind", ["top_layers:1", "top_layers:3", "lora_top", "final_norm"])
def test_prefix_cache_losses_equal_uncached(kind):
    if kind == "lora_top":
        lm = build_tiny(0)
        from privtune.trainable import LoraSpec
        sel = select(lm.model, "lora", LoraSpec(r=2, layers=2))
        assert sel.first_trainable_layer == 2
        verb = lm.codec.verbalizer_ids([" bad", " good"])
        ids = [lm.codec.encode(t) for t in TEXTS]
        e1, e2 = ZOEngine(sel, verb, use_cache=True), ZOEngine(sel, verb, use_cache=False)
        d1, d2 = e1.encode(ids, [0] * len(ids)), e2.encode(ids, [0] * len(ids))
    else:
        sel, e1, d1 = make(kind, cache=True)
        e2 = ZOEngine(sel, e1.verb.tolist(), micro_batch=4, use_cache=False)
        d2 = e2.encode(d1.ids, d1.labels)
    assert d1.cache is not None and d2.cache is None
    for direction in (None, Direction(9, 1e-2), Direction(9, -1e-2)):
        assert torch.allclose(e1.losses(d1, None, direction), e2.losses(d2, None, direction), atol=1e-5)


def test_duplicate_indices_and_order_preserved():
    sel, eng, data = make()
    idx = [3, 1, 3, 0]
    lg = eng.logits(data, idx)
    assert torch.equal(lg[0], lg[2])
    assert torch.allclose(lg[1], eng.logits(data, [1])[0], atol=1e-6)


def test_update_moves_along_z_only_trainable():
    sel, eng, data = make("top_layers:1")
    frozen = {n: p.clone() for n, p in sel.model.named_parameters() if not p.requires_grad}
    before = snapshot(sel)
    eng.apply_update([(7, 2.0)], lr=0.5, weight_decay=0.0)
    for i, (n, p) in enumerate(sel.params):
        expect = before[n] - 0.5 * 2.0 * Direction(7, 1.0).z(i, p)
        assert torch.allclose(p, expect, atol=1e-6)
    for n, p in sel.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])


def test_weight_decay_only_on_matrices():
    sel, eng, _ = make("top_layers:1")
    before = snapshot(sel)
    eng.apply_update([(7, 0.0)], lr=0.1, weight_decay=0.5)
    for n, p in sel.params:
        if p.ndim >= 2:
            assert torch.allclose(p, before[n] * (1 - 0.05), atol=1e-7)
        else:
            assert torch.equal(p, before[n])


def test_zo_scalar_approximates_directional_derivative():
    # g = (ℓ(θ+εz) − ℓ(θ−εz))/2ε → z·∇ℓ as ε → 0 (checked against autograd)
    sel, eng, data = make("norms", cache=False)
    seed, eps = 21, 1e-3
    g = eng.scalars(data, [0, 1, 2], seed, eps).mean()
    params = [p for _, p in sel.params]
    with torch.enable_grad():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(
            _grad_logits(eng, data, [0, 1, 2]), data.labels[[0, 1, 2]]).backward()
    dd = sum((p.grad * Direction(seed, 1.0).z(i, p)).sum() for i, p in enumerate(params))
    assert abs(float(g) - float(dd)) < 1e-2 * max(1.0, abs(float(dd)))


def _grad_logits(eng, data, idx):
    ids, attn = eng._pad(data, idx)
    h = eng.base.embed_tokens(ids)
    h = eng._run_layers(h, attn, 0, len(eng.layers))
    return eng.base.norm(h[:, -1]) @ eng.head_weight[eng.verb].T


@pytest.mark.parametrize("kind", ["top_layers:1", "lora", "full"])
def test_last_position_block_equals_full_block(kind):
    sel, eng, data = make(kind, cache=False, micro=5)
    assert eng.last_position_only
    d = Direction(3, 1e-2)
    fast = eng.logits(data, None, d)
    eng.last_position_only = False
    slow = eng.logits(data, None, Direction(3, 1e-2))
    assert torch.allclose(fast, slow, atol=1e-5)
