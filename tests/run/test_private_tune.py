"""`privtune tune` (run/tune.py): one released run within the selection's budget, its guarantee recomputed from
what the runs recorded, no other run or secret left behind, and refusals before any run starts."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_cfg, tune_files
from privtune.errors import ConfigError, PrivtuneError
from privtune.privacy import dp, selection as S
from privtune.run import tune as T
from privtune.run.forget import forget_run
from privtune.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path):
    return tune_files(tmp_path)


def test_tune_releases_one_run_with_the_selections_guarantee(setup):
    path, val, out = setup
    grid = T.parse_grid(["method.lr=1e-3,2e-3", "method.eps=1e-3,2e-3"])
    rec = T.tune(path, [], grid, val, epsilon=6.0, runs=2.0, score_std=0.1, rng=np.random.default_rng(1))
    assert rec["epsilon"] <= 6.0 and rec["run_epsilon"] < rec["epsilon"]
    assert rec["chosen"] in [{"method.lr": a, "method.eps": b} for a in ("1e-3", "2e-3") for b in ("1e-3", "2e-3")]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cfg.yaml", "run", "val.tsv"]  # no repetition left
    assert T.read(out) == json.loads(json.dumps(rec))
    run = RunDir(out)
    privacy = run.read_record(run.privacy)
    assert privacy["epsilon"] == rec["epsilon"] and privacy["run_epsilon"] == rec["run_epsilon"]
    assert privacy["mia_posterior_bound"] == rec["mia_posterior_bound"]
    # the guarantee recomputed from what the released run recorded, independently of the plan
    acc, noise = T._recorded(privacy)
    _, _, steps, rate, sampling, n, delta = acc
    assert dp.gaussian_epsilon(noise, steps, rate, delta, "rdp", sampling, n) <= rec["run_epsilon"] + 1e-9
    event = S.repetition_event(dp.run_event("gaussian", noise, steps, rate, sampling, n), 0.1 * 200)
    assert S.selection_epsilon(event, rec["runs_mean"], 1.0, delta, sampling) == pytest.approx(rec["epsilon"])
    assert yaml.safe_load(run.config.read_text())["out_dir"] == str(out)
    run.load_final_weights()  # a finished run that eval/export/audit take as is
    assert forget_run(out) == []  # its secret key is already gone: it can never be resumed


def test_without_a_target_the_runs_keep_their_budget_and_the_selection_is_reported(setup):
    path, val, _ = setup
    p = T.plan(path, [], T.parse_grid(["method.lr=1e-3,2e-3"]), val, None, 3.0, 1.0, 0.1)
    assert p["run_epsilon"] == 2.0 and p["run_overrides"] == ["method.accountant=rdp"]
    assert p["epsilon"] > 2.0  # choosing among runs costs more than one run
    more = T.plan(path, [], T.parse_grid(["method.lr=1e-3,2e-3"]), val, None, 10.0, 1.0, 0.1)
    assert more["epsilon"] > p["epsilon"]


@pytest.mark.parametrize("args,field", [
    ((["method.lr=1e-3,2e-3"],), None),
    ((["train.steps=3,4"],), "--grid train.steps"),
    ((["method.lr=1e-3,2e-3", "train.steps=3,4"],), "--grid train.steps"),  # the key that changes it is named
    ((["method.batch_size=8,16"],), "--grid method.batch_size"),
    ((["out_dir=a,b"],), "--grid out_dir"),
    ((["method.epsilon=1,2"],), "--grid method.epsilon"),
    ((["method.lr"],), "--grid"),
    ((["method.lr=1e-3", "method.lr=2e-3"],), "--grid method.lr"),
])
def test_grid_refusals(setup, args, field):
    path, val, _ = setup
    if field is None:
        T.plan(path, [], T.parse_grid(*args), val, None, 3.0, 1.0, 0.1)
        return
    with pytest.raises(ConfigError) as e:
        T.plan(path, [], T.parse_grid(*args), val, None, 3.0, 1.0, 0.1)
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)


@pytest.mark.parametrize("change,field", [
    (dict(mezo=True), "method.name"),
    (dict(val="missing.tsv"), "--val"),
    (dict(runs=0.5), "--runs"),
    (dict(shape=float("inf")), "--shape"),
    (dict(score_std=0.0), "--score-std"),
    (dict(epsilon=1e-3), "--epsilon"),
    (dict(overrides=["method.noise_multiplier=0", "method.epsilon=null"]), "method.noise_multiplier"),
])
def test_refusals_before_any_run(setup, change, field):
    path, val, out = setup
    kw = dict(overrides=[], val=val, epsilon=None, runs=3.0, shape=1.0, score_std=0.1)
    kw.update(change)
    if kw["val"] == "missing.tsv":
        kw["val"] = val.parent / "missing.tsv"
    if kw.pop("mezo", False):  # a method with no DP guarantee
        path = path.parent / "mezo.yaml"
        path.write_text(yaml.safe_dump(tiny_cfg(path.parent)))
    with pytest.raises(ConfigError) as e:
        T.tune(path, kw.pop("overrides"), T.parse_grid(["method.lr=1e-3,2e-3"]), **kw)
    assert str(e.value).startswith(field + ":"), str(e.value)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_an_existing_out_dir_is_refused(setup):
    path, val, out = setup
    out.mkdir()
    (out / "x").write_text("mine")
    with pytest.raises(ConfigError, match="^out_dir:"):
        T.tune(path, [], T.parse_grid(["method.lr=1e-3,2e-3"]), val, runs=1.0, score_std=0.1)


def test_a_failure_mid_tune_leaves_no_run_and_no_secret(setup, monkeypatch):
    path, val, out = setup
    seen = []

    def boom(folder, data=None):
        seen.append(folder)
        raise PrivtuneError("disk full")

    monkeypatch.setattr(T, "evaluate_run", boom)
    with pytest.raises(PrivtuneError, match="disk full"):
        T.tune(path, [], T.parse_grid(["method.lr=1e-3,2e-3"]), val, runs=1.0, score_std=0.1,
               rng=np.random.default_rng(0))
    assert len(seen) == 1 and not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["cfg.yaml", "val.tsv"]


@pytest.mark.parametrize("config,over", [("configs/tiny_dpsgd_lora.yaml", []),
                                         ("configs/tiny_dpzo.yaml", ["method.mechanism=gaussian"]),
                                         ("configs/tiny_dpzo.yaml", ["method.mechanism=laplace"])])
def test_every_dp_method_plans_or_is_refused_by_name(setup, config, over):
    _, val, _ = setup
    out = [f"out_dir={val.parent / 'x'}", *over]
    grid = T.parse_grid(["method.lr=1e-3,2e-3"])
    if "method.mechanism=laplace" in over:  # sub-sampled Laplace: no RDP rule for the selection
        with pytest.raises(ConfigError, match="^method.mechanism: tune accounts runs with RDP"):
            T.plan(REPO / config, out, grid, val, 4.0, 3.0, 1.0, 0.1)
        return
    p = T.plan(REPO / config, out, grid, val, 4.0, 3.0, 1.0, 0.1)
    assert p["epsilon"] <= 4.0 and 0 < p["run_epsilon"] < 4.0
