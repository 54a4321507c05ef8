"""The audit on multiple-choice and generation runs (issue #20, item 4): a memorising first-order run on a tiny
custom task of each type leaks on every attack and its QA canaries are audited; the pool, the held-out draw and
the canaries are the ones training used; the token-level attacks read exactly log p(answer tokens | prompt)."""

import json
import shutil
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from privtune import methods as M
from privtune.audit import audit_run
from privtune.audit.attacks import ATTACKS, K_FRACTION, scores
from privtune.audit.run import canary_examples, heldout_membership, training_pool
from privtune.cli import app
from privtune.data import Example, Task, render_example
from privtune.errors import ConfigError, PrivtuneError
from privtune.run.loop import train
from privtune.run.rundir import RunDir
from privtune.run.setup import prepare, save_model
from privtune.trainable import trainable_state

KINDS = ("generation", "multiple_choice")
TEMPLATES = {"generation": "Context: {context}\nQuestion: {question}\nAnswer:",
             "multiple_choice": "Question: {question}\nAnswer:"}
N_TRAIN, POOL, CANARIES = 64, 24, 16
FAST = dict(n_boot=40, limit=None)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a shared machine


def write_task(folder, kind: str, n_train: int = N_TRAIN, n_eval: int = 8):
    """A custom task whose answers (or choices) are random made-up words: nothing to generalise from, so only a
    model that memorised a question knows its answer."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def word() -> str:
        return f"w{rng.integers(10**6)}"

    rows = []
    for i in range(n_train + n_eval):
        q = f"question {i} about {word()} and {word()}"
        if kind == "generation":
            rows.append({"question": q, "context": f"the {word()} is near the {word()}",
                         "answers": [f"{word()} {word()}"]})
        else:
            rows.append({"question": q, "choices": [f"{word()} {word()}" for _ in range(4)],
                         "label": int(rng.integers(4))})
    tr, ev = folder / "train.jsonl", folder / "eval.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return tr, ev


def qa_cfg(base, kind: str, **task_over) -> dict:
    """A memorising run: full fine-tuning of the tiny model with AdamW at a high lr, ~20 epochs of its pool."""
    tr, ev = write_task(base / f"data_{kind}", kind)
    task = {"name": "custom", "type": kind, "train_path": str(tr), "eval_path": str(ev), "text_column": "question",
            "template": TEMPLATES[kind], "pool_size": POOL, "canaries": CANARIES, "max_new_tokens": 4, **task_over}
    return {"model": {"name": "tiny", "device": "cpu"}, "task": task, "trainable": {"kind": "full"},
            "method": {"name": "fo", "lr": 1e-2, "batch_size": 16},
            "train": {"steps": 40, "seed": 3, "log_every": 10, "checkpoint_every": 100, "micro_batch": 16},
            "out_dir": str(base / f"run_{kind}")}


@pytest.fixture(scope="module")
def fo_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("qa_audit")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVTUNE_CACHE", str(base / "cache"))
    torch.set_num_threads(1)
    out = {}
    for kind in KINDS:
        cfg = M.build_config(qa_cfg(base, kind))
        train(cfg)
        out[kind] = (base / f"run_{kind}", cfg)
    yield out
    mp.undo()


def untrained_copy(run, cfg, dest):
    """The run dir with its weights replaced by the base model's: the negative control."""
    shutil.copytree(run, dest)
    save_model(RunDir(dest), prepare(cfg, need_pool=False, need_eval=False))
    return dest


