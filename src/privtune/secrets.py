"""The run's secret key: source of everything private a mechanism draws (PACZero's secret index J, DP noise and
DP batches).

The key never enters the run directory (the shareable artifact). It lives in a private keystore
(`$PRIVTUNE_CACHE/secrets/<run id>.key`, mode 0600) only so that an interrupted run can resume with the same J and
the same noise, and it is deleted when the run finishes, after which J cannot be recovered by anyone.
Every secret draw is a pure function of (key, purpose, step), so a recomputed step releases exactly what it
released before its crash: no extra leakage.
"""

from __future__ import annotations

import hashlib
import os
import secrets as _pysecrets
from pathlib import Path

import numpy as np
import torch

from .models import cache_dir

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
        """Delete the stored key (the run is done: nobody needs J any more)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _keystore() -> Path:
    path = cache_dir() / "secrets"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _key_path(run_id: str) -> Path:
    return _keystore() / (hashlib.sha256(run_id.encode()).hexdigest()[:32] + ".key")


def create(run_id: str, fixed: int | None = None) -> SecretKey:
    """A fresh 128-bit key from the OS (or `fixed`, from PRIVTUNE_SECRET_SEED, for reproducible experiments)."""
    key = int(fixed) if fixed is not None else _pysecrets.randbits(128)
    path = _key_path(run_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(key))
        f.flush()
        os.fsync(f.fileno())
    return SecretKey(key, path)


def load(run_id: str) -> SecretKey | None:
    path = _key_path(run_id)
    if not path.exists():
        return None
    return SecretKey(int(path.read_text().strip()), path)


def fixed_seed_from_env() -> int | None:
    raw = os.environ.get("PRIVTUNE_SECRET_SEED")
    return int(raw) if raw not in (None, "") else None
