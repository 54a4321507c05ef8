"""The private keystore: the run's secret key, source of everything private a mechanism draws (PACZero's secret
index J, DP noise and DP batches), and the method's private resume state.

The key never enters the run directory (the shareable artifact). It lives in a private keystore
(`$PRIVTUNE_CACHE/secrets/<hash of run id>.key`, mode 0600) only so that an interrupted run can resume with the same
J and the same noise, and it is deleted when the run finishes, after which J cannot be recovered by anyone.
Beside each key, `<hash>.json` (mode 0600) records the run directory and creation time: the keystore knows only
hashes of run ids, and without the record a key whose run died could never be matched to it again
(`privtune forget --stale`). A method's private resume state (`$PRIVTUNE_CACHE/private/<hash>.pt`) shares the hash.
Every secret draw is a pure function of (key, purpose, step), so a recomputed step releases exactly what it
released before its crash: no extra leakage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets as _pysecrets
import time
from pathlib import Path

import numpy as np
import torch

from .. import atomic as A
from ..errors import PrivtuneError
from ..paths import cache_dir

# One stream per purpose: "subset" is PACZero's J (step 0) and DPZero's Poisson draws (steps t), which never meet in
# one run; "batch" is a fixed-size DP batch (DPZero, DP-ZO, DP-SGD with sampling "fixed").
_TAGS = {"subset": 1, "noise": 2, "coin": 3, "batch": 4}


class SecretKey:
    def __init__(self, key: int, path: Path | None = None):
        self._key = int(key)
        self.path = path

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return "SecretKey(<hidden>)"

    def _seed(self, purpose: str, step: int) -> list[int]:
        return [self._key & 0xFFFFFFFFFFFFFFFF, self._key >> 64, _TAGS[purpose], int(step)]

    def numpy(self, purpose: str, step: int = 0) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self._seed(purpose, step)))

    def torch(self, purpose: str, step: int, device="cpu") -> torch.Generator:
        state = np.random.SeedSequence(self._seed(purpose, step)).generate_state(2, np.uint32)
        g = torch.Generator(device=device)
        g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
        return g

    def forget(self) -> None:
        """Delete the stored key and its record (the run is done: nobody needs J any more)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path.with_suffix(".json").unlink(missing_ok=True)


def _keystore() -> Path:
    path = cache_dir() / "secrets"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def stem(run_id: str) -> str:
    """The name a run's files have in the keystore and the private-state folder (a hash: no run id on disk)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _key_path(run_id: str) -> Path:
    return _keystore() / (stem(run_id) + ".key")


def private_dir() -> Path:
    return cache_dir() / "private"


def private_state_path(run_id: str) -> Path:
    """Where a method's private resume state (e.g. PACZero's posterior over subsets) is kept, out of the run dir;
    named like the run's key, so `privtune forget` finds both."""
    return private_dir() / (stem(run_id) + ".pt")


def save_private_state(run_id: str, step: int, state: dict, checkpoint_step: int) -> None:
    """Keep `state` as the private state of checkpoint `step` (nothing to keep: no file). `checkpoint_step`: the
    step the run dir's checkpoint pointer is at now."""
    if not state:
        return
    path = private_state_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    states = torch.load(path, weights_only=False)["states"] if path.exists() else {}
    # Keep the state of the checkpoint state.json points at (the one a resume starts from) until the new checkpoint
    # lands, whatever crashes happened before; and the newest, in case the pointer moved since.
    keep = {checkpoint_step, max(states, default=-1)}
    states = {s: v for s, v in states.items() if s in keep}
    states[step] = state
    buf = io.BytesIO()
    torch.save({"states": states}, buf)
    A.atomic_write_bytes(path, buf.getvalue())


def load_private_state(run_id: str, step: int) -> dict:
    """The private state kept for checkpoint `step` ({} at step 0, or for a method that keeps none)."""
    path = private_state_path(run_id)
    if step == 0 or not path.exists():
        return {}
    states = torch.load(path, weights_only=False)["states"]
    if step not in states:
        raise PrivtuneError(f"{path}: no private state for checkpoint step {step} (have {sorted(states)}); cannot resume")
    return states[step]


def drop_private_state(run_id: str) -> None:
    private_state_path(run_id).unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def create(run_id: str, fixed: int | None = None, run_dir: Path | None = None) -> SecretKey:
    """A fresh 128-bit key from the OS (or `fixed`, from PRIVTUNE_SECRET_SEED, for reproducible experiments).
    `run_dir`: recorded beside the key so that `privtune forget --stale` can tell when the run is gone."""
    key = int(fixed) if fixed is not None else _pysecrets.randbits(128)
    path = _key_path(run_id)
    if run_dir is not None:  # the record first: a key never exists without one
        _write_private(path.with_suffix(".json"),
                       json.dumps({"run_dir": str(Path(run_dir).resolve()), "created": time.time()}))
    _write_private(path, str(key))
    return SecretKey(key, path)


def load(run_id: str) -> SecretKey | None:
    path = _key_path(run_id)
    if not path.exists():
        return None
    return SecretKey(int(path.read_text().strip()), path)


def fixed_seed_from_env() -> int | None:
    raw = os.environ.get("PRIVTUNE_SECRET_SEED")
    return int(raw) if raw not in (None, "") else None


# ------------------------------------------------------------------------------- forgetting (privtune forget)
def files_of(name: str) -> list[Path]:
    """The existing keystore and private-state files of the run whose stem is `name`."""
    store = cache_dir() / "secrets"
    cands = [store / f"{name}.key", store / f"{name}.json", private_dir() / f"{name}.pt"]
    return [p for p in cands if p.exists()]


def forget_stem(name: str) -> list[Path]:
    """Delete a run's key, its record and its private state; returns what was there (and is now deleted)."""
    gone = files_of(name)
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def forget(run_id: str) -> list[Path]:
    return forget_stem(stem(run_id))


def stems() -> list[str]:
    """Every run that has anything in the keystore or the private-state folder."""
    found = set()
    for folder, suffixes in ((cache_dir() / "secrets", (".key", ".json")), (private_dir(), (".pt",))):
        if folder.is_dir():
            found.update(p.stem for p in folder.iterdir() if p.suffix in suffixes)
    return sorted(found)


def record(name: str) -> dict | None:
    """The key's record {run_dir, created} (None for a key created before records were kept, or a torn one)."""
    path = cache_dir() / "secrets" / f"{name}.json"
    try:
        rec = json.loads(path.read_text())
        return {"run_dir": Path(rec["run_dir"]), "created": float(rec["created"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
