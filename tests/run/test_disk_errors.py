"""Disk full and read-only directories: a clear error, and the privacy ledger intact.

We run as root in CI, where chmod 0o500 does not stop writes; `writes_blocked()` detects that, and the tests then
simulate the read-only directory (PermissionError from tempfile.mkdtemp/mkstemp under it). A full disk is simulated
at the write primitives (privtune.atomic): from the N-th write of a chosen file on, every atomic write (and, for ENOSPC, every
append) raises OSError(ENOSPC), as a disk that stays full would.

A failing write becomes a one-line PrivtuneError naming the file (CLI: "error: ...", exit 2). What also holds:
privacy.json always parses, never shows a lower `spent` after the failure, no run dir is half-created, the keystore
keeps no key of a run that never started, and once the disk has room again `--resume` ends bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

from privtune import atomic as A
from privtune import methods as M
from privtune.errors import PrivtuneError
from privtune.run import rundir as R
from privtune.run.loop import train

REPO = Path(__file__).resolve().parents[2]
SECRET_SEED = "31337"


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    path = folder / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"a {words[i % 6]} film {i}\t{i % 2}\n" for i in range(48)))
    return path


def cfg_dict(tmp: Path, out: Path) -> dict:
    data = write_data(tmp / "data")
    return {"model": {"name": "tiny", "device": "cpu"},
            "task": {"name": "custom", "train_path": str(data), "eval_path": str(data), "eval_limit": 8,
                     "template": "{text} It was", "verbalizer": [" bad", " good"], "pool_size": 32},
            "trainable": {"kind": "top_layers:2"},
            "method": {"name": "paczero", "mode": "mi", "budget": 0.3, "subsets": 8, "lr": 1e-3, "eps": 1e-2},
            "train": {"steps": 12, "seed": 1, "log_every": 3, "checkpoint_every": 5, "micro_batch": 32},
            "out_dir": str(out)}


def writes_blocked(folder: Path) -> bool:
    """chmod 0o500 `folder`; True if that really stops creating files in it (False as root)."""
    folder.chmod(0o500)
    try:
        (folder / ".probe").write_text("x")
    except PermissionError:
        return True
    (folder / ".probe").unlink()
    return False


def spent(run: Path) -> float | None:
    p = run / R.PRIVACY
    return json.loads(p.read_text())["spent"] if p.exists() else None


def reference_config(tmp: Path) -> dict:
    """The uninterrupted run the failing runs must end identical to (conftest's reference_run trains it once)."""
    return cfg_dict(tmp, tmp / "ref")


class DiskFull:
    """From the nth write of a file matching `pattern` on, writes fail: atomic writes always; appends too for
    ENOSPC (a full disk), not for EACCES (a directory made read-only: existing files stay writable)."""

    def __init__(self, monkeypatch, run: Path, pattern: str, nth: int, code: int):
        self.run, self.pattern, self.nth, self.code = run, pattern, nth, code
        self.seen, self.full, self.spent_at_failure = 0, False, None
        real_atomic, real_append = A._atomic, A.append_jsonl

        def atomic(path, write):
            self.hit(path)
            return real_atomic(path, write)

        def append(path, obj):
            if self.code == errno.ENOSPC:
                self.hit(path)
            return real_append(path, obj)

        def mkdtemp(*a, dir=None, **k):
            if self.full and dir is not None and Path(dir).resolve() == self.run.resolve():
                raise self.error(dir)
            return tempfile.mkdtemp(*a, dir=dir, **k)

        monkeypatch.setattr(A, "_atomic", atomic)
        monkeypatch.setattr(A, "append_jsonl", append)
        monkeypatch.setattr(A, "tempfile", types.SimpleNamespace(mkdtemp=mkdtemp, mkstemp=tempfile.mkstemp))

    def error(self, path) -> OSError:
        return OSError(self.code, os.strerror(self.code), str(path))

    def hit(self, path) -> None:
        if not self.full and fnmatch.fnmatch(Path(path).name, self.pattern):
            self.seen += 1
            if self.seen == self.nth:
                self.full = True
                self.spent_at_failure = spent(self.run)
        if self.full:
            raise self.error(path)


FAILURES = {  # name: (file pattern, nth write of it, errno)
    "creating_run_dir": ("config.yaml", 1, errno.ENOSPC),
    "ledger_charge_step_3": ("privacy.json", 5, errno.ENOSPC),  # create, charges 0..2, charge 3
    "transcript_append_step_4": ("transcript.jsonl", 5, errno.ENOSPC),
    "metrics_append": ("metrics.jsonl", 3, errno.ENOSPC),
    "private_state_2nd_checkpoint": ("*.pt", 2, errno.ENOSPC),
    "checkpoint_weights_2nd": ("trainable-*.safetensors", 2, errno.ENOSPC),
    "checkpoint_pointer_1st": ("state.json", 1, errno.ENOSPC),
    "final_model": ("trainable.safetensors", 1, errno.ENOSPC),
    "readonly_run_dir_at_ledger_charge": ("privacy.json", 7, errno.EACCES),
    "readonly_run_dir_at_checkpoint": ("trainable-*.safetensors", 1, errno.EACCES),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_write_failure_keeps_the_ledger_and_resumes(reference_run, monkeypatch, name):
    tmp, ref = reference_run
    cfg = M.build_config(cfg_dict(tmp, tmp / f"run-{name}"))
    run = Path(cfg.out_dir)
    disk = DiskFull(monkeypatch, run, *FAILURES[name])
    with pytest.raises(PrivtuneError) as e:
        train(cfg)
    assert disk.full, "the failure was never triggered"
    print(f"{name}: {type(e.value).__name__}: {e.value}")
    # one line naming the file that failed (in the run dir: "out_dir: ..."; in the keystore: the file), why, the fix
    m = re.fullmatch(r"(?:out_dir: cannot write (?P<a>[^\n]+?)|(?P<b>[^\n]+?): cannot write): (?P<why>[^;\n]+); "
                     r"fix it and rerun with (?P<again>--resume|the same command)", str(e.value))
    assert m, str(e.value)
    path, (pattern, _, code) = Path(m["a"] or m["b"]), FAILURES[name]
    assert fnmatch.fnmatch(path.name, pattern) and m["why"] == os.strerror(code)
    assert bool(m["b"]) == path.resolve().is_relative_to((tmp / "cache").resolve()) == name.startswith("private")
    assert (m["again"] == "--resume") == (run / R.CONFIG).is_file()
    monkeypatch.undo()
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", SECRET_SEED)
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp / "cache"))
    after = spent(run)
    if disk.spent_at_failure is None:  # failed before the run dir existed: nothing half-written, no key kept
        assert not run.exists()
        assert not [p for p in tmp.glob(f".{run.name}-*")], "temp run dir left behind"
    else:
        assert after is not None and after >= disk.spent_at_failure  # parses, never lower
        assert after <= 0.3 + 1e-12
        led = json.loads((run / R.PRIVACY).read_text())
        rows = A.read_jsonl(run / R.TRANSCRIPT)
        lcs = led["last_charged_step"]
        assert len(rows) in (lcs, lcs + 1)  # the transcript lags the ledger by at most the failed step
        total = 0.0
        for r in rows[: lcs + 1]:
            total += r["charged_nats"]
        assert total == after if len(rows) == lcs + 1 else total <= after
    train(cfg, resume=run.exists())  # room again: continue
    assert spent(run) >= (after or 0.0)
    for rel in ("model/trainable.safetensors", "transcript.jsonl"):
        assert (run / rel).read_bytes() == (ref / rel).read_bytes(), rel
    a, b = (json.loads((d / R.PRIVACY).read_text()) for d in (ref, run))
    a.pop("run_id"), b.pop("run_id")
    assert a == b
    keys = tmp / "cache" / "secrets"
    assert not (keys.exists() and list(keys.iterdir())), "a key outlived its run"


