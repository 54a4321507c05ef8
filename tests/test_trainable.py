"""trainable.kind head / head+final_norm: the verbalizer's LM-head rows as their own parameter over the full
frozen-prefix cache, the tied embedding never touched, through every method's normal run path."""

from pathlib import Path

import pytest
import torch

from privtune import atomic as A
from privtune.errors import ConfigError
from privtune.models import build_tiny
from privtune.run.evaluate import evaluate_run
from privtune.run.loop import train
from privtune.run.replay import replay, verify
from privtune.run.setup import prepare
from privtune.trainable import load_trainable_state, parse_kind, select
from privtune.zo.engine import ZOEngine
from privtune.zo.seeds import Direction, direction_seed

TEXTS = ["a fine film", "the worst thing i have seen in years , truly", "ok", "great great great acting here",
         "not bad at all but too long", "dull", "a charming , funny and moving story", "why"] * 2
WORDS = [" bad", " good"]


def make(kind, cache=True, micro=4):
    lm = build_tiny(0)
    verb = lm.codec.verbalizer_ids(WORDS)
    sel = select(lm.model, kind, seed=0, verbalizer_ids=verb)
    eng = ZOEngine(sel, verb, micro_batch=micro, use_cache=cache)
    data = eng.forward.encode([lm.codec.encode(t) for t in TEXTS], [i % 2 for i in range(len(TEXTS))])
    return lm, sel, eng, data, verb


def weights(run):
    return A.load_tensors(Path(run) / "model" / "trainable.safetensors")


# ------------------------------------------------------------------------------------------------ selection
def test_head_is_its_own_parameter_initialised_from_the_tied_embedding_rows():
    lm, sel, eng, _, verb = make("head")
    emb = lm.model.get_input_embeddings().weight
    assert lm.model.get_output_embeddings().weight is emb  # the tiny model ties them
    assert [n for n, _ in sel.params] == ["verbalizer_head.weight"]
    head = sel.params[0][1]
    assert head.shape == (len(WORDS), emb.shape[1]) and head.requires_grad
    assert torch.equal(head, emb[verb]) and head.data_ptr() != emb.data_ptr()
    assert not emb.requires_grad
    assert sel.first_trainable_layer == len(lm.model.model.layers)  # every block cached
    assert eng.forward.cache_layer == len(lm.model.model.layers)


def test_head_plus_final_norm_trains_both_and_caches_every_block():
    lm, sel, _, _, _ = make("head+final_norm")
    assert [n for n, _ in sel.params] == ["model.norm.weight", "verbalizer_head.weight"]
    assert sel.first_trainable_layer == len(lm.model.model.layers)


def test_selecting_another_kind_removes_the_head():
    lm = build_tiny(0)
    verb = lm.codec.verbalizer_ids(WORDS)
    select(lm.model, "head", verbalizer_ids=verb)
    sel = select(lm.model, "final_norm")
    assert not hasattr(lm.model, "verbalizer_head")
    assert [n for n, _ in sel.params] == ["model.norm.weight"]
    ids = torch.tensor([lm.codec.encode(TEXTS[0])])
    assert torch.equal(lm.model(input_ids=ids).logits, build_tiny(0).model(input_ids=ids).logits)


@pytest.mark.parametrize("kind", ["heads", "head+norms", "head:1"])
def test_an_unknown_kind_is_a_one_line_config_error_naming_the_field(kind):
    with pytest.raises(ConfigError) as e:
        parse_kind(kind)
    msg = str(e.value)
    assert msg.startswith("trainable.kind:") and "\n" not in msg and "head+final_norm" in msg


def test_a_head_kind_without_verbalizer_ids_is_refused():
    with pytest.raises(ValueError, match="verbalizer"):
        select(build_tiny(0).model, "head")


def test_a_forward_for_other_label_words_than_the_head_is_refused():
    lm, sel, _, _, verb = make("head")
    with pytest.raises(ConfigError, match="^task.verbalizer:"):
        ZOEngine(sel, list(reversed(verb)))


# ---------------------------------------------------------------------------------------------------- logits
@pytest.mark.parametrize("cache", [True, False])
def test_untouched_head_gives_the_final_norm_logits_exactly(cache):
    _, _, eng_norm, data_norm, _ = make("final_norm", cache)
    _, _, eng_head, data_head, _ = make("head", cache)
    assert torch.equal(eng_norm.logits(data_norm), eng_head.logits(data_head))


def test_the_model_own_logits_use_the_trained_rows():
    """The audit's token statistics run the model's own forward: its verbalizer columns are the head's rows."""
    lm, sel, eng, data, verb = make("head", cache=False)
    with torch.no_grad():
        sel.params[0][1].add_(torch.randn(sel.params[0][1].shape, generator=torch.Generator().manual_seed(1)))
    ours = eng.logits(data, [0])[0]
    ids = torch.tensor([data.ids[0]])
    with torch.no_grad():
        full = lm.model(input_ids=ids).logits[0, -1]
    assert torch.allclose(full[verb], ours, atol=1e-5)
    other = [i for i in range(full.shape[0]) if i not in verb][:5]
    base = build_tiny(0).model(input_ids=ids).logits[0, -1]
    assert torch.equal(full[other], base[other].detach())


