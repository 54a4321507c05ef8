"""Offsite tuning on multiple-choice tasks (tiny model): the choices are scored by the ZO engine's SequenceForward
(one scorer), emulator tuning lowers the choice cross-entropy, plugged-in adapters are scored the same way on the
full model, and OpenBookQA (no train split) is evaluated on, never trained or distilled on."""

import pytest
import torch

from privtune.data import load_task, render_example
from privtune.errors import ConfigError
from privtune.models import load_model
from privtune.offsite import distill as D
from privtune.offsite import emulator as E
from privtune.offsite import forward as FW
from privtune.offsite import gcs as GCS
from privtune.offsite import plug as P
from privtune.offsite import tune as T
from privtune.zo.sequences import SeqSpec, SequenceForward


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny")


@pytest.fixture(scope="module")
def arc():
    return load_task("arc_easy", eval_limit=24)


def _engine_scores(model, codec, task, examples):
    """Choice scores exactly as the ZO engine builds them (run.setup.encode_examples' packing)."""
    fwd = SequenceForward(model, SeqSpec("multiple_choice", task.choice_score), cache_layer=0)
    prompts = [codec.encode(render_example(task.template, ex)) for ex in examples]
    branches = [[codec.continuation(" " + c) for c in ex.choices] for ex in examples]
    data = fwd.encode_packed(prompts, branches, [ex.label for ex in examples])
    with torch.no_grad():
        return fwd.chunk_logits(data, [list(range(len(examples)))])[0][0]


def _accuracy_from(scores, examples):
    labels = torch.tensor([ex.label for ex in examples])
    return int((scores.argmax(-1) == labels).sum())


def test_task_examples_picks_the_scorer_by_type(lm, arc):
    assert isinstance(FW.task_examples(lm.codec, arc, arc.eval), FW.MultipleChoice)
    sst2 = load_task("sst2", eval_limit=4)
    assert isinstance(FW.task_examples(lm.codec, sst2, sst2.eval), FW.Classification)
    with pytest.raises(ConfigError, match="--task: .*generation"):
        squad = load_task("squad", eval_limit=2)
        FW.task_examples(lm.codec, squad, squad.eval)


def test_classification_wrapper_is_the_verbalizer_path(lm):
    sst2 = load_task("sst2", eval_limit=16)
    ids, labels = FW.encode(lm.codec, sst2.template, sst2.eval)
    verb = lm.codec.verbalizer_ids(sst2.verbalizer)
    batch = FW.task_examples(lm.codec, sst2, sst2.eval)
    assert batch.accuracy(lm.model) == FW.accuracy(lm.model, ids, labels, verb, lm.codec.pad_id)
    with torch.no_grad():
        assert torch.equal(batch.loss(lm.model, [3, 1, 7]), FW.loss(lm.model, [ids[j] for j in (3, 1, 7)],
                                                                    labels[[3, 1, 7]], verb, lm.codec.pad_id))


def test_mc_scores_and_accuracy_are_the_engines(lm, arc):
    batch = FW.task_examples(lm.codec, arc, arc.eval)
    scores = _engine_scores(lm.model, lm.codec, arc, arc.eval)
    with torch.no_grad():
        ours = batch.scores(lm.model, list(range(len(arc.eval))))
    assert torch.allclose(ours, scores, atol=1e-5)
    assert ours.shape == (len(arc.eval), max(len(ex.choices) for ex in arc.eval))
    acc, correct = batch.accuracy(lm.model, micro_batch=5)  # length-sorted chunks: same predictions
    assert correct == _accuracy_from(scores, arc.eval) and acc == correct / len(arc.eval)
    with torch.no_grad():  # the loss is SequenceForward's cross-entropy over the choices
        want = torch.nn.functional.cross_entropy(scores[:6], batch.labels[:6])
        assert float(batch.loss(lm.model, list(range(6)))) == pytest.approx(float(want), rel=1e-5)


def test_mc_emulator_tuning_lowers_the_training_loss(lm):
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    amap = T.adapter_map(manifest)
    task, pool = T.training_pool("arc_easy", 16, 0)
    batch = FW.task_examples(lm.codec, task, pool)
    with torch.no_grad():
        before = float(batch.loss(emu, list(range(len(batch)))))
    summary = T.train_adapters(emu, lm.codec, amap, T.TuneOptions(task="arc_easy", examples=16, batch_size=8,
                                                                   lr=1e-2, epochs=4, log_every=2))
    with torch.no_grad():
        after = float(batch.loss(emu, list(range(len(batch)))))
    assert summary["examples"] == 16 and summary["steps"] == 8
    assert after < before
    assert summary["loss_log"][-1]["train_loss"] < summary["loss_log"][0]["train_loss"]
    assert all(not p.requires_grad for p in emu.parameters())  # frozen again after training


