import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privtune import atomic as A
from privtune import config as C
from privtune import methods as M
from privtune.errors import ConfigError, PrivtuneError, TrainingDiverged
from privtune.run.loop import train
from privtune.run.replay import replay, verify

REPO = Path(__file__).resolve().parents[2]


def weights(run):
    return A.load_tensors(Path(run) / "model" / "trainable.safetensors")


def test_train_takes_no_test_only_arguments():
    # interruptions are simulated with a callback raising run.loop.StopRequested (conftest's stop_after)
    assert list(inspect.signature(train).parameters) == ["cfg", "resume", "callback"]


def test_run_dir_layout_and_contents(make_cfg):
    cfg = make_cfg()
    res = train(cfg)
    run = Path(cfg.out_dir)
    for f in ["config.yaml", "metrics.jsonl", "eval.json", "transcript.jsonl", "privacy.json",
              "model/trainable.safetensors", "model/manifest.json", "state/state.json"]:
        assert (run / f).exists(), f
    ev = json.loads((run / "eval.json").read_text())
    assert ev["total"] == 40 and 0 <= ev["accuracy"] <= 1 and ev["accuracy"] == res["accuracy"]
    lines = A.read_jsonl(run / "transcript.jsonl")
    assert [l["step"] for l in lines] == list(range(12))
    assert set(lines[0]) == {"step", "lr", "updates", "projected_grad"}
    priv = json.loads((run / "privacy.json").read_text())
    assert priv["guarantee"] == "none" and priv["steps_done"] == 12
    assert priv["secret_source"] is None and "spent" not in priv  # no secret; no nats budget to show as spent
    assert M.build_config(C.load_yaml(run / "config.yaml")).model_dump() == cfg.model_dump()
    # weights moved away from the base model
    base = M.build_config(C.load_yaml(run / "config.yaml"))
    from privtune.run.setup import build_model
    _, sel = build_model(base)
    w = weights(run)
    assert any(not torch.equal(w[n], p) for n, p in sel.params)


@pytest.mark.parametrize("method,timed", [("mezo", True), ("dpzero", False), ("paczero", False)])
def test_per_step_timing_is_released_only_by_methods_without_a_secret(make_cfg, method, timed):
    """A step's wall time grows with its work, e.g. the hidden size of a Poisson batch: a method with a secret
    writes no per-step timing to the run dir, only the total wall time in eval.json (issue 15, defect 7)."""
    over = {"train.steps": 4, "train.log_every": 2, "task.pool_size": 32, "task.eval_limit": 8,
            "method.batch_size": 8}
    if method == "dpzero":
        over.update({"method.name": "dpzero", "method.noise_multiplier": 1.0, "method.sampling": "poisson"})
    elif method == "paczero":
        over.update({"method.name": "paczero", "method.mode": "zpl", "method.subsets": 4})
    cfg = make_cfg(**over)
    train(cfg)
    run = Path(cfg.out_dir)
    rows = [r for r in A.read_jsonl(run / "metrics.jsonl") if r.get("kind") != "eval"]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(("elapsed_s" in r) == timed for r in rows)
    if not timed:
        assert not [k for r in rows for k in r if "time" in k or "elapsed" in k or "comm" in k], rows
    assert json.loads((run / "eval.json").read_text())["wall_time_s"] >= 0  # the total stays
    assert ("no per-step timing" in json.loads((run / "privacy.json").read_text())["assumptions"]) == (not timed)


def test_resume_is_bitwise_identical_to_uninterrupted(tmp_path, make_cfg, stop_after):
    full = make_cfg(out_dir=str(tmp_path / "a"))
    train(full)
    part = make_cfg(out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(7)) == {"stopped_at": 7}
    assert not (tmp_path / "b" / "model").exists()
    train(part, resume=True)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ta = (tmp_path / "a" / "transcript.jsonl").read_text()
    assert ta == (tmp_path / "b" / "transcript.jsonl").read_text()


def test_resume_sweeps_temp_files_of_interrupted_writes(tmp_path, make_cfg, stop_after):
    cfg = make_cfg(**{"train.steps": 6})
    train(cfg, callback=stop_after(5))
    run = tmp_path / "run"
    junk = [run / ".privacy.json.abc123", run / "state" / ".trainable-00000005.safetensors.x1"]
    for j in junk:
        j.write_bytes(b"torn")
    (run / ".model-q1").mkdir()
    train(cfg, resume=True)
    assert not any(j.exists() for j in junk) and not (run / ".model-q1").exists()
    assert not [f for f in run.rglob(".*")]


def test_resume_after_crash_between_checkpoints_recomputes_and_verifies(tmp_path, make_cfg, stop_after):
    full = make_cfg(out_dir=str(tmp_path / "a"))
    train(full)
    cfg = make_cfg(out_dir=str(tmp_path / "b"))
    train(cfg, callback=stop_after(8))
    # simulate a crash after step 10 was released: transcript ahead of the checkpoint (8), plus a torn line
    ref = A.read_jsonl(tmp_path / "a" / "transcript.jsonl")
    with open(tmp_path / "b" / "transcript.jsonl", "a") as f:
        for line in ref[8:10]:
            f.write(json.dumps(line) + "\n")
        f.write('{"step": 10, "lr"')
    train(cfg, resume=True)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "transcript.jsonl").read_text() == (tmp_path / "b" / "transcript.jsonl").read_text()


def test_resume_detects_a_tampered_transcript(tmp_path, make_cfg, stop_after):
    cfg = make_cfg()
    train(cfg, callback=stop_after(5))
    p = Path(cfg.out_dir) / "transcript.jsonl"
    lines = A.read_jsonl(p)
    extra = dict(lines[-1], step=5, updates=[[1, 0.5]])
    A.append_jsonl(p, extra)
    with pytest.raises(PrivtuneError, match="differs"):
        train(cfg, resume=True)