@pytest.mark.parametrize("name", ["creating_run_dir", "ledger_charge_step_3"])
def test_disk_full_is_a_one_line_privtune_error(reference_run, monkeypatch, name):
    tmp, _ = reference_run
    cfg = M.build_config(cfg_dict(tmp, tmp / f"clear-{name}"))
    DiskFull(monkeypatch, Path(cfg.out_dir), *FAILURES[name])
    with pytest.raises(PrivtuneError) as e:
        train(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "No space left" in msg


def test_failed_model_save_leaves_no_temp_dir(reference_run, monkeypatch):
    tmp, _ = reference_run
    cfg = M.build_config(cfg_dict(tmp, tmp / "model-tmp"))
    run = Path(cfg.out_dir)
    DiskFull(monkeypatch, run, *FAILURES["final_model"])
    with pytest.raises(PrivtuneError):
        train(cfg)
    monkeypatch.undo()
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", SECRET_SEED)
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp / "cache"))
    train(cfg, resume=True)
    assert not list(run.glob(".model-*")), sorted(p.name for p in run.iterdir())


# ------------------------------------------------------------------------------------------ read-only parent
def readonly_parent(tmp: Path, monkeypatch=None) -> tuple[Path, bool]:
    """A directory the run dir should go in that cannot be written; True if chmod did it (not root)."""
    parent = tmp / "ro"
    parent.mkdir()
    real = writes_blocked(parent)
    if not real and monkeypatch is not None:
        def mkdtemp(*a, dir=None, **k):
            if dir is not None and Path(dir).resolve() == parent.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return tempfile.mkdtemp(*a, dir=dir, **k)
        monkeypatch.setattr(A, "tempfile", types.SimpleNamespace(mkdtemp=mkdtemp, mkstemp=tempfile.mkstemp))
    return parent, real


