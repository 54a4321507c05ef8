"""Rank 0's side of a training run (run.loop): the run dir, the ledger, the secret key and the private state.

Under torchrun the loop calls these through dist.from_main, so they run on rank 0 only and only their return values
(public) reach the other ranks: the key, J and the noise never leave rank 0.
"""

from __future__ import annotations

import json
import time
import uuid

from .. import config as C
from .. import dist
from ..errors import BudgetError, PrivtuneError
from ..methods import Method, Release
from ..trainable import load_trainable_state, trainable_state
from . import keystore as KS
from .evaluate import ROW_KEYS, metric_fields
from .ledger import Ledger
from .rundir import RunDir
from .setup import Setup, engine_record, resolved_config, save_model


def _released(line: dict) -> str:
    """What a transcript line says was released (everything but the step and lr), in a canonical JSON form, so a
    recomputed release is compared bitwise with the recorded one."""
    return json.dumps({k: v for k, v in line.items() if k not in ("step", "lr")}, sort_keys=True)


class Writer:
    """Rank 0's side of a run: the run dir, the ledger, the secret key and the private state never leave it. On other
    ranks a Writer only hands `build_method` a stand-in for the key."""

    def __init__(self, run: RunDir, setup: Setup, cls: type[Method]):
        self.run, self.setup, self.cls, self.steps = run, setup, cls, setup.cfg.train.steps
        self.ledger: Ledger | None = None
        self.key = None
        self.run_id = ""
        self.secret_source = None  # "key" | "fixed" | None (no secret), written to privacy.json
        self.recorded: dict[int, dict] = {}  # the transcript as found at resume (read once per invocation)
        self.tb = None

    def open_key(self, resume: bool) -> bool:
        """A resumed run's ledger and key, or a fresh run id and key (drawn from the OS, or PRIVTUNE_SECRET_SEED:
        audit mode, not private; privacy.json keeps the nominal guarantee either way, so audits can compare against
        it). True when a resumed run is past its final checkpoint: only the wrap-up is left."""
        if resume:
            self.ledger = Ledger.open(self.run)
            self.run_id = self.ledger.state.get("run_id", "")
            self.secret_source = self.ledger.state.get("secret_source")
            finished = self.run.checkpoint_step() >= self.steps
            self.key = KS.load(self.run_id) if self.cls.needs_secret else None
            if self.cls.needs_secret and self.key is None and not finished:
                raise PrivtuneError(f"{self.run.path}: this private run's secret key is gone from the keystore "
                                    f"({KS.__name__}); it cannot resume without re-drawing its secret")
            return finished
        self.run_id = uuid.uuid4().hex
        if self.cls.needs_secret:
            fixed = KS.fixed_seed_from_env()
            self.secret_source = "key" if fixed is None else "fixed"
            self.key = KS.create(self.run_id, fixed, run_dir=self.run.path)
        return False

    def build_method(self, resume: bool, finished: bool) -> Method | None:
        """The mechanism, holding the key (rank 0) or a stand-in that refuses secret draws (other ranks)."""
        key = self.key if dist.is_main() else (dist.RemoteSecret() if self.cls.needs_secret else None)
        if resume and finished and self.cls.needs_secret and key is None:
            # A finished run whose key is already forgotten needs no mechanism: the key is forgotten only after the
            # final ledger update, so privacy.json is complete and only eval.json (and the model) are left to write.
            return None
        cfg = self.setup.cfg
        try:
            return self.cls(cfg.method, self.setup.engine, self.setup.pool, cfg.train.seed, self.steps, secret=key)
        except BaseException:
            if key is not None and not resume:
                key.forget()  # nothing was released under this key
            raise

    def begin(self, method: Method | None, resume: bool) -> tuple[int, list[dict]]:
        """The resume point (θ, private state, metrics cut back) or a fresh run dir. Returns the start step and the
        transcript lines before it."""
        if resume:
            start = self.run.load_checkpoint(lambda theta: load_trainable_state(self.setup.sel, theta))
            lines = self.run.read_transcript(repair=True)
            self.recorded = {int(r["step"]): r for r in lines}
            before = []
            if start < self.steps:  # a finished run takes no more steps: its mechanism state is not needed
                method.load_private_state(KS.load_private_state(self.run_id, start))
                before = [r for r in lines if int(r["step"]) < start]
            self.run.cut_metrics(lambda r: start > 0 and r.get("step", -1) <= start)
        else:
            try:
                self._create(method)
            except BaseException:
                if self.key is not None:
                    self.key.forget()
                raise
            start, before = 0, []
        if start < self.steps and self.ledger.exhausted():
            raise BudgetError(f"privacy budget: {self.run.privacy} shows the budget is spent; this run cannot go on")
        return start, before

    def _create(self, method: Method) -> None:
        """The new run dir, created atomically, with its config, engine record, canaries (audit mode) and ledger."""
        with self.run.create(config_text=C.dump(resolved_config(self.setup)), engine=engine_record(self.setup),
                             canaries=self.setup.canaries) as new:
            Ledger.create(new, run_id=self.run_id, steps_total=self.steps, secret_source=self.secret_source,
                          **method.ledger_fields())
        self.ledger = Ledger.open(self.run)

    def release(self, t: int, rel: Release, line: dict, method: Method) -> None:
        """Charge the ledger, then append the transcript: a crash in between leaves a charge without its line
        (safe), never a released line without its charge. A recomputed step (after a resume) must release what it
        released before."""
        if t in self.recorded and _released(self.recorded[t]) != _released(line):
            raise PrivtuneError(f"{self.run.transcript}: the release recomputed at step {t} differs from the "
                                "recorded one (non-deterministic device?); refusing to continue")
        self.ledger.charge(t, method.spending(), summary=method.summary, **rel.counters)  # before it is applied
        if t not in self.recorded:
            self.run.append_transcript(line)

    def log(self, row: dict) -> None:
        self.run.append_metrics(row)
        if self.tb is not None:
            self.tb.log(row)

    def checkpoint(self, step: int, method: Method) -> None:
        """θ at `step` and the method's private state for it (the private state first: the pointer moves last)."""
        state = method.private_state()
        if state:
            KS.save_private_state(self.run_id, step, state, self.run.checkpoint_step())
        self.run.save_checkpoint(step, trainable_state(self.setup.sel))

    def finish(self, method: Method | None, final: dict, t0: float) -> dict:
        """model/, the last checkpoint, the final ledger fields, the key forgotten, then eval.json (written last: a
        run with eval.json is complete)."""
        save_model(self.run, self.setup)
        self.run.save_checkpoint(self.steps, trainable_state(self.setup.sel))
        self.ledger.update(steps_done=self.steps, **({**method.summary(self.ledger.state),
                                                      **method.final_fields(final)} if method is not None else {}))
        if self.key is not None:
            self.key.forget()  # the run is complete: J and the noise can never be re-drawn
        KS.drop_private_state(self.run_id)
        cfg = self.setup.cfg
        result = {**metric_fields(final), "total": final["total"], "task": cfg.task.name, "split": "eval",
                  "steps": self.steps, "wall_time_s": round(time.time() - t0, 2)}
        first = next((r for r in self.run.read_metrics() if r.get("kind") == "eval" and r["step"] == 0), None)
        for metric, key in ROW_KEYS.items() if first is not None else ():
            if key in first and metric in final:
                result["initial_" + metric] = first[key]
        self.run.write_record(self.run.eval, result)
        return result

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