def test_plug_in_is_scored_by_the_same_scorer(lm, arc):
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    amap = T.adapter_map(manifest)
    T.train_adapters(emu, lm.codec, amap, T.TuneOptions(task="arc_easy", examples=8, batch_size=4, lr=1e-2))
    zero_shot = _engine_scores(lm.model, lm.codec, arc, arc.eval)
    old = P.plug(lm.model, T.adapter_state(emu, amap))
    try:
        plugged = _engine_scores(lm.model, lm.codec, arc, arc.eval)
        _, correct = FW.task_examples(lm.codec, arc, arc.eval).accuracy(lm.model)
    finally:
        P.plug(lm.model, old)
    assert not torch.allclose(plugged, zero_shot)  # the plugged adapters change the full model's scores
    assert correct == _accuracy_from(plugged, arc.eval)


def test_grad_cosine_on_mc_is_one_for_an_uncompressed_emulator(lm):
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.0))
    task, pool = T.training_pool("arc_easy", 6, 1)
    batch = FW.task_examples(lm.codec, task, pool)
    full_map = T.full_adapter_map(4, 1)
    assert T.grad_cosine_on(emu, T.adapter_map(manifest), lm.model, full_map, batch) == pytest.approx(1.0, abs=1e-6)


def test_gradot_calibrates_on_mc(lm):
    task, pool = T.training_pool("arc_easy", 6, 0)
    batch = FW.task_examples(lm.codec, task, pool)
    mods = {"1.up_proj": lm.model.model.layers[1].mlp.up_proj}
    st = GCS.kfac_stats_on(lm.model, mods, batch, micro_batch=4)["1.up_proj"]
    assert st.tokens == sum(len(x) for x in batch.ids)  # every real packed token, no padding
    assert torch.isfinite(st.G).all() and st.grad.abs().sum() > 0
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="gradot", adapters=1, ratio=0.5, task="arc_easy", calib=6))
    assert manifest["calibration"]["task"] == "arc_easy"
    assert manifest["params"]["middle_ratio_kept"] <= 0.51


def test_openbookqa_is_eval_only(lm):
    with pytest.raises(ConfigError, match="^--task: openbookqa has no train split"):
        T.training_pool("openbookqa", 8, 0)
    with pytest.raises(ConfigError, match="^--task: openbookqa has no train split"):
        T.train_adapters(lm.model, lm.codec, T.full_adapter_map(4, 1), T.TuneOptions(task="openbookqa", examples=8))
    with pytest.raises(ConfigError, match="^--task: openbookqa has no train split"):
        E.build(lm, E.BuildOptions(method="gradot", adapters=1, task="openbookqa", calib=4))
    with pytest.raises(ConfigError, match="^--distill-corpus: openbookqa has no train split"):
        D.corpus_texts(D.DistillOptions(corpus="openbookqa", texts=4))
    obqa = load_task("openbookqa", eval_limit=12)  # tuned on ARC-Easy train, evaluated on OpenBookQA test
    acc, correct = FW.task_examples(lm.codec, obqa, obqa.eval).accuracy(lm.model)
    assert correct == _accuracy_from(_engine_scores(lm.model, lm.codec, obqa, obqa.eval), obqa.eval)


def test_default_corpus_never_the_tuned_task_nor_eval_only():
    assert D.default_corpus(["sst2"]) == "agnews" and D.default_corpus(["agnews"]) == "sst2"
    assert D.default_corpus(["arc_easy"]) == "arc_challenge"
    assert D.default_corpus(["openbookqa", "arc_easy"]) == "arc_challenge"
    assert D.default_corpus(["arc_easy", "arc_challenge"]) not in ("arc_easy", "arc_challenge", "openbookqa")


def test_mc_corpus_text_is_prompt_and_right_choice():
    arc = load_task("arc_easy")
    texts = D.task_texts(arc)
    ex = arc.train[0]
    assert texts[0] == f"Question: {ex.text}\nAnswer: {ex.choices[ex.label]}"  # ex.text: the question column
    got, ident = D.corpus_texts(D.DistillOptions(corpus="arc_challenge", texts=5))
    assert ident["task"] == "arc_challenge" and ident["text"] == "prompt + answer"
    assert all("\nAnswer: " in t for t in got)
