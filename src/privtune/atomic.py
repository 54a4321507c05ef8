"""Crash-safe file primitives: temp file + fsync + rename; fsync'd JSONL appends; whole folders built beside their
final name and renamed into place. A kill at any instant leaves either the old file or the new one, never half of
one (at worst a hidden temp file, which `sweep_temp` removes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file


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


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Build the folder `final` in a hidden temp sibling (`.<name>-XXXX`, yielded) and rename it into place once the
    body completes; on any failure the temp folder goes and `final` is untouched. An existing `final` is replaced
    only with `replace` (else it must be an empty folder, which the caller has checked)."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final) if replace else final.rmdir()
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


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


def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL file keeping only the lines where keep(line) is true (atomic)."""
    rows = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def sweep_temp(folder: Path, dirs: tuple[str, ...] = ()) -> None:
    """Remove what interrupted atomic writes left in `folder`: hidden temp files, and the temp folders of
    `atomic_dir` whose final names are in `dirs`. Only for a folder this process is the one writer of."""
    folder = Path(folder)
    prefixes = tuple(f".{d}-" for d in dirs)
    for f in folder.glob(".*") if folder.is_dir() else ():
        if f.is_dir():
            if f.name.startswith(prefixes):
                shutil.rmtree(f, ignore_errors=True)
        elif f.is_file():
            f.unlink(missing_ok=True)
