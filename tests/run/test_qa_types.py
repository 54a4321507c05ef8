"""Every method on the multi-token task types (multiple_choice: ARC-Easy; generation: SQuAD), tiny model: it trains,
reports its type's metrics, keeps its ledger, resumes bit for bit and replays from its transcript as on
classification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from privtune import atomic as A
from privtune import config as C
from privtune import methods as M
from privtune.errors import ConfigError
from privtune.run.loop import train
from privtune.run.replay import replay, verify

from conftest import tiny_cfg

TYPES = {
    "generation": {"task": {"name": "squad", "pool_size": 24, "eval_limit": 6, "max_new_tokens": 3}},
    "multiple_choice": {"task": {"name": "arc_easy", "pool_size": 24, "eval_limit": 20}},
}
ZO = {"lr": 1e-2, "eps": 1e-3}
METHODS = {
    "mezo": {"name": "mezo", "batch_size": 8, **ZO},
    "fo": {"name": "fo", "lr": 1e-2, "batch_size": 8},
    "paczero-zpl": {"name": "paczero", "mode": "zpl", "subsets": 4, "clip": 25.0, **ZO},
    "paczero-mi": {"name": "paczero", "mode": "mi", "budget": 0.3, "subsets": 4, "clip": 25.0, **ZO},
    "dpzero": {"name": "dpzero", "epsilon": 2.0, "delta": 1e-5, "clip": 25.0, "sampling": "poisson",
               "batch_size": 8, **ZO},
    "dpzo": {"name": "dpzo", "mechanism": "laplace", "epsilon": 2.0, "delta": 1e-5, "clip": 0.05,
             "accountant": "pld", "sampling": "poisson", "batch_size": 8, **ZO},
    "dpsgd": {"name": "dpsgd", "epsilon": 2.0, "delta": 1e-5, "clip": 1.0, "sampling": "poisson", "batch_size": 8,
              "lr": 1e-2},
    "bboxer": {"name": "bboxer", "optimizer": "one_plus_one", "sigma": 0.05, "score": "error", "delta": 0.05},
}
KIND = {"dpsgd": "lora", "bboxer": "final_norm"}


def qa_cfg(tmp_path, task_type: str, method: str, **over):
    d = tiny_cfg(tmp_path, **over)
    d["task"] = dict(TYPES[task_type]["task"])
    d["method"] = dict(METHODS[method])
    d["trainable"] = {"kind": KIND.get(method, "top_layers:2"), "lora": {"layers": 2}}
    d["train"].update({"steps": 6, "checkpoint_every": 3, "log_every": 2})
    for k, v in over.items():
        C.set_dotted(d, k, v)
    return M.build_config(d)


def weights(run: Path) -> dict:
    return A.load_tensors(run / "model" / "trainable.safetensors")


@pytest.mark.parametrize("task_type", list(TYPES))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_every_task_type(tmp_path, method, task_type):
    cfg = qa_cfg(tmp_path, task_type, method)
    result = train(cfg)
    run = Path(cfg.out_dir)
    ev = json.loads((run / "eval.json").read_text())
    if task_type == "generation":
        assert set(ev) >= {"f1", "exact_match", "initial_f1", "initial_exact_match"} and "accuracy" not in ev
        assert 0.0 <= ev["f1"] <= 1.0 and ev["total"] == 6
    else:
        assert set(ev) >= {"accuracy", "correct", "initial_accuracy"} and ev["total"] == 20
        assert ev["correct"] == round(ev["accuracy"] * 20)
    assert result == ev
    privacy = json.loads((run / "privacy.json").read_text())
    assert privacy["steps_done"] == 6
    if method.startswith("dp"):
        assert privacy["epsilon"] == pytest.approx(2.0)
    if method == "paczero-zpl":
        assert privacy["mi_nats"] == 0.0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    key = "eval_f1" if task_type == "generation" else "eval_accuracy"
    assert metrics[0]["kind"] == "eval" and key in metrics[0]
    # config.yaml records what ran: the choice score the task chose when the config left it unset
    assert C.load_yaml(run / "config.yaml")["task"]["choice_score"] == (None if task_type == "generation" else "sum")


@pytest.mark.parametrize("task_type", list(TYPES))
@pytest.mark.parametrize("method", ["mezo", "dpzero"])
def test_resume_on_qa_types_is_bitwise_identical(tmp_path, stop_after, same_run, monkeypatch, method, task_type):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "7")  # both runs hold the same secret (DPZero's Poisson batches)
    full = qa_cfg(tmp_path, task_type, method, out_dir=str(tmp_path / "a"))
    train(full)
    part = qa_cfg(tmp_path, task_type, method, out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(4)) == {"stopped_at": 4}
    train(part, resume=True)
    same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("task_type", list(TYPES))
@pytest.mark.parametrize("method", ["mezo", "paczero-zpl"])
def test_replay_rebuilds_qa_runs_from_their_transcript(tmp_path, method, task_type):
    cfg = qa_cfg(tmp_path, task_type, method)
    train(cfg)
    ok, msg = verify(cfg.out_dir, replay(cfg.out_dir))
    assert ok, msg


@pytest.mark.parametrize("task_type", list(TYPES))
def test_training_moves_the_loss_on_the_pool(tmp_path, task_type):
    """fo on a small pool, several epochs: the engine's per-example loss is what is trained (it goes down)."""
    from privtune.run.setup import prepare
    from privtune.trainable import load_trainable_state

    cfg = qa_cfg(tmp_path, task_type, "fo", **{"method.lr": 3e-2, "train.steps": 30, "method.batch_size": 24})
    train(cfg)
    setup = prepare(cfg, need_eval=False)
    before = float(setup.engine.losses(setup.pool).mean())
    load_trainable_state(setup.sel, weights(Path(cfg.out_dir)))
    after = float(setup.engine.losses(setup.pool).mean())
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize("task_type", list(TYPES))
def test_head_kinds_are_refused_on_qa_types(tmp_path, task_type):
    with pytest.raises(ConfigError, match="trainable.kind"):
        train(qa_cfg(tmp_path, task_type, "mezo", **{"trainable.kind": "head"}))
    assert not (tmp_path / "run").exists()


def test_generation_eval_is_the_f1_of_greedy_answers(tmp_path):
    """The run's eval F1 is SQuAD's F1 of the answers its model decodes, recomputed here from the model."""
    from privtune.qa_metrics import squad_scores
    from privtune.run.setup import encode_examples, prepare
    from privtune.trainable import load_trainable_state

    cfg = qa_cfg(tmp_path, "generation", "mezo")
    ev = train(cfg)
    setup = prepare(cfg, need_pool=False, need_eval=False)
    load_trainable_state(setup.sel, weights(Path(cfg.out_dir)))
    data = encode_examples(setup, setup.task.eval, for_decoding=True)
    preds = setup.engine.forward.generate(data.prompts)
    assert len(preds) == 6 and all(isinstance(p, str) for p in preds)
    assert ev["f1"] == pytest.approx(squad_scores(preds, [ex.answers for ex in setup.task.eval])["f1"] / 100)
    assert torch.is_tensor(data.labels)


def test_initial_eval_off_skips_the_step_0_eval(tmp_path):
    cfg = qa_cfg(tmp_path, "generation", "mezo", **{"train.initial_eval": False})
    ev = train(cfg)
    assert "f1" in ev and "initial_f1" not in ev and "initial_exact_match" not in ev
    rows = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows and not [r for r in rows if r.get("kind") == "eval"]
