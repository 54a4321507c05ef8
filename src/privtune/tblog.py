"""Optional TensorBoard mirror of metrics.jsonl (`train.tensorboard: true`, the `tensorboard` extra).

The mirror holds exactly the rows written to metrics.jsonl (released or public quantities only) and nothing else:
each row's numeric fields become scalars at the row's step, under out_dir/tb/. On resume metrics.jsonl is cut back
to the checkpoint, so the mirror is rebuilt from the file rather than appended to, and never shows a step twice.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ConfigError

EXTRA = "pip install 'privtune[tensorboard]'"
SKIP = ("step", "kind")  # the x axis and a row's label, not values


def require() -> None:
    """Fail early, before a run dir exists, when train.tensorboard is set but TensorBoard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise ConfigError(f"train.tensorboard: needs the tensorboard package; install it with: {EXTRA}") from None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalars(row: dict) -> dict[str, float]:
    """The curves in one metrics row: each number, and each entry of a list of numbers (one per direction, say) as
    `name/i`. Anything else (strings, bools, nested values) is not a curve and stays only in metrics.jsonl."""
    out = {}
    for k, v in row.items():
        if k in SKIP:
            continue
        if _number(v):
            out[k] = float(v)
        elif isinstance(v, list) and v and all(_number(x) for x in v):
            out.update({f"{k}/{i}": float(x) for i, x in enumerate(v)})
    return out


class Mirror:
    """Writes metrics rows to `folder` (the run dir's tb/) as they are appended to metrics.jsonl."""

    def __init__(self, folder: Path, rows: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)  # rebuilt from metrics.jsonl: no step twice after a resume
        self.writer = SummaryWriter(log_dir=str(folder))
        for row in rows:
            self.log(row, flush=False)
        self.writer.flush()

    def log(self, row: dict, flush: bool = True) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=int(row["step"]))
        if flush:  # a live TensorBoard sees each row as it is written
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
