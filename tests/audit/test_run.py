"""audit_run on real (tiny-model) run dirs: a positive control that must leak, a ZPL run that must not, a false
guarantee that must be flagged, and the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from privtune import atomic as A
from privtune import config as C
from privtune import methods as M
from privtune.audit import audit_run
from privtune.cli import app
from privtune.errors import ConfigError
from privtune.run import rundir as R
from privtune.run.evaluate import evaluate_setup
from privtune.run.loop import train
from privtune.run.setup import prepare, save_model

from conftest import tiny_cfg

FAST = dict(n_boot=40, limit=None)


def overfit(run, cfg, epochs=60, lr=1e-2):
    """A deliberately over-fitted, non-private first-order run: full fine-tuning of the tiny model with Adam on its
    64-example pool, full batch, many epochs; written as a run dir with no guarantee."""
    setup = prepare(cfg)
    model, pool = setup.sel.model, setup.pool
    T = max(len(x) for x in pool.ids)
    ids = torch.zeros((len(pool), T), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, x in enumerate(pool.ids):
        ids[i, T - len(x):], attn[i, T - len(x):] = torch.tensor(x), 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    opt = torch.optim.Adam([p for _, p in setup.sel.params], lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1).logits[:, -1]
            loss = F.cross_entropy(logits[:, setup.engine.forward.verb], pool.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    run.mkdir(parents=True)
    A.atomic_write_text(run / R.CONFIG, C.dump(cfg))
    A.atomic_write_json(run / R.PRIVACY, {"method": "sgd", "guarantee": "none", "mia_posterior_bound": None,
                                         "epsilon": None, "delta": None, "mi_nats": None})
    (run / R.METRICS).write_text(json.dumps({"step": epochs, "train_loss": loss.item()}) + "\n")
    save_model(R.RunDir(run), setup)
    A.atomic_write_json(run / R.EVAL, {**evaluate_setup(setup), "steps": epochs, "wall_time_s": 1.0})
    return loss.item()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster on a busy machine


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    torch.set_num_threads(1)
    over = M.build_config(tiny_cfg(base, **{"trainable.kind": "full", "out_dir": str(base / "overfit")}))
    final_loss = overfit(base / "overfit", over)
    zpl = M.build_config(tiny_cfg(base, **{"method": {"name": "paczero", "mode": "zpl", "subsets": 8, "lr": 1e-3,
                                               "eps": 1e-2},
                                    "task.canaries": 16, "train.steps": 6, "out_dir": str(base / "zpl")}))
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVTUNE_SECRET_SEED", "4242")  # audit mode: a known secret, so S_J can be audited
    mp.setenv("PRIVTUNE_CACHE", str(base / "cache"))
    train(zpl)
    mp.undo()
    # the attacker's shadow: the same recipe on another pool draw (train.seed), for audit --reference
    shadow = M.build_config(tiny_cfg(base, **{"trainable.kind": "full", "train.seed": 1,
                                                 "out_dir": str(base / "shadow")}))
    overfit(base / "shadow", shadow)
    return {"overfit": base / "overfit", "zpl": base / "zpl", "shadow": base / "shadow", "final_loss": final_loss}


def test_positive_control_overfit_run_leaks(runs):
    assert runs["final_loss"] < 0.1  # it did memorise its pool
    res = audit_run(runs["overfit"], attacks=("loss", "ref", "mink"), **FAST)
    assert res["threat_model"] == "pool-vs-heldout" and res["n_members"] == res["n_nonmembers"] == 64
    loss = res["attacks"]["loss"]
    assert loss["auc"] > 0.75 and loss["auc_ci"][0] > 0.6
    assert res["attacks"]["ref"]["auc"] > 0.65
    assert res["mia_posterior_bound"] is None and not res["violation"]  # no guarantee, nothing to violate
    assert json.loads((runs["overfit"] / "audit.json").read_text())["attacks"]["loss"]["auc"] == loss["auc"]


def test_shadow_reference_calibrates_ref_attack(runs):
    """ref against a shadow run scores conf_trained − conf_shadow: equal to the two runs' own conf attacks'
    difference on the same examples, and a memorising run's members still stand out."""
    res = audit_run(runs["overfit"], attacks=("conf", "ref"), reference=runs["shadow"], **FAST)
    assert res["reference"] == str(runs["shadow"].resolve())
    assert res["attacks"]["ref"]["auc_ci"][0] > 0.5  # the members still stand out
    from privtune.audit.attacks import scores
    from privtune.audit.run import heldout_membership, training_pool, reference_state
    from privtune.trainable import trainable_state

    cfg = R.RunDir.open(runs["overfit"]).load_config()
    setup = prepare(cfg, need_pool=False, need_eval=False)
    members, _ = heldout_membership(setup.task, training_pool(cfg, setup.task), 0)
    ex = [setup.task.train[i] for i in members[:8]]
    shadow = reference_state(runs["shadow"], cfg)
    trained = A.load_tensors(R.RunDir.open(runs["overfit"]).final_weights())
    got = scores(setup, ex, shadow, trained, ("conf", "ref"))
    as_shadow = scores(setup, ex, trainable_state(setup.sel), shadow, ("conf",))["conf"]
    assert got["ref"] == pytest.approx(got["conf"] - as_shadow, abs=1e-9)
    assert audit_run(runs["overfit"], attacks=("ref",), **FAST)["reference"] == "base model"


