"""Forgetting a run's secrets: the key record, `privtune forget RUN`, `--stale DAYS`, and a spent budget."""

import json
import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privtune import atomic as A
from privtune.cli import app
from privtune.errors import BudgetError, PrivtuneError
from privtune.run import forget as F
from privtune.run import keystore as S
from privtune.run import rundir as R
from privtune.run.keystore import private_state_path
from privtune.run.loop import train

DAY = 86400.0


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def keystore_files(cache: Path) -> list[str]:
    return sorted(p.name for sub in ("secrets", "private") if (cache / sub).is_dir() for p in (cache / sub).iterdir())


def fake_run(path: Path, run_id: str, finished: bool = False) -> Path:
    path.mkdir(parents=True)
    A.atomic_write_json(path / R.PRIVACY, {"run_id": run_id, "steps_done": 3})
    if finished:
        A.atomic_write_json(path / R.EVAL, {"accuracy": 0.5})
    return path


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def pac_cfg(make_cfg, tmp_path, name="run", **over):
    return make_cfg(**{"method": {"name": "paczero", "mode": "mi", "subsets": 8, "lr": 1e-3, "eps": 1e-2,
                                  "budget": 0.33},
                       "out_dir": str(tmp_path / name), "task.pool_size": 48, "task.eval_limit": 8, **over})


# ------------------------------------------------------------------------------------------- the key record
def test_key_record_names_the_run_dir_is_private_and_goes_with_the_key(cache, tmp_path):
    key = S.create("run-a", run_dir=tmp_path / "sub" / ".." / "runA")
    rec_path = key.path.with_suffix(".json")
    assert stat.S_IMODE(rec_path.stat().st_mode) == 0o600 and stat.S_IMODE(key.path.stat().st_mode) == 0o600
    rec = json.loads(rec_path.read_text())
    assert rec["run_dir"] == str((tmp_path / "runA").resolve()) and abs(rec["created"] - time.time()) < 600
    assert set(rec) == {"run_dir", "created"}  # nothing about the key itself
    key.forget()
    assert keystore_files(cache) == []


