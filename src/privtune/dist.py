"""Multi-process training under torchrun: which rank am I, the fixed-order reduction's gather, rank 0's releases.

`torchrun --nproc-per-node P -m privtune train ...` sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; `session`
then joins the process group (gloo on CPU, NCCL on CUDA — the CUDA path is the same code but untested here).
A single process (no WORLD_SIZE, or 1) never imports torch.distributed: rank() is 0, world() is 1, every helper is
the identity, so one process and P processes run the very same code.

What crosses processes (a ZO step is a seed and a few scalars): per-chunk partial sums (`gather_rows`, float64),
rank 0's released values (`from_main`: the secret key, J and the noise stay on rank 0), and θ once at resume.
`stats["bytes"]` counts the payload bytes this rank put into collectives.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from datetime import timedelta

import numpy as np
import torch

from .errors import PrivtuneError

_state = {"rank": 0, "world": 1, "device": torch.device("cpu")}
stats = {"bytes": 0}
DEFAULT_TIMEOUT_S = 300.0  # a rank silent this long (dead, hung) fails the job; PRIVTUNE_DIST_TIMEOUT overrides


class DistError(PrivtuneError):
    """The process group broke (a peer died or timed out): the job stops; rank 0's run dir is resumable."""


class RemoteSecret:
    """What ranks other than 0 hold instead of the run's SecretKey: any draw from it is a bug, and says so."""

    def __repr__(self) -> str:
        return "RemoteSecret(<on rank 0>)"

    def numpy(self, *a, **k):
        raise RuntimeError("the secret key lives on rank 0 only; secret draws must go through dist.from_main")

    torch = numpy

    def forget(self) -> None:
        pass


def rank() -> int:
    return _state["rank"]


def world() -> int:
    return _state["world"]


def is_main() -> bool:
    return _state["rank"] == 0


def shard(n: int) -> list[int]:
    """The items (chunks) of n this rank computes: r, r+P, r+2P, ..."""
    return list(range(rank(), n, world()))


def timeout_s() -> float:
    raw = os.environ.get("PRIVTUNE_DIST_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise PrivtuneError(f"PRIVTUNE_DIST_TIMEOUT: must be a number of seconds, got {raw!r}") from None


# -------------------------------------------------------------------------------------------------- the group
@contextlib.contextmanager
def session(device: str = "cpu"):
    """Join the torchrun process group for the duration of a run (nothing to do for a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or _state["world"] > 1:
        yield
        return
    import torch.distributed as td

    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:  # one GPU per local rank; NCCL collectives then run on it (untested: no GPU here)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        td.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as e:
        raise DistError(f"dist: cannot join the process group ({_first_line(e)})") from None
    _state.update(rank=td.get_rank(), world=td.get_world_size(),
                  device=torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"))
    stats["bytes"] = 0
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            with contextlib.suppress(RuntimeError):
                td.destroy_process_group()
        # after a failure the group is left as is: destroying it could wait on the dead peer; the process exits
        _state.update(rank=0, world=1, device=torch.device("cpu"))


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def _collective(what: str, fn):
    try:
        return fn()
    except RuntimeError as e:  # gloo/NCCL errors (DistBackendError is a RuntimeError): a peer died or timed out
        raise DistError(f"dist: rank {rank()} of {world()} lost the process group during {what} "
                        f"({_first_line(e)}); rank 0's run dir is at its last checkpoint: rerun with --resume"
                        ) from None


# ------------------------------------------------------------------------------------------------ collectives
def gather_rows(part: np.ndarray, n: int) -> np.ndarray:
    """Every rank's rows of an [n, w] float64 table (rank r holds rows r, r+P, ...) → the whole table, in row order,
    on every rank. One all_gather of P × ⌈n/P⌉ × w float64."""
    part = np.asarray(part, dtype=np.float64)
    if world() == 1 or n == 0:
        return part
    import torch.distributed as td

    P, w = world(), part.shape[1]
    per = -(-n // P)
    buf = torch.zeros((per, w), dtype=torch.float64)
    buf[: len(part)] = torch.from_numpy(part)
    buf = buf.to(_state["device"])
    out = [torch.empty_like(buf) for _ in range(P)]
    _collective("a step's partial sums", lambda: td.all_gather(out, buf))
    stats["bytes"] += buf.numel() * 8
    full = np.empty((n, w), dtype=np.float64)
    for r in range(P):
        full[r::P] = out[r][: len(range(r, n, P))].cpu().numpy()
    return full


def _broadcast_bytes(payload: bytes | None) -> bytes:
    import torch.distributed as td

    dev = _state["device"]
    size = torch.tensor([len(payload) if is_main() else 0], dtype=torch.int64, device=dev)
    _collective("a broadcast from rank 0", lambda: td.broadcast(size, src=0))
    buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(dev) if is_main()
           else torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
    _collective("a broadcast from rank 0", lambda: td.broadcast(buf, src=0))
    if is_main():
        stats["bytes"] += 8 + len(payload)
    return bytes(buf.cpu().numpy()) if not is_main() else payload


def from_main(fn):
    """fn() computed on rank 0 only (it may read the secret key or write the run dir), its value sent to every rank.
    A PrivtuneError raised by fn on rank 0 is raised on every rank (marked `relayed` off rank 0), so all ranks stop
    together with the same message."""
    if world() == 1:
        return fn()
    if is_main():
        try:
            value = fn()
        except PrivtuneError as e:
            _broadcast_bytes(pickle.dumps(("error", type(e), str(e))))
            raise
        _broadcast_bytes(pickle.dumps(("ok", value)))
        return value
    msg = pickle.loads(_broadcast_bytes(None))  # from rank 0 of this job's own process group
    if msg[0] == "error":
        err = msg[1](msg[2])
        err.relayed = True
        raise err
    return msg[1]


def broadcast_tensors(tensors) -> None:
    """Rank 0's values of these tensors, in place, on every rank (θ after a resume)."""
    if world() == 1:
        return
    import torch.distributed as td

    for t in tensors:
        buf = t.detach().to(_state["device"]).contiguous()
        _collective("the resume broadcast", lambda: td.broadcast(buf, src=0))
        if is_main():
            stats["bytes"] += buf.numel() * buf.element_size()
        else:
            with torch.no_grad():
                t.copy_(buf)


def barrier() -> None:
    if world() > 1:
        import torch.distributed as td

        _collective("the final barrier", td.barrier)


def require_single(method: str) -> None:
    """Methods whose step is not sharded (DP-SGD, BBoxER) refuse a torchrun launch with a one-line ConfigError."""
    if world() > 1:
        from .errors import ConfigError

        raise ConfigError(f"method.name: {method} runs in one process (its step is not sharded across torchrun "
                          "ranks); launch it without torchrun")
