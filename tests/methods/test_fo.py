"""fo, the non-private first-order reference: its gradient is the engine's per-example loss differentiated, its loss
goes down, a run resumes bit for bit (AdamW's moments survive the resume), replay is refused with exit 2,
privacy.json says "none", the audit runs on it, and the report draws it as the ceiling through its frontier_role."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from privtune import atomic as A
from privtune import config as C
from privtune import methods as M
from privtune import report
from privtune.audit import audit_run
from privtune.cli import app
from privtune.data import sample_batch
from privtune.methods import method_class
from privtune.methods.fo import FirstOrder
from privtune.run import keystore as KS
from privtune.run import rundir as R
from privtune.run.loop import train
from privtune.run.setup import prepare

FO = {"method": {"name": "fo", "lr": 1e-2, "batch_size": 16}, "task.pool_size": 32, "task.eval_limit": 8,
      "train.micro_batch": 5}


def build(make_cfg, **over):
    cfg = make_cfg(**{**FO, **over})
    setup = prepare(cfg, need_eval=False)
    return cfg, setup, FirstOrder(cfg.method, setup.engine, setup.pool, cfg.train.seed, cfg.train.steps)


def test_the_gradient_is_the_engines_loss_differentiated_on_the_public_batch(make_cfg):
    cfg, setup, m = build(make_cfg)
    idx = sample_batch(len(setup.pool), cfg.method.batch_size, cfg.train.seed, 0)  # MeZO's public batch of step 0
    rel = m.step(0)
    # the same loss in one pass per example, differentiated separately: the chunked sum must agree
    want = [torch.zeros_like(p) for p in m.params]
    for i in idx:
        logits = setup.engine.forward.chunk_logits(setup.pool, [[i]])[0][0]
        loss = F.cross_entropy(logits, setup.pool.labels[[i]]) / len(idx)
        for w, g in zip(want, torch.autograd.grad(loss, m.params)):
            w += g
    for p, w in zip(m.params, want):
        assert torch.allclose(p.grad, w, atol=1e-6, rtol=1e-4)
    assert rel.monitor["train_loss"] == pytest.approx(float(setup.engine.losses(setup.pool, idx).mean()), rel=1e-5)
    assert rel.updates == [] and set(rel.public) == {"grad_digest"}


def test_loss_goes_down_and_only_trainable_parameters_move(make_cfg):
    cfg, setup, m = build(make_cfg)
    before = {n: p.detach().clone() for n, p in setup.sel.model.named_parameters()}
    first = float(setup.engine.losses(setup.pool).mean())
    for t in range(15):
        m.apply(m.step(t), m.lr_at(t))
    assert float(setup.engine.losses(setup.pool).mean()) < first - 0.05
    trainable = {n for n, _ in setup.sel.params}
    after = dict(setup.sel.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    assert all(not torch.equal(before[n], after[n]) for n in trainable)


def test_weight_decay_is_adamw_on_matrices_only(make_cfg):
    """Decoupled decay θ ← θ(1 − lr·λ) before the Adam step, and none on vectors (norm gains, biases)."""
    cfg, setup, m = build(make_cfg, **{"method.weight_decay": 0.5})
    groups = {g["weight_decay"]: g["params"] for g in m.opt.param_groups}
    assert all(p.ndim >= 2 for p in groups[0.5]) and all(p.ndim < 2 for p in groups[0.0])
    assert m.opt.defaults["betas"] == (0.9, 0.999) and not m.opt.defaults["foreach"]


def test_run_resumes_bitwise_and_refuses_replay(tmp_path, make_cfg, monkeypatch, stop_after, same_run):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    over = {**FO, "train.steps": 6, "train.checkpoint_every": 2}
    train(make_cfg(**over, out_dir=str(tmp_path / "a")))
    part = make_cfg(**over, out_dir=str(tmp_path / "b"))
    seen = {}

    def look(ev):  # AdamW's state of checkpoint 2 is kept out of the run dir, beside the other resume state
        if ev["event"] == "step" and ev["step"] == 3:
            run_id = json.loads((tmp_path / "b" / "privacy.json").read_text())["run_id"]
            seen["state"] = KS.load_private_state(run_id, 2)

    assert train(part, callback=stop_after(3, look)) == {"stopped_at": 3}  # the stop checkpoints θ and AdamW at 3
    assert seen["state"]["optimizer"]["state"]  # the moments themselves, not an empty optimizer
    train(part, resume=True)
    a, b = tmp_path / "a", tmp_path / "b"
    same_run(a, b)
    priv = json.loads((a / "privacy.json").read_text())
    assert priv["method"] == "fo" and priv["guarantee"] == "none" and priv["mia_posterior_bound"] is None
    assert priv["epsilon"] is None and priv["mi_nats"] is None and priv["assumptions"] == "no privacy guarantee"
    assert not KS.files_of(KS.stem(priv["run_id"]))  # the resume state is gone once the run is done
    r = CliRunner().invoke(app, ["replay", str(a)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: replay: an fo run"), r.stderr


def test_resume_without_the_optimizer_state_would_differ(tmp_path, make_cfg, monkeypatch, stop_after):
    """The guard the resume test relies on: a resume that starts AdamW afresh (its moments dropped) ends elsewhere
    than the uninterrupted run, so the bitwise equality above does test that the moments survive."""
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    over = {**FO, "train.steps": 5, "train.checkpoint_every": 2}
    train(make_cfg(**over, out_dir=str(tmp_path / "a")))
    part = make_cfg(**over, out_dir=str(tmp_path / "b"))
    train(part, callback=stop_after(3))
    monkeypatch.setattr(FirstOrder, "load_private_state", lambda self, state: None)
    train(part, resume=True)
    wa = A.load_tensors(tmp_path / "a" / "model" / "trainable.safetensors")
    wb = A.load_tensors(tmp_path / "b" / "model" / "trainable.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_audit_runs_on_an_fo_run_and_finds_the_leak(tmp_path, make_cfg, monkeypatch):
    """No guarantee: the default threat model (pool vs held-out) is audited and nothing can be violated; a memorising
    fo run (full fine-tuning, whole pool per step) is what the attacks must catch."""
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    cfg = make_cfg(**{"trainable.kind": "full", "method": {"name": "fo", "lr": 1e-2, "batch_size": 64},
                      "train.steps": 40, "train.checkpoint_every": 40, "train.micro_batch": 64})
    train(cfg)
    assert method_class("fo").threat_model == "pool-vs-heldout"
    res = audit_run(cfg.out_dir, attacks=("loss",), n_boot=40, limit=None)
    assert res["threat_model"] == "pool-vs-heldout" and res["n_members"] == 64
    assert res["mia_posterior_bound"] is None and not res["violation"]
    assert res["attacks"]["loss"]["auc"] > 0.75


def test_report_draws_fo_as_the_ceiling_through_its_frontier_role(tmp_path, monkeypatch):
    assert FirstOrder.frontier_role == "ceiling" and report.ROLES["fo"] == "ceiling"
    assert all(report.ROLES[m] is None for m in ("mezo", "dpzero", "dpsgd"))
    assert report.NAMES["fo"] == FirstOrder.display
    run = tmp_path / "fo"
    cfg = {"model": {"name": "tiny"}, "task": {"name": "sst2"}, "method": {"name": "fo", "lr": 1e-3},
           "train": {"seed": 0}, "out_dir": str(run)}
    run.mkdir()
    A.atomic_write_text(run / R.CONFIG, C.dump(M.build_config(cfg)))
    A.atomic_write_json(run / R.EVAL, {"accuracy": 0.9, "steps": 1, "wall_time_s": 1.0, "initial_accuracy": 0.5})
    A.atomic_write_json(run / R.PRIVACY, {"method": "fo", "guarantee": "none", "mia_posterior_bound": None})
    (panel,) = report.make_panels([report.load_run(run)], [])
    assert [p["accuracy"] for p in panel.ceiling] == [0.9]
    assert report._line_styles(panel) == {}  # no frontier line for it: it is the ceiling
    sweep = tmp_path / "frontier_x.json"
    sweep.write_text(json.dumps({"rows": [{"method": "fo", "accuracy_mean": 0.88}]}))
    (_, sp) = report.make_panels([report.load_run(run)], [report.load_sweep(sweep)])
    assert [p["label"] for p in sp.ceiling] == [FirstOrder.display]
    # the role, not the name, decides: without it, fo is a frontier point like any other
    monkeypatch.setitem(report.ROLES, "fo", None)
    (panel,) = report.make_panels([report.load_run(run)], [])
    assert panel.ceiling == [] and list(report._line_styles(panel)) == [FirstOrder.display]