def test_perturbed_passes_move_the_head_logits_and_leave_theta_and_embedding_untouched():
    lm, sel, eng, data, _ = make("head")
    emb = lm.model.get_input_embeddings().weight.detach().clone()
    head = sel.params[0][1].detach().clone()
    base = eng.losses(data)
    lp, lm_ = eng.pair_losses(data, None, 7, 1e-1)
    assert not torch.allclose(base.double(), lp) and not torch.allclose(lp, lm_)
    assert torch.equal(sel.params[0][1], head)
    assert torch.equal(lm.model.get_input_embeddings().weight, emb)


def test_updates_move_the_head_and_never_the_embedding():
    lm, sel, eng, data, _ = make("head+final_norm")
    emb = lm.model.get_input_embeddings().weight.detach().clone()
    head = sel.params[1][1].detach().clone()
    for t in range(5):
        seed = direction_seed(0, t)
        g = eng.scalars(data, None, seed, 1e-3)
        eng.apply_update([(seed, float(g.mean()))], lr=1e-2)
    assert not torch.equal(sel.params[1][1], head)
    assert torch.equal(lm.model.get_input_embeddings().weight, emb)
    assert torch.equal(lm.model.get_output_embeddings().weight, emb)
    # the head is what the engine scores: a direction along it changes the logits as p + εz would
    d = Direction(3, 1e-2)
    assert not torch.equal(eng.logits(data, None, d), eng.logits(data))


# ------------------------------------------------------------------------------------------------------ runs
def test_mezo_on_the_head_lowers_the_pool_loss_and_a_saved_run_restores_it(make_cfg):
    cfg = make_cfg(**{"trainable.kind": "head", "method.lr": 0.03, "method.batch_size": 64,
                      "train.steps": 60, "train.log_every": 20, "train.checkpoint_every": 30})
    res = train(cfg)
    w = weights(cfg.out_dir)
    assert set(w) == {"verbalizer_head.weight"}
    setup = prepare(cfg, need_eval=False)
    before = float(setup.engine.losses(setup.pool).mean())
    emb = setup.lm.model.get_input_embeddings().weight.detach().clone()
    load_trainable_state(setup.sel, w)
    after = float(setup.engine.losses(setup.pool).mean())
    assert after < before
    assert torch.equal(setup.lm.model.get_input_embeddings().weight, emb)
    # privtune eval RUN loads the saved head: the same accuracy as the run's own final eval
    assert evaluate_run(cfg.out_dir, split="dev")["accuracy"] == res["accuracy"]


@pytest.mark.parametrize("kind", ["head", "head+final_norm"])
def test_resume_is_bitwise_identical_to_uninterrupted(tmp_path, make_cfg, stop_after, kind):
    over = {"trainable.kind": kind, "method.lr": 0.1}
    full = make_cfg(out_dir=str(tmp_path / "a"), **over)
    train(full)
    part = make_cfg(out_dir=str(tmp_path / "b"), **over)
    assert train(part, callback=stop_after(7)) == {"stopped_at": 7}
    train(part, resume=True)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


METHODS = {
    "mezo": {"method.lr": 0.1},
    "paczero_zpl": {"method.name": "paczero", "method.mode": "zpl", "method.subsets": 4, "method.lr": 1e-2,
                    "method.eps": 1e-2},
    "paczero_mi": {"method.name": "paczero", "method.mode": "mi", "method.budget": 0.3278, "method.subsets": 4,
                   "method.lr": 1e-2, "method.eps": 1e-2},
    "dpzero": {"method.name": "dpzero", "method.epsilon": 2.0, "method.delta": 1e-5, "method.clip": 25.0,
               "method.sampling": "poisson", "method.lr": 1e-2},
    "dpzo": {"method.name": "dpzo", "method.mechanism": "laplace", "method.accountant": "pld", "method.epsilon": 2.0,
             "method.delta": 1e-5, "method.clip": 0.05, "method.sampling": "poisson", "method.lr": 1e-2},
    "dpsgd": {"method.name": "dpsgd", "method.epsilon": 2.0, "method.delta": 1e-5, "method.clip": 1.0,
              "method.sampling": "poisson", "method.lr": 1e-2},
    "bboxer": {"method.name": "bboxer", "method.optimizer": "one_plus_one", "method.comparison": "incumbent",
               "method.sigma": 0.05, "method.score": "loss", "method.delta": 0.05},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_the_head_and_its_run_replays(make_cfg, method):
    over = {"trainable.kind": "head+final_norm", "train.steps": 6, "train.log_every": 3,
            "train.checkpoint_every": 3, "task.pool_size": 32, "task.eval_limit": 16, **METHODS[method]}
    if method != "bboxer":
        over["method.batch_size"] = 16
    cfg = make_cfg(**over)
    train(cfg)
    w = weights(cfg.out_dir)
    assert set(w) == {"model.norm.weight", "verbalizer_head.weight"}
    lm = build_tiny(0)
    base = lm.model.get_output_embeddings().weight[lm.codec.verbalizer_ids([" negative", " positive"])]
    assert w["verbalizer_head.weight"].shape == base.shape
    if method != "bboxer":  # a (1+1) search may keep its incumbent for 6 steps: only the shape is certain
        assert not torch.equal(w["verbalizer_head.weight"], base)
    if method != "dpsgd":  # DP-SGD releases gradient digests only: it refuses replay
        ok, msg = verify(cfg.out_dir, replay(cfg.out_dir))
        assert ok, msg
