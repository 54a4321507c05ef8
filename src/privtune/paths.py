"""Where privtune reads and keeps things outside a run directory: the cache and the shared data dir.

Both are read from the environment at call time, so a PRIVTUNE_CACHE / PRIVTUNE_DATA set after import still counts.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"  # <repo>/../shared/data


def cache_dir() -> Path:
    """Converted model weights, prefix caches, and the private keystore (run.keystore)."""
    return Path(os.environ.get("PRIVTUNE_CACHE", Path.home() / ".cache" / "privtune"))


def data_dir() -> Path:
    """The shared data dir: $PRIVTUNE_DATA if set, else <repo>/../shared/data. Read at call time."""
    return Path(os.environ.get("PRIVTUNE_DATA") or DEFAULT_DATA_DIR).expanduser().resolve()
