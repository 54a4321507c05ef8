"""Run-directory layout and crash-safe file primitives (temp file + fsync + rename; fsync'd appends).

out_dir/
  config.yaml        resolved config
  metrics.jsonl      one line per logged step (released or public quantities only)
  transcript.jsonl   per step: public seeds and released scalars/signs — enough to rebuild the model
  privacy.json       the privacy ledger (written only by privtune.ledger)
  eval.json          accuracy on the public eval split
  engine.json        the resolved z backend (train.z_kernel: torch | triton); resume and replay use the same one
  state/             resume state: trainable-<step>.safetensors + state.json (pointer, written last)
  model/             final trainable weights (safetensors) + manifest.json
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG, METRICS, TRANSCRIPT, PRIVACY, EVAL = "config.yaml", "metrics.jsonl", "transcript.jsonl", "privacy.json", "eval.json"
STATE_DIR, MODEL_DIR = "state", "model"
ENGINE = "engine.json"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temp file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def append_jsonl(path: Path, obj) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Lines of a JSONL file; a torn last line (crash mid-append) is dropped, and cut off the file if `repair`."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    if repair and keep != raw:
        atomic_write_bytes(path, keep)
    return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()]


def truncate_jsonl(path: Path, keep) -> None:
    """Rewrite a JSONL file keeping only the lines where keep(line) is true (atomic)."""
    rows = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def sweep_temp(run: Path) -> None:
    """Remove what an interrupted atomic write left behind (hidden temp files and `.model-*` dirs) in a run dir and
    its state/. Called on resume only, when this process is the run's one writer."""
    import shutil

    for d in (Path(run), Path(run) / STATE_DIR):
        for f in d.glob(".*") if d.is_dir() else ():
            if f.is_dir() and f.name.startswith(".model-"):
                shutil.rmtree(f, ignore_errors=True)
            elif f.is_file():
                f.unlink(missing_ok=True)