def test_reference_must_be_a_shadow_of_the_run(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"^--reference: .*own pool"):
        audit_run(runs["overfit"], attacks=("ref",), reference=runs["overfit"], **FAST)  # itself: same pool
    with pytest.raises(ConfigError, match=r"^--reference: .*trainable"):  # the ZPL run trains another set
        audit_run(runs["overfit"], attacks=("ref",), reference=runs["zpl"], **FAST)
    r = CliRunner().invoke(app, ["audit", str(runs["overfit"]), "--reference", str(runs["overfit"]), "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --reference:") and r.stderr.count("\n") == 1


def test_false_guarantee_is_flagged(runs, tmp_path):
    """The same leaky model, claiming ε = 0.1: the audit must call it a violation."""
    import shutil

    run = tmp_path / "liar"
    shutil.copytree(runs["overfit"], run)
    A.atomic_write_json(run / R.PRIVACY, {"guarantee": "dp", "epsilon": 0.1, "delta": 1e-5,
                                         "mia_posterior_bound": 0.525, "mi_nats": None})
    res = audit_run(run, attacks=("loss",), **FAST)
    assert res["bound_applies"] and res["violation"] and "exceeds" in res["violations"][0]
    # one family-wise α over both checks of the one attack (posterior and held-out TPR at 1% FPR)
    assert res["alpha"] == 0.05 and res["n_tests"] == 2 and res["check_confidence"] == 1 - 0.05 / 2
    t = res["attacks"]["loss"]["tpr_check"]
    assert t["n_nonmembers_fit"] + t["n_nonmembers_heldout"] == 64 and t["tpr_bound"] >= t["fpr_upper"]
    r = CliRunner().invoke(app, ["audit", str(run), "--attacks", "loss", "--bootstrap", "20", "-q"])
    assert r.exit_code == 1 and "VIOLATION" in r.stderr


def test_zpl_run_is_consistent_with_chance(runs):
    res = audit_run(runs["zpl"], attacks=("loss", "ref"), secret_seed=4242, **FAST)
    assert res["threat_model"] == "secret-subset" and res["bound_applies"]
    assert res["mia_posterior_bound"] == 0.5
    for name in ("loss", "ref"):
        lo, hi = res["attacks"][name]["auc_ci"]
        assert lo < 0.5 < hi
    assert not res["violation"]
    c = res["canary"]
    assert c["threat_model"] == "secret-subset" and c["canaries"] == json.loads(
        (runs["zpl"] / "canaries.json").read_text())["included"].count(True)
    assert not c["valid"] and res["summary"]["epsilon_lower_bound"] is None  # see run.py: not claimed for S_J
    assert set(res["subset_rank_p_value"]) == {"loss", "ref"}
    assert all(0 < p <= 1 for p in res["subset_rank_p_value"].values())


def test_zpl_without_secret_falls_back_and_says_so(runs):
    r = CliRunner().invoke(app, ["audit", str(runs["zpl"]), "--attacks", "loss", "--bootstrap", "20", "-q"])
    assert r.exit_code == 0, r.stderr
    res = json.loads((runs["zpl"] / "audit.json").read_text())
    assert res["threat_model"] == "pool-vs-heldout" and not res["bound_applies"]
    assert "does not cover" in r.stdout and res["canary"]["threat_model"] == "pool-inclusion"


def test_bad_input(runs, tmp_path):
    with pytest.raises(ConfigError, match="^attacks"):
        audit_run(runs["overfit"], attacks=("nope",))
    with pytest.raises(ConfigError, match="^secret_seed"):
        audit_run(runs["overfit"], attacks=("loss",), secret_seed=1)
    r = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ")


def table_rows(html_text: str) -> list[dict]:
    """The report's run table parsed back: one dict per row, data-key → data-value (JSON)."""
    from html.parser import HTMLParser

    rows = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tr":
                rows.append({})
            elif tag == "td" and "data-key" in a:
                rows[-1][a["data-key"]] = json.loads(a["data-value"])

    P().feed(html_text)
    return [r for r in rows if r]


def test_report_on_two_tiny_runs_holds_their_numbers(runs, tmp_path):
    audit_run(runs["zpl"], attacks=("loss",), secret_seed=4242, **FAST)
    audit_run(runs["overfit"], attacks=("loss",), **FAST)
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(runs["zpl"]), str(runs["overfit"]), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    page = (out / "report.html").read_text()
    assert {p.name for p in out.iterdir()} >= {"report.html", "frontier.png", "curves.png"}
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page
    rows = {row["run"]: row for row in table_rows(page)}
    for name in ("zpl", "overfit"):
        run = runs[name]
        ev, priv = json.loads((run / "eval.json").read_text()), json.loads((run / "privacy.json").read_text())
        aud = json.loads((run / "audit.json").read_text())
        row = rows[name]
        assert row["accuracy"] == ev["accuracy"] and row["steps"] == ev["steps"]
        assert row["posterior_bound"] == priv["mia_posterior_bound"]
        assert row["audit_auc"] == aud["attacks"]["loss"]["auc"]
        assert row["unanimity_rate"] == priv.get("unanimity_rate")
    assert rows["zpl"]["mi_nats"] == 0.0 and rows["zpl"]["empirical_epsilon"] is None
    assert rows["overfit"]["epsilon"] is None and rows["overfit"]["method"] == "mezo"


def test_subset_rank_p_value_exact_null_and_leak():
    import numpy as np

    from privtune.audit.run import subset_rank_p_value
    from privtune.methods.paczero import balanced_design

    design = balanced_design(60, 16, seed=0)
    rng = np.random.default_rng(0)
    leak = design[:, 5] + 0.1 * rng.standard_normal(60)  # scores that reveal S_5
    assert subset_rank_p_value(leak, design, 5) == 1 / 16
    ps = [subset_rank_p_value(rng.standard_normal(60), design, int(rng.integers(16))) for _ in range(300)]
    assert abs(np.mean(ps) - 0.53) < 0.05  # uniform on {1/16, ..., 1}: mean 17/32


@pytest.mark.parametrize("method", [
    {"name": "bboxer", "optimizer": "one_plus_one"},
    {"name": "dpsgd", "epsilon": 2.0, "batch_size": 8, "lr": 1e-3},
])
def test_audit_runs_on_bboxer_and_dpsgd_runs(tmp_path, monkeypatch, method):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    over = {"method": method, "train.steps": 4, "trainable.kind": "final_norm", "out_dir": str(tmp_path / "run")}
    train(M.build_config(tiny_cfg(tmp_path, **over)))
    res = audit_run(tmp_path / "run", attacks=("loss", "ref"), **FAST)
    assert res["threat_model"] == "pool-vs-heldout" and set(res["attacks"]) == {"loss", "ref"}
    assert 0.0 <= res["attacks"]["loss"]["auc"] <= 1.0
    priv = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert res["mia_posterior_bound"] == priv["mia_posterior_bound"]  # the bound it is checked against: the run's own
    assert not res["violation"]
    if method["name"] == "dpsgd":  # posterior and TPR checks for both attacks share α
        assert res["n_tests"] == 4 and res["attacks"]["ref"]["tpr_check"]["violation"] is False
