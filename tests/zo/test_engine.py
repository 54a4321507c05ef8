"""The ZO engine (zo.engine): θ ± εz just in time with θ bit-exactly untouched, and the update along z."""

import pytest
import torch

from privtune.models import build_tiny
from privtune.trainable import select
from privtune.zo.engine import ZOEngine
from privtune.zo.forward import geometry, left_pad, run_blocks
from privtune.zo.seeds import Direction, direction_seed

TEXTS = ["a fine film", "the worst thing i have seen in years , truly", "ok", "great great great acting here",
         "not bad at all but too long", "dull", "a charming , funny and moving story", "why"] * 2


def make(kind="top_layers:2", cache=True, micro=4, seed=0):
    lm = build_tiny(seed)
    sel = select(lm.model, kind, seed=seed)
    eng = ZOEngine(sel, lm.codec.verbalizer_ids([" bad", " good"]), micro_batch=micro, use_cache=cache)
    data = eng.forward.encode([lm.codec.encode(t) for t in TEXTS], [i % 2 for i in range(len(TEXTS))])
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
        d1, d2 = e1.forward.encode(ids, [0] * len(ids)), e2.forward.encode(ids, [0] * len(ids))
    else:
        sel, e1, d1 = make(kind, cache=True)
        e2 = ZOEngine(sel, e1.forward.verb.tolist(), micro_batch=4, use_cache=False)
        d2 = e2.forward.encode(d1.ids, d1.labels)
    assert d1.cache is not None and d2.cache is None
    for direction in (None, Direction(9, 1e-2), Direction(9, -1e-2)):
        assert torch.allclose(e1.losses(d1, None, direction), e2.losses(d2, None, direction), atol=1e-5)


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
    fwd = eng.forward
    ids, attn = left_pad([data.ids[j] for j in idx], fwd.pad_id)
    h = fwd.base.embed_tokens(ids)
    h = run_blocks(fwd.layers, h, geometry(fwd.base.rotary_emb, attn, h))
    return fwd.base.norm(h[:, -1]) @ fwd.head_weight[fwd.verb].T


@pytest.mark.parametrize("kind", ["top_layers:1", "lora", "full"])
def test_last_position_block_equals_full_block(kind):
    sel, eng, data = make(kind, cache=False, micro=5)
    assert eng.forward.last_position_only
    d = Direction(3, 1e-2)
    fast = eng.logits(data, None, d)
    eng.forward.last_position_only = False
    slow = eng.logits(data, None, Direction(3, 1e-2))
    assert torch.allclose(fast, slow, atol=1e-5)


def test_value_is_theta_plus_scaled_z_only_inside_at_and_forget_drops_it():
    """The perturbation interface zo.forward runs under: what a trainable parameter stands for, when."""
    sel, eng, _ = make("top_layers:1", cache=False)
    i, (_, p) = 0, sel.params[0]
    d = Direction(13, 0.5)
    assert eng.value(p) is p  # no direction active: θ
    with eng.at(d):
        v = eng.value(p)
        assert eng.value(p) is v  # built once per direction
    assert torch.equal(v, torch.add(p.detach(), Direction(13, 1.0).z(i, p), alpha=0.5))
    assert eng.value(p) is p
    eng.forget([d])
    assert d.values == {}


def test_an_error_inside_a_perturbed_pass_leaves_no_direction_active():
    sel, eng, data = make("top_layers:1", cache=False)
    base = eng.losses(data)
    with pytest.raises(RuntimeError, match="boom"):
        with eng.at(Direction(13, 0.5)):
            raise RuntimeError("boom")
    assert torch.equal(eng.losses(data), base)