# ------------------------------------------------------------------------------------------ the memorising run
@pytest.mark.parametrize("kind", KINDS)
def test_audit_of_memorising_fo_run(fo_runs, kind, tmp_path):
    run, cfg = fo_runs[kind]
    res = audit_run(run, **FAST)
    assert json.loads((run / "audit.json").read_text()) == json.loads(json.dumps(res))
    assert set(res["attacks"]) == set(ATTACKS) and res["threat_model"] == "pool-vs-heldout"
    assert res["n_members"] == res["n_nonmembers"] == POOL
    loss = res["attacks"]["loss"]
    assert loss["auc"] > 0.9 and loss["auc_ci"][0] > 0.7  # members' answers are memorised, held-out ones are not
    for name in ("zlib", "mink", "minkpp", "ref"):
        assert res["attacks"][name]["auc"] > 0.75, (name, res["attacks"][name]["auc"])
    included = json.loads((run / "canaries.json").read_text())["included"]
    c = res["canary"]
    assert c["canaries"] == CANARIES and c["included"] == sum(included) and c["valid"]
    assert set(c["per_attack"]) == set(ATTACKS) and c["auc"]["loss"] > 0.9  # memorised canaries too
    assert c["epsilon_lower_bound"] >= 0.0

    # negative control: the same audit of the untrained model cannot tell members apart, so the test above can fail
    ctrl = audit_run(untrained_copy(run, cfg, tmp_path / "untrained"), attacks=("loss",), **FAST)
    assert ctrl["attacks"]["loss"]["auc"] < 0.75 and ctrl["canary"]["auc"]["loss"] < 0.9


def test_cli_audit_on_qa_runs(fo_runs):
    for kind in KINDS:
        run, _ = fo_runs[kind]
        r = CliRunner().invoke(app, ["audit", str(run), "--bootstrap", "20"])
        assert r.exit_code == 0, r.stderr
        assert "canaries: 16" in r.stdout and all(name in r.stdout for name in ATTACKS)
        assert f"{POOL} members vs {POOL} non-members" in r.stdout
        res = json.loads((run / "audit.json").read_text())
        assert set(res["attacks"]) == set(ATTACKS) and "canary" in res


# ------------------------------------------------------------------------------ pool, held-out and canaries
@pytest.mark.parametrize("kind", KINDS)
def test_pool_heldout_and_canaries_are_the_training_ones(tmp_path, kind):
    cfg = M.build_config(qa_cfg(tmp_path, kind))
    trained = prepare(cfg, need_eval=False)  # as training set it up: pool, then the included canaries appended
    audited = prepare(cfg, need_pool=False, need_eval=False)  # as the audit does
    pool = training_pool(cfg, audited.task)
    n_in = sum(trained.canaries["included"])
    assert pool == trained.pool_index[:len(trained.pool_index) - n_in] and len(pool) == POOL

    members, held = heldout_membership(audited.task, pool, seed=0)
    assert members == pool and len(held) == POOL and not set(held) & set(pool)
    assert all(i < N_TRAIN for i in held)  # real held-out examples, never a canary
    assert held == heldout_membership(audited.task, pool, seed=0)[1] != heldout_membership(audited.task, pool, 1)[1]

    record = json.loads(json.dumps(trained.canaries))  # through canaries.json's JSON
    rebuilt = canary_examples(record, audited.task)
    assert rebuilt == trained.task.train[N_TRAIN:] and len(rebuilt) == CANARIES
    assert all(ex.fields and (ex.answers if kind == "generation" else len(ex.choices) == 4) for ex in rebuilt)
    prompts = [render_example(audited.task.template, ex) for ex in rebuilt]
    assert prompts == [render_example(trained.task.template, ex) for ex in trained.task.train[N_TRAIN:]]


def test_canaries_of_the_run_dir_rebuild(fo_runs):
    for kind in KINDS:
        run, cfg = fo_runs[kind]
        trained = prepare(cfg, need_eval=False)
        rebuilt = canary_examples(json.loads((run / "canaries.json").read_text()), trained.task)
        assert rebuilt == trained.task.train[N_TRAIN:]


def test_canary_record_that_does_not_fit_the_task(tmp_path):
    cfg = M.build_config(qa_cfg(tmp_path, "generation"))
    setup = prepare(cfg, need_eval=False)
    record = json.loads(json.dumps(setup.canaries))
    with pytest.raises(PrivtuneError, match="^canaries.json: holds multiple_choice canaries"):
        canary_examples({**record, "type": "multiple_choice"}, setup.task)
    with pytest.raises(PrivtuneError, match="^canaries.json: holds classification canaries"):
        canary_examples({k: v for k, v in record.items() if k != "type"}, setup.task)
    with pytest.raises(PrivtuneError, match="^canaries.json: its prompt_template"):
        canary_examples({**record, "prompt_template": "Q: {question}\nA:"}, setup.task)


