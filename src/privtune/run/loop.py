"""The training recipe every method runs: set up, loop, checkpoint, finish.

Order inside a step (crash-safety): the method draws its directions and computes the release → the ledger charges it
(atomic) → the transcript gets its line (fsync) → θ moves. A checkpoint (θ + step) is written every
`checkpoint_every` steps. On resume the run restarts from the last checkpoint and *recomputes* the steps after it;
each recomputed release must equal the transcript's (bitwise), and the ledger, keyed by step, never charges a step
twice.

Under torchrun (privtune.dist) every rank runs this same loop on its share of the chunks; only rank 0 holds the
secret key and writes the run dir (run.writer, called through dist.from_main), and every rank applies the same
released updates.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import dist, tblog
from ..errors import BudgetError, PrivtuneError
from ..methods import Release, build_config, method_class
from ..paths import cache_dir
from .evaluate import eval_row, evaluate_setup
from .forget import forget_run
from .rundir import RunDir
from .setup import Callback, prepare
from .writer import Writer

# PRIVTUNE_SECRET_SEED: whoever knows the seed can recompute J, the DP noise and the Poisson draws and strip them
AUDIT_MODE_WARNING = "audit mode: the secret is fixed; this run is not private"


class StopRequested(Exception):
    """Raised by a callback: the run stops cleanly before its next step, checkpointed, and returns
    {"stopped_at": step} (tests simulate an interruption with it). Single process only: under torchrun the callback
    runs on rank 0 alone."""


class _Events:
    """The run's progress events to the caller's callback; a StopRequested from it is kept as a request."""

    def __init__(self, callback: Callback | None):
        self.callback, self.stop = callback, False

    def __call__(self, event: dict) -> None:
        if self.callback is None:
            return
        try:
            self.callback(event)
        except StopRequested:
            self.stop = True


def train(cfg, *, resume: bool = False, callback: Callback | None = None) -> dict:
    """Run (or resume) a training run described by `cfg`. Returns the final eval dict.

    A failing write (disk full, read-only directory) becomes a one-line PrivtuneError naming the file; the ledger
    and the last checkpoint stay valid, so the run can be resumed once the disk is fixed.
    """
    with dist.session(cfg.model.device):
        try:
            return _train(cfg, resume, callback if dist.is_main() else None)
        except BudgetError as e:
            # A spent budget ends the run for good (a resume refuses it), so its key and private state go now.
            run = RunDir(cfg.out_dir)
            if not dist.is_main() or not run.privacy.is_file():
                raise
            gone = forget_run(run.path)
            raise BudgetError(f"{e}; {'its secret key and private state were deleted' if gone else 'no secrets kept'}"
                              ) from None
        except OSError as e:
            where = e.filename or cfg.out_dir
            again = "--resume" if RunDir(cfg.out_dir).config.is_file() else "the same command"
            if Path(where).resolve().is_relative_to(cache_dir().resolve()):  # the private keystore / resume state
                raise PrivtuneError(f"{where}: cannot write: {e.strerror or e}; fix it and rerun with {again}") from None
            raise PrivtuneError(f"out_dir: cannot write {where}: {e.strerror or e}; fix it and rerun with {again}"
                                ) from None


def _train(cfg, resume: bool, callback: Callback | None) -> dict:
    # ---------------------------------------------------------------------------------------------- set up
    emit = _Events(callback)
    run = RunDir(cfg.out_dir)
    saved, zk = dist.from_main(lambda: _check_out_dir(run, resume))
    if saved is not None:
        cfg = build_config(saved)  # on resume every rank trains the config saved in the run dir
    setup = prepare(cfg, callback=emit, z_kernel=zk, z_recorded_in=run.engine if resume else None)
    cls, steps, main = method_class(cfg.method.name), cfg.train.steps, dist.is_main()
    w = Writer(run, setup, cls)
    finished = dist.from_main(lambda: w.open_key(resume))
    method = w.build_method(resume, finished)
    start, before = dist.from_main(lambda: w.begin(method, resume))
    if start > 0:
        dist.broadcast_tensors([p for _, p in setup.sel.params])  # θ at the checkpoint, from rank 0
    if method is not None and start < steps:
        method.resume(start, before)
    if main and cfg.train.tensorboard:
        w.tb = tblog.Mirror(run.tb_dir, run.read_metrics())

    if w.secret_source == "fixed":  # once the run has really started (a run that fails to start says only why)
        emit({"event": "warning", "message": AUDIT_MODE_WARNING})
    # the method and resume point of the run as saved (on resume the caller's config may be only a placeholder)
    emit({"event": "start", "step": start, "steps": steps, "out_dir": str(run.path), "method": cfg.method.name,
          "resumed": resume})
    t0 = time.time()
    # A step's wall time and traffic grow with secret work (a Poisson batch's size): a method with a secret releases
    # neither per step, only the total wall time in eval.json (methods.TIMING_RESIDUAL).
    per_step_costs = not cls.needs_secret
    if start == 0 and cfg.train.initial_eval:
        zero = evaluate_setup(setup)
        if main:
            w.log({"step": 0, **eval_row(zero), "kind": "eval"})
        emit({"event": "eval", "step": 0, **zero})

    # ------------------------------------------------------------------------------------------------ loop
    comm, logged_at = 0, start
    for t in range(start, steps):
        if emit.stop:  # the caller asked to stop: checkpoint here, as a resume will find it
            if main:
                w.checkpoint(t, method)
            w.close()
            emit({"event": "stopped", "step": t})
            return {"stopped_at": t}
        sent = dist.stats["bytes"]
        try:
            rel = method.step(t)  # 1. draw the directions, compute the release (and its privacy cost)
        except PrivtuneError:  # NaN loss, budget spent or a lost peer: stop cleanly at the last good state
            if main:
                w.checkpoint(t, method)  # θ is still the last good state
            raise
        lr = method.lr_at(t)
        line = {"step": t, "lr": lr, "updates": [[int(s), float(c)] for s, c in rel.updates], **rel.public}
        # 2. charge the ledger, 3. append the transcript (rank 0); every rank waits for it before θ moves
        dist.from_main(lambda: w.release(t, rel, line, method))
        comm += dist.stats["bytes"] - sent
        method.apply(rel, lr)  # 4. apply the release
        if (t + 1) % cfg.train.log_every == 0 or t + 1 == steps:
            row = _metrics_row(t + 1, lr, rel, t0 if per_step_costs else None, comm, logged_at)
            comm, logged_at = 0, t + 1
            if cfg.train.eval_every and (t + 1) % cfg.train.eval_every == 0 and t + 1 < steps:
                row.update(eval_row(evaluate_setup(setup)))
            if main:
                w.log(row)
        if main and (t + 1) % cfg.train.checkpoint_every == 0 and t + 1 < steps:
            w.ledger.update(**method.summary(w.ledger.state))  # the derived fields (MI, bounds) as of this step
            w.checkpoint(t + 1, method)
        emit({"event": "step", "step": t + 1, "steps": steps, **rel.monitor})

    # ---------------------------------------------------------------------------------------------- finish
    final = evaluate_setup(setup)
    result = dist.from_main(lambda: w.finish(method, final, t0))
    w.close()
    emit({"event": "done", **result})
    return result


def _check_out_dir(run: RunDir, resume: bool) -> tuple[dict | None, str | None]:
    """Rank 0 checks out_dir; on resume, the config and z backend saved in it (every rank trains those)."""
    RunDir.check_out_dir(run.path, resume)
    if not resume:
        return None, None
    run.sweep_temp()  # temp files of writes a kill interrupted
    return run.load_config_dict(), run.recorded_z_kernel()


def _metrics_row(step: int, lr: float, rel: Release, t0: float | None, comm: int, logged_at: int) -> dict:
    """A metrics.jsonl row: released and monitoring values; the wall time and, under torchrun, the payload bytes rank 0
    put into collectives per step since the last row (both only without a secret: t0 None)."""
    timing = {"elapsed_s": round(time.time() - t0, 3)} if t0 is not None else {}
    row = {"step": step, "lr": lr, **timing, **rel.public, **rel.monitor}
    if dist.world() > 1:
        row["processes"] = dist.world()
        if t0 is not None:
            row["comm_bytes_per_step"] = round(comm / (step - logged_at), 1)
    return row
