"""Forgetting a run's secrets: `privtune forget RUN` and `privtune forget --stale DAYS`.

A run's secret key, its key record and its private resume state (run.keystore) exist only so that the run can
resume. A run that finishes deletes them itself, and so does one that ends by spending its privacy budget; one that
diverged or was abandoned would keep them for good. Forgetting makes J, the DP noise and the Poisson draws
unrecoverable by anyone, and the run un-resumable.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PrivtuneError
from . import keystore as S
from .rundir import PRIVACY, RunDir

DAY_S = 86400.0
# A run's key is created before its run directory (method setup and DP calibration come in between, up to minutes):
# a key younger than this whose run directory does not exist yet is a run starting, not a run gone.
SETUP_GRACE_S = 3600.0


@dataclass
class Forgotten:
    stem: str  # the keystore's name for the run (a hash of its run id)
    run_dir: Path | None  # None: a key from before the keystore recorded run directories
    reason: str
    deleted: list[Path] = field(default_factory=list)


def run_id_of(run: Path) -> str:
    """The run id recorded in RUN/privacy.json; a one-line error when RUN is not a run directory."""
    path = RunDir.open(run, need=PRIVACY).privacy
    try:
        run_id = json.loads(path.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError) as e:
        raise PrivtuneError(f"{path}: unreadable privacy ledger ({type(e).__name__})") from None
    if not isinstance(run_id, str) or not run_id:
        raise PrivtuneError(f"{path}: no run_id; this run's secrets cannot be found")
    return run_id


def forget_run(run: Path) -> list[Path]:
    """Delete RUN's secret key, key record and private state; returns the deleted files (empty: nothing was there)."""
    return S.forget(run_id_of(run))


def _why_stale(name: str, days: float, now: float) -> tuple[Path | None, str] | None:
    """(run dir, reason) when the keystore entry `name` is stale, else None."""
    rec = S.record(name)
    if rec is None:  # a key from before records were kept (or a leftover private state): judge by its files' age
        files = S.files_of(name)
        if not files:
            return None
        age = now - max(p.stat().st_mtime for p in files)
        return (None, f"run directory unknown, last written {age / DAY_S:.1f} days ago") if age > days * DAY_S else None
    run = rec["run_dir"]
    try:
        same = S.stem(run_id_of(run)) == name
    except PrivtuneError:
        same = False
        if RunDir(run).privacy.is_file():  # there but unreadable: do not delete a live run's key on a read error
            return None
    if not same:
        if now - rec["created"] < SETUP_GRACE_S:
            return None
        return run, "run directory gone"
    if RunDir(run).eval.exists():  # finished: it needs no secret to complete (a crash during its wrap-up left these)
        return run, "run finished"
    idle = now - RunDir(run).last_active()
    return (run, f"run inactive for {idle / DAY_S:.1f} days") if idle > days * DAY_S else None


def stale(days: float, now: float | None = None) -> list[Forgotten]:
    """Keystore entries whose run directory is gone (or holds another run), whose run finished, or whose run has
    not written its ledger or a checkpoint for more than `days` days. Nothing is deleted."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days) or days < 0:
        raise PrivtuneError(f"--stale: must be a number of days >= 0, got {days!r}")
    now = time.time() if now is None else float(now)
    out = []
    for name in S.stems():
        why = _why_stale(name, float(days), now)
        if why is not None:
            out.append(Forgotten(name, why[0], why[1]))
    return out


def forget_stale(days: float, now: float | None = None) -> list[Forgotten]:
    """Delete every stale keystore entry (see `stale`); returns them with the files deleted."""
    found = stale(days, now)
    for f in found:
        f.deleted = S.forget_stem(f.stem)
    return found
