"""benchmarks/qa_table.py's interval over the eval questions is conservative: it is never narrower than the true
normal interval of a mean of scores in [0, 1] (0/1 accuracy or token F1), whatever their spread."""

import math

import numpy as np
import pytest


def test_ci95_is_exact_for_0_1_scores_and_wider_for_any_other_scores_in_0_1(qa_table):
    rng = np.random.default_rng(0)
    hits = (rng.random(1000) < 0.3).astype(float)  # accuracy: the bound is the binomial normal interval itself
    assert qa_table.ci95(hits.mean(), 1000) == pytest.approx(1.96 * hits.std() / math.sqrt(1000))
    for draw in (rng.random(1000), rng.beta(0.3, 2.0, 1000), np.clip(rng.normal(0.2, 0.1, 1000), 0, 1)):  # F1-like
        assert qa_table.ci95(draw.mean(), 1000) >= 1.96 * draw.std() / math.sqrt(1000)
    assert qa_table.ci95(0.0, 50) == 0.0 and qa_table.ci95(1.0, 50) == 0.0


def test_rows_carry_the_interval_of_their_mean(qa_table):
    runs = [{"mechanism": "mezo", "level": None, "seed": s, "metric": "accuracy", "accuracy": a,
             "initial_accuracy": 0.5, "eval_examples": 400, "cpu_s": 1.0, "guarantee": "none", "epsilon": None,
             "delta": None, "mi_nats": None, "mia_posterior_bound": None, "unanimity_rate": None}
            for s, a in enumerate((0.6, 0.62))]
    rows = {r["method"]: r for r in qa_table.rows(runs)}
    assert rows["zero-shot"]["ci95"] == pytest.approx(1.96 * math.sqrt(0.25 / 400))
    assert rows["mezo"]["ci95"] == pytest.approx(1.96 * math.sqrt(0.61 * 0.39 / 400))


def test_only_the_first_run_of_a_table_evaluates_zero_shot_and_every_run_keeps_its_seed(qa_table):
    for task in qa_table.TASKS:
        todo = qa_table.plan(task, ["mezo", "dpzero"], [0, 1], ["task.eval_limit=10"])
        skips = ["train.initial_eval=false" in r["overrides"] for r in todo]
        assert skips == [False, True, True, True]
        assert [r["overrides"][0] for r in todo] == ["train.seed=0", "train.seed=1"] * 2
        assert all(r["overrides"][-1] == "task.eval_limit=10" for r in todo)
        assert todo[0]["preset"] == f"configs/{task}_mezo.yaml"


def test_transfer_scores_each_exported_run_on_the_target_task_beside_the_base_model(qa_table, tmp_path):
    """--transfer: a run is exported and scored on the eval-only task with that task's own choice score. A run with
    lr 1e-30 leaves the base model's float32 weights as they were, so it must score exactly the base model's
    zero-shot; the export folder is gone afterwards."""
    from privtune import methods as M
    from privtune.run.loop import train

    from conftest import tiny_cfg

    runs = []
    for seed, lr in ((0, 1e-30), (1, 0.05)):
        d = tiny_cfg(tmp_path, **{"task": {"name": "arc_easy", "pool_size": 16, "eval_limit": 4},
                                  "method.lr": lr, "train.steps": 3, "train.seed": seed, "train.initial_eval": False,
                                  "out_dir": str(tmp_path / f"mezo_s{seed}")})
        d["model"]["seed"] = 0
        train(M.build_config(d))
        runs.append({"mechanism": "mezo", "seed": seed, "run_dir": d["out_dir"]})
    res = qa_table.transfer(runs, "openbookqa", tmp_path, jobs=1, base_model="tiny")
    base, mezo = res["rows"]
    assert res["choice_score"] == "mean" and res["eval_examples"] == 500 and base["method"] == "zero-shot"
    frozen, moved = res["runs"]
    assert frozen["accuracy"] == base["accuracy_mean"] and frozen["total"] == moved["total"] == 500
    assert mezo["accuracy_mean"] == pytest.approx((frozen["accuracy"] + moved["accuracy"]) / 2)
    assert not list(tmp_path.glob("*_export"))