@pytest.mark.parametrize("kind", ["top_layers:2", "lora", "norms"])
def test_replay_transcript_rebuilds_saved_weights(tmp_path, make_cfg, kind):
    cfg = make_cfg(**{"trainable.kind": kind, "method.weight_decay": 0.01, "method.lr_schedule": "linear"})
    train(cfg)
    ok, msg = verify(cfg.out_dir, replay(cfg.out_dir))
    assert ok, msg


def test_replay_detects_a_wrong_transcript(make_cfg):
    cfg = make_cfg()
    train(cfg)
    p = Path(cfg.out_dir) / "transcript.jsonl"
    lines = A.read_jsonl(p)
    lines[3]["updates"][0][1] += 1e-3
    p.write_text("".join(json.dumps(l) + "\n" for l in lines))
    ok, _ = verify(cfg.out_dir, replay(cfg.out_dir))
    assert not ok


def test_lora_every_trainable_changes_no_frozen_does(make_cfg):
    cfg = make_cfg(**{"trainable.kind": "lora", "method.lr": 1e-2})
    from privtune.run.setup import build_model
    _, sel0 = build_model(cfg)
    base = {n: p.detach().clone() for n, p in sel0.model.named_parameters()}
    train(cfg)
    w = weights(cfg.out_dir)
    lora_names = {n for n in base if "lora_" in n}
    assert set(w) == lora_names and lora_names
    for n in lora_names:
        assert not torch.equal(w[n], base[n]), n
    # a frozen parameter is never touched: rebuild the model and apply the saved weights; every other tensor equal
    _, sel1 = build_model(cfg)
    for n, p in sel1.model.named_parameters():
        if n not in lora_names:
            assert torch.equal(p, base[n]), n


def test_out_dir_exists_is_refused_without_resume(make_cfg):
    cfg = make_cfg()
    train(cfg)
    with pytest.raises(ConfigError, match="out_dir"):
        train(cfg)


def test_nan_loss_stops_and_keeps_last_good_state(make_cfg, monkeypatch):
    cfg = make_cfg()
    from privtune.zo import engine as E
    real = E.ZOEngine.pair_losses
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        lp, lm = real(self, *a, **k)
        if calls["n"] == 7:
            lp = lp * float("nan")
        return lp, lm

    monkeypatch.setattr(E.ZOEngine, "pair_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="step 6"):
        train(cfg)
    run = Path(cfg.out_dir)
    st = json.loads((run / "state" / "state.json").read_text())
    assert st["step"] == 6 and len(A.read_jsonl(run / "transcript.jsonl")) == 6
    assert json.loads((run / "privacy.json").read_text())["steps_done"] == 6


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "privtune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_end_to_end_tiny_config(tmp_path):
    out = tmp_path / "e2e"
    r = _cli("train", "--config", "configs/tiny_mezo.yaml", f"out_dir={out}", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 100 and (out / "model" / "trainable.safetensors").exists()
    r = _cli("eval", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(res["accuracy"])
    r = _cli("replay", str(out), "--verify")
    assert r.returncode == 0 and "bit-identical" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------------------ fixed secrets (audit mode)
AUDIT_WARNING = "audit mode: the secret is fixed; this run is not private"
DP_SMALL = {"train.steps": 2, "task.pool_size": 32, "task.eval_limit": 8, "method.batch_size": 8,
            "method.name": "dpzero", "method.epsilon": 2.0, "method.clip": 5.0}


def test_fixed_secret_run_is_recorded_and_warned_at_every_start(tmp_path, make_cfg, monkeypatch, stop_after):
    from privtune.privacy.bounds import eps_to_posterior

    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "99")
    fixed = make_cfg(**DP_SMALL, out_dir=str(tmp_path / "fixed"))
    events = []
    assert train(fixed, callback=stop_after(1, events.append)) == {"stopped_at": 1}
    train(fixed, resume=True, callback=events.append)  # the key comes from the keystore, the warning from privacy.json
    warnings = [e for e in events if e["event"] == "warning"]
    assert warnings == [{"event": "warning", "message": AUDIT_WARNING}] * 2
    assert [e["event"] for e in events].index("warning") < [e["event"] for e in events].index("start")
    priv = json.loads((tmp_path / "fixed" / "privacy.json").read_text())
    assert priv["secret_source"] == "fixed"
    # the nominal guarantee stays, so that an audit can compare against what the mechanism would give
    assert priv["guarantee"] == "dp" and priv["epsilon"] == 2.0
    assert priv["mia_posterior_bound"] == eps_to_posterior(2.0, 1e-5)
    monkeypatch.delenv("PRIVTUNE_SECRET_SEED")
    events = []
    train(make_cfg(**DP_SMALL, out_dir=str(tmp_path / "keyed")), callback=events.append)
    assert not [e for e in events if e["event"] == "warning"]
    assert json.loads((tmp_path / "keyed" / "privacy.json").read_text())["secret_source"] == "key"


def test_python_m_privtune_train_warns_on_stderr_in_audit_mode(tmp_path):
    import os

    env = dict(os.environ, PRIVTUNE_SECRET_SEED="99", PRIVTUNE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    over = [f"{k}={v}" for k, v in DP_SMALL.items()]
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", "configs/tiny_dpzero.yaml", *over,
                        f"out_dir={tmp_path / 'run'}", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    hits = [line for line in r.stderr.splitlines() if "audit mode" in line]
    assert hits == [f"warning: {AUDIT_WARNING}"], r.stderr  # once, even with --quiet
    assert "audit mode" not in r.stdout