# --------------------------------------------------------------------------------------- privtune forget RUN
def test_forget_run_deletes_key_and_private_state_then_resume_is_refused(cache, tmp_path, make_cfg, stop_after):
    cfg = pac_cfg(make_cfg, tmp_path, **{"train.checkpoint_every": 2})
    assert train(cfg, callback=stop_after(3)) == {"stopped_at": 3}  # an abandoned run: key, record and posterior kept
    run_id = json.loads((tmp_path / "run" / R.PRIVACY).read_text())["run_id"]
    assert private_state_path(run_id).exists() and S.load(run_id) is not None and len(keystore_files(cache)) == 3
    r = CliRunner().invoke(app, ["forget", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"forgot {tmp_path / 'run'}: deleted its secret key, key record, private state")
    assert keystore_files(cache) == []
    r = CliRunner().invoke(app, ["forget", str(tmp_path / "run")])
    assert r.exit_code == 0 and r.stdout.startswith(f"nothing to forget for {tmp_path / 'run'}"), r.output
    with pytest.raises(PrivtuneError, match="secret key is gone"):
        train(cfg, resume=True)


@pytest.mark.parametrize("args,msg", [(["NOT_A_RUN"], "not a privtune run directory"),
                                      ([], "give exactly one of RUN_DIR or --stale"),
                                      (["--stale", "-1"], "--stale: must be a number of days >= 0"),
                                      (["--stale", "week"], "--stale: must be a number of days >= 0")])
def test_forget_bad_input_is_one_line_exit_2(cache, tmp_path, args, msg):
    (tmp_path / "plain").mkdir()
    args = [str(tmp_path / "plain") if a == "NOT_A_RUN" else a for a in args]
    r = CliRunner().invoke(app, ["forget", *args])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and msg in err, r.output


# ------------------------------------------------------------------------------------- a spent budget
def test_run_that_spends_its_budget_forgets_by_itself(cache, tmp_path, make_cfg, monkeypatch):
    from privtune.methods import paczero

    # every step asks for the whole budget: the second costly step overdraws it and the ledger refuses the charge
    monkeypatch.setattr(paczero.pac, "step_budget", lambda budget, *a, **k: budget)
    cfg = pac_cfg(make_cfg, tmp_path)
    with pytest.raises(BudgetError, match=r"would spend .*; its secret key and private state were deleted"):
        train(cfg)
    assert (tmp_path / "run" / R.PRIVACY).exists() and keystore_files(cache) == []


def test_resume_of_a_spent_run_forgets_it(cache, tmp_path, make_cfg, stop_after):
    cfg = pac_cfg(make_cfg, tmp_path)
    train(cfg, callback=stop_after(3))
    led = json.loads((tmp_path / "run" / R.PRIVACY).read_text())
    led["spent"] = led["budget"]  # killed right after the charge that spent the budget
    A.atomic_write_json(tmp_path / "run" / R.PRIVACY, led)
    assert keystore_files(cache)
    with pytest.raises(BudgetError, match="budget is spent"):
        train(cfg, resume=True)
    assert keystore_files(cache) == []


# --------------------------------------------------------------------------------- privtune forget --stale
def test_stale_keys_are_those_of_gone_finished_or_idle_runs(cache, tmp_path):
    now = time.time()
    live = fake_run(tmp_path / "live", "id-live")
    S.create("id-live", run_dir=live)
    S.create("id-gone", run_dir=tmp_path / "gone")  # its run dir was deleted (or never appeared)
    S.create("id-old", run_dir=fake_run(tmp_path / "replaced", "id-new"))  # the path now holds another run
    S.create("id-done", run_dir=fake_run(tmp_path / "done", "id-done", finished=True))
    private = S.private_state_path("id-live")
    private.parent.mkdir(parents=True)
    private.write_bytes(b"posterior")
    stem = {r: S.stem(r) for r in ("id-live", "id-gone", "id-old", "id-done")}

    def found(days, at):
        return {f.stem: f.reason for f in F.stale(days, now=at)}

    # just created: a run being set up has its key before its run dir, so "gone" waits out the setup grace
    assert found(30, now) == {stem["id-done"]: "run finished"}
    later = now + 2 * 3600
    assert found(30, later) == {stem["id-gone"]: "run directory gone", stem["id-old"]: "run directory gone",
                                stem["id-done"]: "run finished"}
    month = found(30, now + 31 * DAY)
    assert month[stem["id-live"]].startswith("run inactive for 31.0 days") and len(month) == 4
    removed = F.forget_stale(30, now=later)
    assert {f.stem for f in removed} == {stem["id-gone"], stem["id-old"], stem["id-done"]}
    assert all(f.deleted and not any(p.exists() for p in f.deleted) for f in removed)
    assert keystore_files(cache) == sorted([stem["id-live"] + ".json", stem["id-live"] + ".key",
                                            stem["id-live"] + ".pt"])  # the live run keeps key and posterior


def test_stale_cli_lists_then_removes_keys_without_a_record_by_age(cache, tmp_path):
    live = fake_run(tmp_path / "live", "id-live")
    S.create("id-live", run_dir=live)
    legacy = S.create("id-legacy")  # a key from before records were kept: judged by its age alone
    age(legacy.path, 40 * DAY)
    age(live / R.PRIVACY, 10 * DAY)
    r = CliRunner().invoke(app, ["forget", "--stale", "30", "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"would delete {S.stem('id-legacy')} (run directory unknown, last written 40.0 days")
    assert lines[1] == f"1 stale key(s) in {cache}; dry run, nothing deleted" and len(lines) == 2
    assert len(keystore_files(cache)) == 3
    r = CliRunner().invoke(app, ["forget", "--stale", "7"])  # idle for 10 days now counts
    assert r.exit_code == 0, r.output
    assert f"deleted {S.stem('id-live')} (run inactive for 10.0 days: {live.resolve()})" in r.stdout
    assert keystore_files(cache) == []
    r = CliRunner().invoke(app, ["forget", "--stale", "7"])
    assert r.exit_code == 0 and r.stdout.strip() == f"no stale keys in {cache}"
