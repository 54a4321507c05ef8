"""The run directory: the one module that names its files, checks that a folder is one, and reads and writes them.

out_dir/
  config.yaml        resolved config
  metrics.jsonl      one line per logged step (released or public quantities only)
  transcript.jsonl   per step: public seeds and released scalars/signs — enough to rebuild the model
  privacy.json       the privacy ledger (written only by run.ledger, through `RunDir.privacy`)
  eval.json          accuracy on the public eval split (`privtune eval` writes only where --out says)
  engine.json        the resolved z backend (train.z_kernel: torch | triton); resume and replay use the same one
  canaries.json      audit mode (task.canaries): the canaries and which of them went into the pool
  audit.json         `privtune audit`'s result
  state/             resume state: trainable-<step>.safetensors + state.json (pointer, written last)
  model/             final trainable weights (trainable.safetensors, under the model's parameter names) +
                     manifest.json; a LoRA run also writes adapter/, a standard peft adapter folder
  tb/                TensorBoard mirror of metrics.jsonl (train.tensorboard)

Every write is atomic (privtune.atomic); the JSONL files are appended with fsync. What the run's secret key and
private mechanism state are, and where they live (never here), is run.keystore's business.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import atomic as A
from .. import config as C
from ..errors import ConfigError, PrivtuneError
from ..methods import build_config

CONFIG, METRICS, TRANSCRIPT, PRIVACY, EVAL = "config.yaml", "metrics.jsonl", "transcript.jsonl", "privacy.json", "eval.json"
ENGINE, CANARIES, AUDIT = "engine.json", "canaries.json", "audit.json"
STATE_DIR, MODEL_DIR, TB_DIR = "state", "model", "tb"
STATE = "state.json"  # in state/: the checkpoint pointer
WEIGHTS, MANIFEST, ADAPTER_DIR = "trainable.safetensors", "manifest.json", "adapter"  # in model/
Z_KERNELS = ("torch", "triton")


class RunDir:
    """A run directory at `path` (which need not exist yet: see `create`, `check_out_dir`, `open`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -------------------------------------------------------------------------------------------- names
    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    transcript = property(lambda self: self.path / TRANSCRIPT)
    privacy = property(lambda self: self.path / PRIVACY)
    eval = property(lambda self: self.path / EVAL)
    engine = property(lambda self: self.path / ENGINE)
    canaries = property(lambda self: self.path / CANARIES)
    audit = property(lambda self: self.path / AUDIT)
    state_dir = property(lambda self: self.path / STATE_DIR)
    state = property(lambda self: self.path / STATE_DIR / STATE)
    model_dir = property(lambda self: self.path / MODEL_DIR)
    weights = property(lambda self: self.path / MODEL_DIR / WEIGHTS)
    adapter_dir = property(lambda self: self.path / MODEL_DIR / ADAPTER_DIR)  # runs before it existed have none
    tb_dir = property(lambda self: self.path / TB_DIR)

    # ---------------------------------------------------------------------------------- open, check, create
    @classmethod
    def open(cls, path: str | Path, *, need: str = CONFIG) -> "RunDir":
        """An existing run directory; a one-line error when `path` has no `need` file (config.yaml: every run dir
        has one from its creation on)."""
        run = cls(path)
        if not (run.path / need).is_file():
            raise PrivtuneError(f"{run.path}: not a privtune run directory (no {need})")
        return run

    @classmethod
    def check_out_dir(cls, path: str | Path, resume: bool) -> "RunDir":
        """train's out_dir: a run dir to resume, or (a fresh run) a path that is free or an empty folder."""
        run = cls(path)
        if resume:
            if not run.config.is_file():
                raise ConfigError(f"out_dir: {run.path} is not a privtune run directory (no {CONFIG}); cannot resume")
        elif run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise ConfigError(f"out_dir: {run.path} already exists; pass --resume to continue it or choose another "
                              "out_dir")
        return run

    @contextlib.contextmanager
    def create(self, *, config_text: str, engine: dict, canaries: dict | None = None) -> Iterator["RunDir"]:
        """Create the run dir atomically: built in a temp sibling (yielded, for the ledger to write privacy.json
        in) and renamed into place once the body completes. Only an empty folder may be there (check_out_dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with A.atomic_dir(self.path) as tmp:
            new = RunDir(tmp)
            A.atomic_write_text(new.config, config_text)
            A.atomic_write_json(new.engine, engine)
            if canaries is not None:
                A.atomic_write_json(new.canaries, canaries)
            new.metrics.touch()
            new.transcript.touch()
            yield new

    def sweep_temp(self) -> None:
        """Remove what writes a kill interrupted left behind (temp files, a half-built model/). Resume only, when
        this process is the run's one writer."""
        A.sweep_temp(self.path, dirs=(MODEL_DIR,))
        A.sweep_temp(self.state_dir)

    # ------------------------------------------------------------------------------------------ records
    def load_config_dict(self) -> dict:
        return C.load_yaml(self.config)

    def load_config(self):
        return build_config(self.load_config_dict())

    def read_record(self, path: Path, parse: Callable[[dict], object] = lambda d: d, what: str = ""):
        """A small JSON record of the run dir through `parse`, or None when the file does not exist; a torn or
        foreign file is a one-line PrivtuneError naming it."""
        if not path.exists():
            return None
        try:
            return parse(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PrivtuneError(f"{path}: unreadable {what}({type(e).__name__})") from None

    def write_record(self, path: Path, obj) -> None:
        A.atomic_write_json(path, obj)

    def recorded_z_kernel(self) -> str:
        """The z backend a run recorded in engine.json; runs from before train.z_kernel existed used torch."""
        if not self.engine.exists():
            return "torch"
        name = self.read_record(self.engine, lambda d: d["z_kernel"])
        if name not in Z_KERNELS:
            raise PrivtuneError(f"{self.engine}: unknown z_kernel {name!r}")
        return name

    def read_metrics(self) -> list[dict]:
        return A.read_jsonl(self.metrics)

    def append_metrics(self, row: dict) -> None:
        A.append_jsonl(self.metrics, row)

    def cut_metrics(self, keep: Callable[[dict], bool]) -> None:
        A.truncate_jsonl(self.metrics, keep)

    def read_transcript(self, repair: bool = False) -> list[dict]:
        """The transcript's lines; `repair` cuts a torn last line (a kill mid-append) off the file."""
        return A.read_jsonl(self.transcript, repair=repair)

    def append_transcript(self, line: dict) -> None:
        A.append_jsonl(self.transcript, line)

    # -------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        """θ at `step`: the weights first, then the pointer (state.json), then the older weights go."""
        self.state_dir.mkdir(exist_ok=True)
        name = f"trainable-{step:08d}.safetensors"
        A.atomic_save_tensors(self.state_dir / name, tensors)
        A.atomic_write_json(self.state, {"step": step, "weights": name})  # the pointer is written last
        for old in self.state_dir.glob("trainable-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def _pointer(self) -> dict | None:
        """state/state.json (the checkpoint pointer: step and weights file), or None before the first checkpoint."""
        return self.read_record(self.state, lambda st: {"step": int(st["step"]), "weights": str(st["weights"])},
                                "resume state ")

    def checkpoint_step(self) -> int:
        """The step state/state.json points at (0 when there is no checkpoint yet)."""
        st = self._pointer()
        return 0 if st is None else st["step"]

    def load_checkpoint(self, load: Callable[[dict[str, torch.Tensor]], None]) -> int:
        """Hand θ of the last checkpoint to `load`; returns its step (0, nothing loaded, when there is none)."""
        st = self._pointer()
        if st is None:
            return 0
        try:
            load(A.load_tensors(self.state_dir / st["weights"]))
        except (OSError, ValueError, KeyError) as e:
            raise PrivtuneError(f"{self.state}: unreadable resume state ({type(e).__name__})") from None
        return st["step"]

    def last_active(self) -> float:
        """When the run last did something: every step rewrites privacy.json, every checkpoint state/state.json."""
        times = [p.stat().st_mtime for p in (self.privacy, self.state) if p.exists()]
        return max(times, default=self.path.stat().st_mtime)

    # -------------------------------------------------------------------------------------------- model/
    def save_model(self, tensors: dict[str, torch.Tensor], manifest: dict,
                   adapter: Callable[[Path], bool] | None = None) -> None:
        """model/ (weights + manifest), built beside it and renamed into place: a reader never sees half of it.
        `adapter(folder)` may write a standard adapter folder at model/adapter/ (True when it did); the manifest then
        names it. trainable.safetensors stays the weights privtune itself reads (eval, replay --verify, export)."""
        with A.atomic_dir(self.model_dir, replace=True) as tmp:
            A.atomic_save_tensors(tmp / WEIGHTS, tensors, metadata={"format": "privtune"})
            if adapter is not None and adapter(tmp / ADAPTER_DIR):
                manifest = {**manifest, "adapter": ADAPTER_DIR}
            A.atomic_write_json(tmp / MANIFEST, manifest)

    def final_weights(self) -> Path:
        """model/trainable.safetensors of a finished run; a one-line error when the run has not finished."""
        if not self.weights.is_file():
            raise PrivtuneError(f"{self.weights}: missing; the run has not finished (resume it with privtune train "
                                "--resume)")
        return self.weights

    def load_final_weights(self) -> dict[str, torch.Tensor]:
        return A.load_tensors(self.final_weights())
