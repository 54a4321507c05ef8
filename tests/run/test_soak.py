"""Crash and resume: the SIGKILL soak script (short), and crashes injected at exact instants of the recipe.

A crash is simulated in-process by raising a BaseException subclass at the chosen instant (nothing of privtune
catches it), which leaves the run dir and the keystore exactly as a SIGKILL there would (less a temp file).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privtune import atomic as A
from privtune import methods as M
from privtune.run import keystore as S
from privtune.run import rundir as R
from privtune.run.ledger import Ledger
from privtune.run.loop import train
from privtune.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
SECRET_SEED = "4242"


class Crash(BaseException):
    """Stands for SIGKILL: no handler in privtune catches it."""


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)  # the soak's subprocesses run on one thread too; fast and deterministic


# ------------------------------------------------------------------------------------------------ the soak script
def test_soak_script_survives_three_kills(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "soak_resume.py"), "--kills", "3", "--steps", "12",
                        "--seed", "3", "--workdir", str(tmp_path / "soak")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    print(summary)
    assert summary["ok"] and summary["kills_survived"] == 3
    assert summary["checks"] > 0 and summary["observations"] > 0
    assert summary["spent"] <= 0.33 + 1e-12


# -------------------------------------------------------------------------------------------- injected crashes
def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]
    lines = ["text\tlabel"] + [f"a {words[i % 8]} film number {i} with {words[(i * 3) % 8]} acting\t{i % 2}"
                               for i in range(64)]
    path = folder / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_dict(tmp: Path, name: str, method: str = "paczero") -> dict:
    data = write_data(tmp / "data")
    m = ({"name": "paczero", "mode": "mi", "budget": 0.33, "subsets": 8, "lr": 1e-3, "eps": 1e-2}
         if method == "paczero" else {"name": "mezo", "lr": 1e-3, "eps": 1e-3, "batch_size": 8})
    return {"model": {"name": "tiny", "device": "cpu"},
            "task": {"name": "custom", "train_path": str(data), "eval_path": str(data), "eval_limit": 8,
                     "template": "{text} It was", "verbalizer": [" bad", " good"], "pool_size": 32},
            "trainable": {"kind": "top_layers:2"}, "method": m,
            "train": {"steps": 12, "seed": 3, "log_every": 4, "checkpoint_every": 5, "micro_batch": 32},
            "out_dir": str(tmp / name)}


def reference_config(tmp: Path) -> dict:
    """The uninterrupted run the crashed runs must end identical to (conftest's reference_run trains it once)."""
    return cfg_dict(tmp, "ref")


def assert_same_as(run: Path, ref: Path) -> None:
    for rel in ("model/trainable.safetensors", "transcript.jsonl"):
        assert (run / rel).read_bytes() == (ref / rel).read_bytes(), rel
    a, b = (json.loads((d / R.PRIVACY).read_text()) for d in (ref, run))
    a.pop("run_id"), b.pop("run_id")
    assert a == b


def ledger_spent(run: Path) -> float:
    return json.loads((run / R.PRIVACY).read_text())["spent"]


CRASH_POINTS = {
    # name: (file whose write crashes, which write of it (1-based))
    "inside_ledger_charge_step_5": ("privacy.json", 8),  # create, charges 0..4, checkpoint update, charge 5
    "inside_checkpoint_pointer_2nd": ("state.json", 2),  # weights of step 10 written, pointer still at 5
    "inside_private_state_2nd": (".pt", 2),
    "inside_final_model_save": ("trainable.safetensors", 1),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_crash_inside_a_write_then_resume_is_bit_identical(reference_run, monkeypatch, point):
    tmp, ref = reference_run
    suffix, nth = CRASH_POINTS[point]
    cfg = M.build_config(cfg_dict(tmp, f"crash-{point}"))
    run = Path(cfg.out_dir)
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            calls["n"] += 1
            if calls["n"] == nth:
                raise Crash()  # the temp file is complete, the rename has not happened
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(A.os, "replace", replace)
    with pytest.raises(Crash):
        train(cfg)
    spent_at_crash = ledger_spent(run)
    monkeypatch.setattr(A.os, "replace", real_replace)
    train(cfg, resume=True)
    assert ledger_spent(run) >= spent_at_crash
    assert_same_as(run, ref)


def test_torn_transcript_line_then_resume_is_bit_identical(reference_run, monkeypatch):
    tmp, ref = reference_run
    cfg = M.build_config(cfg_dict(tmp, "torn"))
    run = Path(cfg.out_dir)
    real = A.append_jsonl

    def append(path, obj):
        if Path(path).name == R.TRANSCRIPT and obj["step"] == 7:
            with open(path, "a") as f:
                f.write(json.dumps(obj)[:25])  # half a line, then the power goes
            raise Crash()
        return real(path, obj)

    monkeypatch.setattr(A, "append_jsonl", append)
    with pytest.raises(Crash):
        train(cfg)
    led = json.loads((run / R.PRIVACY).read_text())
    assert led["last_charged_step"] == 7  # charged before the transcript line: the ledger never lags
    monkeypatch.setattr(A, "append_jsonl", real)
    train(cfg, resume=True)
    assert_same_as(run, ref)


def test_two_crashes_at_the_same_checkpoint_then_resume(reference_run, monkeypatch):
    tmp, ref = reference_run
    cfg = M.build_config(cfg_dict(tmp, "twice"))
    real = RunDir.save_checkpoint

    def save(run, step, tensors):
        if step == 10:
            raise Crash()  # after the private state of step 10 is saved, before state.json points at 10
        return real(run, step, tensors)

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    for resume in (False, True):
        with pytest.raises(Crash):
            train(cfg, resume=resume)
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    train(cfg, resume=True)  # the private state of checkpoint 5 survived both crashes
    assert_same_as(Path(cfg.out_dir), ref)


@pytest.mark.parametrize("where", ["before_final_ledger_update", "after_final_ledger_update", "before_eval_json"])
def test_crash_after_the_final_checkpoint_then_resume(reference_run, monkeypatch, where):
    tmp, ref = reference_run
    cfg = M.build_config(cfg_dict(tmp, f"final-{where}"))
    run = Path(cfg.out_dir)
    if where.endswith("final_ledger_update"):
        real = Ledger.update

        def update(self, **fields):
            if "steps_done" in fields and where.startswith("before"):
                raise Crash()
            real(self, **fields)
            if "steps_done" in fields:
                raise Crash()
        monkeypatch.setattr(Ledger, "update", update)
    else:
        real = A.atomic_write_json

        def write(path, obj):
            if Path(path).name == R.EVAL:
                raise Crash()
            return real(path, obj)
        monkeypatch.setattr(A, "atomic_write_json", write)
    with pytest.raises(Crash):
        train(cfg)
    monkeypatch.undo()
    assert ledger_spent(run) == ledger_spent(ref)  # every charge is on disk whatever the resume does
    for rel in ("model/trainable.safetensors", "transcript.jsonl"):
        assert (run / rel).read_bytes() == (ref / rel).read_bytes()
    train(cfg, resume=True)  # only the wrap-up is left: no step, no private state, no key needed
    assert_same_as(run, ref)
    evals = [json.loads((d / R.EVAL).read_text()) for d in (run, ref)]
    assert [e["accuracy"] for e in evals] == [evals[1]["accuracy"]] * 2 and "initial_accuracy" in evals[0]
    run_id = json.loads((run / R.PRIVACY).read_text())["run_id"]
    assert S.load(run_id) is None and not S.private_state_path(run_id).exists()  # J can never be re-drawn


def test_privacy_summary_matches_spent_after_a_crash(reference_run, monkeypatch):
    tmp, _ = reference_run
    cfg = M.build_config(cfg_dict(tmp, "summary"))
    from privtune.zo import engine as E
    real, calls = E.ZOEngine.apply_update, {"n": 0}

    def apply(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash()  # step 3 charged, not applied; no checkpoint yet
        return real(self, *a, **k)
    monkeypatch.setattr(E.ZOEngine, "apply_update", apply)
    with pytest.raises(Crash):
        train(cfg)
    led = json.loads((Path(cfg.out_dir) / R.PRIVACY).read_text())
    assert led["spent"] > 0
    assert led["mi_nats"] == led["spent"], (led["mi_nats"], led["spent"])  # today: 0.0 vs the spent nats


def test_metrics_rows_survive_a_resume_at_a_logged_checkpoint(tmp_path, stop_after):
    ref = M.build_config(cfg_dict(tmp_path, "mref", "mezo"))
    train(ref)
    cfg = M.build_config(cfg_dict(tmp_path, "m", "mezo"))
    train(cfg, callback=stop_after(8))  # checkpoint at 8, a logged step (log_every 4)
    train(cfg, resume=True)
    steps = lambda c: [r["step"] for r in A.read_jsonl(Path(c.out_dir) / R.METRICS)]  # noqa: E731
    assert steps(cfg) == steps(ref)  # today: [0, 4, 12] vs [0, 4, 8, 12]