def test_readonly_parent_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    parent, _ = readonly_parent(tmp_path, monkeypatch)
    try:
        with pytest.raises(PrivtuneError) as e:
            train(M.build_config(cfg_dict(tmp_path, parent / "run")))
        print(f"read-only parent: {type(e.value).__name__}: {e.value}")
        assert list(parent.iterdir()) == []
        keys = tmp_path / "cache" / "secrets"
        assert not (keys.exists() and list(keys.iterdir())), "key of a run that never started kept"
    finally:
        parent.chmod(0o700)


def test_readonly_parent_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    parent, _ = readonly_parent(tmp_path, monkeypatch)
    try:
        with pytest.raises(PrivtuneError, match="out_dir"):
            train(M.build_config(cfg_dict(tmp_path, parent / "run")))
    finally:
        parent.chmod(0o700)


# The CLI, with the read-only directory simulated inside the process when chmod cannot do it (root).
WRAPPER = """
import errno, os, sys, tempfile, types
from pathlib import Path
ro = os.environ.get("SIMULATE_READONLY")
if ro:
    import privtune.atomic as A
    def mkdtemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == Path(ro).resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return tempfile.mkdtemp(*a, dir=dir, **k)
    A.tempfile = types.SimpleNamespace(mkdtemp=mkdtemp, mkstemp=tempfile.mkstemp)
from privtune.cli import main
sys.argv[0] = "privtune"
main()
"""


@pytest.fixture(scope="module")
def cli_readonly(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_ro")
    parent, real = readonly_parent(tmp)
    cfg = tmp / "c.yaml"
    d = cfg_dict(tmp, parent / "run")
    cfg.write_text(json.dumps(d))  # JSON is YAML
    env = dict(os.environ, PRIVTUNE_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1")
    if not real:
        env["SIMULATE_READONLY"] = str(parent)
    try:
        r = subprocess.run([sys.executable, "-c", WRAPPER, "train", "-q", "-c", str(cfg)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
        left = sorted(p.name for p in parent.iterdir())
    finally:
        parent.chmod(0o700)
    return r, left, tmp


def test_cli_readonly_parent_leaves_nothing(cli_readonly):
    r, left, tmp = cli_readonly
    print(f"CLI, read-only parent: exit {r.returncode}; stderr ends: {r.stderr.strip().splitlines()[-1:]}")
    assert r.returncode != 0 and left == []
    keys = tmp / "cache" / "secrets"
    assert not (keys.exists() and list(keys.iterdir()))


def test_cli_readonly_parent_is_exit_2_one_line(cli_readonly):
    r, _, _ = cli_readonly
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (r.returncode, err[-500:])