def test_heldout_of_multiple_choice_is_uniform_not_label_matched():
    """Multiple-choice labels are answer positions: the pool is a uniform draw, and so is the held-out set. Matching
    the members' label mix (classification's rule) would refuse this task, whose held-out items all have label 0."""
    ex = [Example(f"q{i}", 1 if i < 8 else 0, choices=("a", "b")) for i in range(24)]
    task = Task("custom", "Q: {text}\nA:", [], ex, [], type="multiple_choice")
    members, held = heldout_membership(task, list(range(8)), seed=0)
    assert members == list(range(8)) and len(set(held)) == 8 and set(held) <= set(range(8, 24))
    with pytest.raises(PrivtuneError, match="^audit: only 5 held-out"):
        heldout_membership(task, list(range(4, 12)) + list(range(16, 24)) + [0, 1, 2], seed=0)


def test_eval_only_task_is_refused(fo_runs, tmp_path):
    run, _ = fo_runs["multiple_choice"]
    copy = tmp_path / "obqa"
    shutil.copytree(run, copy)
    d = yaml.safe_load((copy / "config.yaml").read_text())
    d["task"].update({"name": "openbookqa", "train_path": None, "eval_path": None, "text_column": "text",
                      "template": None, "canaries": 0})
    (copy / "config.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="^task.name: openbookqa has no train split"):
        audit_run(copy, attacks=("loss",), **FAST)
    r = CliRunner().invoke(app, ["audit", str(copy), "--attacks", "loss", "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: task.name: openbookqa") and r.stderr.count("\n") == 1


# --------------------------------------------------------------------------------- the answer-token statistics
def manual_token_scores(model, prompt: list[int], answer: list[int], answer_text: str) -> dict:
    """zlib, Min-K% and Min-K%++ of the answer tokens from one plain causal forward of prompt + answer."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    P = len(prompt)
    rows = logp[P - 1:P - 1 + len(answer)]  # row t predicts token t + 1: these predict the answer's tokens
    lp = rows[torch.arange(len(answer)), torch.tensor(answer)].numpy()
    mu = (rows.exp() * rows).sum(-1).numpy()
    sigma = np.sqrt((rows.exp() * rows.square()).sum(-1).numpy() - mu ** 2)
    k = int(np.ceil(K_FRACTION * len(answer)))
    return {"zlib": lp.mean() / len(zlib.compress(answer_text.encode())), "mink": np.sort(lp)[:k].mean(),
            "minkpp": np.sort((lp - mu) / sigma)[:k].mean()}


@pytest.mark.parametrize("kind", KINDS)
def test_token_attacks_read_log_p_of_the_answer_given_the_prompt(tmp_path, kind):
    # a stop string the tiny tokenizer keeps as a token, so the slice must include it (generation)
    cfg = M.build_config(qa_cfg(tmp_path, kind, canaries=0, stop=" ###"))
    setup = prepare(cfg, need_pool=False, need_eval=False)
    torch.manual_seed(0)
    with torch.no_grad():  # move off the init so the check does not rest on a symmetric random model
        for _, p in setup.sel.params:
            p.add_(0.05 * torch.randn_like(p))
    state = trainable_state(setup.sel)
    examples = setup.task.train[:6]
    if kind == "multiple_choice":  # choices of different lengths: a wrong slice cannot line up by accident
        examples = [Example(ex.text, ex.label, choices=tuple(" ".join([c] * (1 + j)) for j, c in enumerate(ex.choices)),
                            fields=ex.fields) for ex in examples]
        assert {ex.label for ex in examples} != {0}
    got = scores(setup, examples, state, state, attacks=("zlib", "mink", "minkpp"), micro_batch=4)
    codec, model = setup.lm.codec, setup.sel.model
    for j, ex in enumerate(examples):
        prompt = codec.encode(render_example(setup.task.template, ex))
        if kind == "generation":
            text = ex.answers[0]
            answer = codec.continuation(" " + text + " ###")
            assert len(answer) == 3  # two words and the stop
        else:
            text = ex.choices[ex.label]  # the true choice, not the first
            answer = codec.continuation(" " + text)
        want = manual_token_scores(model, prompt, answer, text)
        for name in ("zlib", "mink", "minkpp"):
            assert got[name][j] == pytest.approx(want[name], rel=1e-4, abs=1e-6), (name, j)
