"""Pinned outputs: every configs/tiny_*.yaml run, through the CLI, must produce byte-identical final weights,
transcript and privacy ledger to the recorded hashes (tests/data/pinned_tiny.json).

Float results depend on the CPU's kernels (two x86 generations give ZO scalars that differ in the last bits, so every
transcript differs), so a machine whose CPU has its own entry under "machines" (keyed by machine()) is held to that
entry; any other machine to the top-level pins, recorded on the machine the pins were first written on.

This is the guard for refactors that promise "behaviour unchanged". Secrets are fixed (PRIVTUNE_SECRET_SEED) so that
private runs are reproducible; the run id (a fresh uuid) is blanked before hashing the ledger. Hashes are for this
torch version and thread count (2); after an intended change of behaviour, regenerate them with
`python tests/test_pinned_outputs.py --write` (the top-level pins) or `--write --machine` (this CPU's entry), on
every kind of machine that has pins, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "tests" / "data" / "pinned_tiny.json"
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("tiny_*.yaml"))
SECRET_SEED = "20261201"
THREADS = "2"


def machine() -> str:
    """The CPU the pins depend on: vendor, family and model number, and the kernel level torch picked."""
    import torch

    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else []):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = "-".join(info.get(k, "?") for k in ("vendor_id", "cpu family", "model"))
    return f"{cpu}-{torch.backends.cpu.get_cpu_capability()}-torch{torch.__version__}"


def pinned(pins: dict, name: str) -> dict | None:
    """`name`'s pins for this machine: its own entry if it has one, else the top-level pins."""
    return pins.get("machines", {}).get(machine(), {}).get(name, pins.get(name))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_hashes(name: str, work: Path) -> dict[str, str]:
    out = work / name
    env = {**os.environ, "PRIVTUNE_SECRET_SEED": SECRET_SEED, "PRIVTUNE_CACHE": str(work / "cache"),
           "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", f"configs/{name}.yaml", f"out_dir={out}",
                        "-q"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name}: exit {r.returncode}: {r.stderr[-2000:]}"
    ledger = re.sub(r'"run_id": "[0-9a-f]*"', '"run_id": ""', (out / "privacy.json").read_text(encoding="utf-8"))
    hashes = {"transcript.jsonl": _digest(out / "transcript.jsonl"),
              "privacy.json": hashlib.sha256(ledger.encode()).hexdigest()}
    for f in sorted((out / "model").rglob("*")):
        if f.is_file():
            hashes[f"model/{f.relative_to(out / 'model')}"] = _digest(f)
    return hashes


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_tiny_config_outputs_are_pinned(name, tmp_path):
    want = pinned(json.loads(PINS.read_text()), name)
    assert want is not None, f"{name}: no pinned hashes; run python tests/test_pinned_outputs.py --write"
    assert run_hashes(name, tmp_path) == want, f"{name} on {machine()}"


if __name__ == "__main__":  # python tests/test_pinned_outputs.py --write
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_pinned_outputs.py --write [--machine]")
    pins = json.loads(PINS.read_text()) if PINS.exists() else {}
    with tempfile.TemporaryDirectory() as d:
        fresh = {name: run_hashes(name, Path(d)) for name in CONFIGS}
    if "--machine" in sys.argv:
        pins.setdefault("machines", {})[machine()] = fresh
    else:
        pins.update(fresh)
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS} ({len(fresh)} configs{' for ' + machine() if '--machine' in sys.argv else ''})")
