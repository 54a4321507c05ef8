"""The training recipe every ZO method runs: validate → load data and model → step loop → run dir.

Order inside a step (crash-safety): method.step (computes the release) → ledger.charge (atomic) → transcript append
(fsync) → update θ. A checkpoint (θ + step) is written every `checkpoint_every` steps. On resume the run restarts
from the last checkpoint and *recomputes* the steps after it; each recomputed release must equal the transcript's
(bitwise), and the ledger, keyed by step, never charges a step twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import config as C
from . import dist
from . import rundir as R
from . import secrets as S
from . import tblog
from .data import CANARY_TEMPLATE, Task, balanced_pool, load_task, make_canaries, render
from .errors import BudgetError, ConfigError, PrivtuneError, TrainingDiverged
from .ledger import Ledger
from .methods import Method, build_config, method_class
from .models import LoadedModel, load_model, resolve_device
from .trainable import LoraSpec, Selection, load_trainable_state, select, trainable_state
from .zo import kernels as Z
from .zo.engine import ZOEngine
from .zo.forward import Encoded
from .zo.sums import accuracy

log = logging.getLogger(__name__)
Callback = Callable[[dict], None]
# PRIVTUNE_SECRET_SEED: whoever knows the seed can recompute J, the DP noise and the Poisson draws and strip them
AUDIT_MODE_WARNING = "audit mode: the secret is fixed; this run is not private"


# ------------------------------------------------------------------------------------------------------ building
@dataclass
class Setup:
    cfg: object
    task: Task
    lm: LoadedModel
    sel: Selection
    engine: ZOEngine
    verbalizer_ids: list[int]
    pool: Encoded | None = None
    pool_index: list[int] = field(default_factory=list)
    evalset: Encoded | None = None
    canaries: dict | None = None  # audit mode (task.canaries): texts, labels, inclusion → run dir canaries.json


def build_task(cfg) -> Task:
    t = cfg.task
    return load_task(t.name, train_path=t.train_path, eval_path=t.eval_path, text_column=t.text_column,
                     label_column=t.label_column, label_names=t.label_names, template=t.template,
                     verbalizer=t.verbalizer, eval_limit=t.eval_limit)


def build_model(cfg) -> tuple[LoadedModel, Selection]:
    lm = load_model(cfg.model.name, seed=cfg.model.seed, dtype=cfg.model.dtype, device=cfg.model.device)
    lo = cfg.trainable.lora
    sel = select(lm.model, cfg.trainable.kind, LoraSpec(lo.r, lo.alpha, list(lo.target_modules), lo.layers),
                 seed=cfg.train.seed)
    return lm, sel


def encode_examples(setup: Setup, examples) -> Encoded:
    ids = [setup.lm.codec.encode(render(setup.task.template, ex.text)) for ex in examples]
    m = setup.cfg.model
    key = None if m.name == "tiny" else f"{m.name}|{m.dtype}"  # the tiny model builds its cache in milliseconds
    if key is not None and Path(m.name).is_dir():  # a local folder: its files' sizes and times identify the weights
        key += "|" + ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(Path(m.name).iterdir()))
    return setup.engine.forward.encode(ids, [ex.label for ex in examples], disk_key=key)


def prepare(cfg, *, need_pool: bool = True, need_eval: bool = True, callback: Callback | None = None,
            z_kernel: str | None = None, z_recorded_in: Path | None = None) -> Setup:
    """Everything that can fail on user input happens here, before anything is written to disk.
    `z_kernel`: the z backend a run recorded (resume, replay; read from `z_recorded_in`) instead of train.z_kernel."""
    device = resolve_device(cfg.model.device)
    zk = Z.resolve(cfg.train.z_kernel if z_kernel is None else z_kernel, device,
                   recorded_in=None if z_recorded_in is None else str(z_recorded_in))
    task = build_task(cfg)
    if cfg.train.tensorboard and need_pool:  # only training writes the mirror; eval and replay of a run do not
        tblog.require()
    lm, sel = build_model(cfg)
    verb = lm.codec.verbalizer_ids(task.verbalizer)
    n_labels = max(ex.label for ex in task.train + task.eval) + 1
    if n_labels > len(verb):
        raise ConfigError(f"task.verbalizer: {len(verb)} entries but the data has {n_labels} labels")
    engine = ZOEngine(sel, verb, device=device, micro_batch=cfg.train.micro_batch, use_cache=cfg.train.prefix_cache,
                      z_kernel=zk)
    setup = Setup(cfg, task, lm, sel, engine, verb)
    if need_pool:
        setup.pool_index = balanced_pool(task.train, cfg.task.pool_size, cfg.train.seed, task.label_names)
        if cfg.task.canaries:
            setup.canaries = add_canaries(task, setup.pool_index, cfg.task.canaries, cfg.train.seed)
        _emit(callback, {"event": "status", "message": f"encoding {len(setup.pool_index)} training examples"})
        setup.pool = encode_examples(setup, [task.train[i] for i in setup.pool_index])
    if need_eval:
        _emit(callback, {"event": "status", "message": f"encoding {len(task.eval)} eval examples"})
        setup.evalset = encode_examples(setup, task.eval)
    return setup


def add_canaries(task: Task, pool_index: list[int], n: int, seed: int) -> dict:
    """Audit mode: append n canaries to task.train and the included ones to the pool (in place)."""
    canaries, included = make_canaries(n, task.n_labels, seed)
    start = len(task.train)
    task.train.extend(canaries)
    pool_index.extend(start + j for j, inc in enumerate(included) if inc)
    return {"template": CANARY_TEMPLATE, "seed": seed, "texts": [c.text for c in canaries],
            "labels": [c.label for c in canaries], "included": included}


def _read_record(path: Path, parse: Callable[[dict], object], what: str = ""):
    """A small JSON record of the run dir through `parse`, or None when the file does not exist; a torn or foreign
    file is a one-line PrivtuneError naming it."""
    if not path.exists():
        return None
    try:
        return parse(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrivtuneError(f"{path}: unreadable {what}({type(e).__name__})") from None


def recorded_z_kernel(run: Path) -> str:
    """The z backend a run recorded in engine.json; runs from before train.z_kernel existed used torch."""
    path = run / R.ENGINE
    if not path.exists():
        return "torch"
    name = _read_record(path, lambda d: d["z_kernel"])
    if name not in ("torch", "triton"):
        raise PrivtuneError(f"{path}: unknown z_kernel {name!r}")
    return name


def engine_record(setup: Setup) -> dict:
    """engine.json of a new run: the resolved z backend (and triton's version, whose tl.randn defines z)."""
    zk = setup.engine.z_kernel
    return {"z_kernel": zk, "triton": Z.triton_version() if zk == "triton" else None}


def _emit(callback: Callback | None, event: dict) -> None:
    if callback is not None:
        callback(event)


# ------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(run: Path, setup: Setup, step: int) -> None:
    state_dir = run / R.STATE_DIR
    state_dir.mkdir(exist_ok=True)
    name = f"trainable-{step:08d}.safetensors"
    R.atomic_save_tensors(state_dir / name, trainable_state(setup.sel))
    R.atomic_write_json(state_dir / "state.json", {"step": step, "weights": name})  # the pointer is written last
    for old in state_dir.glob("trainable-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_state(run: Path) -> dict | None:
    """state/state.json (the checkpoint pointer: step and weights file), or None before the first checkpoint."""
    return _read_record(run / R.STATE_DIR / "state.json",
                        lambda st: {"step": int(st["step"]), "weights": str(st["weights"])}, "resume state ")


def load_checkpoint(run: Path, setup: Setup) -> int:
    """Load θ from the last checkpoint; returns its step (0, θ untouched, when there is none)."""
    st = _read_state(run)
    if st is None:
        return 0
    try:
        load_trainable_state(setup.sel, R.load_tensors(run / R.STATE_DIR / st["weights"]))
    except (OSError, ValueError, KeyError) as e:
        raise PrivtuneError(f"{run / R.STATE_DIR / 'state.json'}: unreadable resume state ({type(e).__name__})"
                            ) from None
    return st["step"]


def save_model(run: Path, setup: Setup, extra: dict | None = None) -> None:
    cfg = setup.cfg
    final = run / R.MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=run))
    try:
        R.atomic_save_tensors(tmp / "trainable.safetensors", trainable_state(setup.sel),
                              metadata={"format": "privtune"})
        R.atomic_write_json(tmp / "manifest.json", {
            "base_model": cfg.model.name, "trainable": cfg.trainable.model_dump(mode="json"),
            "dtype": cfg.model.dtype, "parameters": sum(p.numel() for _, p in setup.sel.params), **(extra or {}),
        })
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    R.fsync_dir(run)


# ---------------------------------------------------------------------------------------------------- training
def evaluate(setup: Setup) -> dict:
    acc, correct = accuracy(setup.engine, setup.evalset)
    return {"accuracy": acc, "correct": correct, "total": len(setup.evalset)}


def _create_run_dir(out: Path, cfg, method: Method, run_id: str, extra: dict | None = None,
                    secret_source: str | None = None) -> Ledger:
    """Create the run dir atomically: built in a temp sibling, renamed into place once complete.
    `secret_source`: "key" (drawn from the OS), "fixed" (PRIVTUNE_SECRET_SEED: audit mode, not private) or None (the
    method has no secret); privacy.json keeps the nominal guarantee either way, so audits can compare against it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        R.atomic_write_text(tmp / R.CONFIG, C.dump(cfg))
        for name, obj in (extra or {}).items():
            R.atomic_write_json(tmp / name, obj)
        (tmp / R.METRICS).touch()
        (tmp / R.TRANSCRIPT).touch()
        Ledger.create(tmp, run_id=run_id, steps_total=cfg.train.steps, secret_source=secret_source,
                      **method.ledger_fields())
        if out.exists():
            out.rmdir()  # only an empty directory may be replaced (checked by the caller)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    R.fsync_dir(out.parent)
    return Ledger.open(out)


def check_out_dir(out: Path, resume: bool) -> None:
    if resume:
        if not (out / R.CONFIG).is_file():
            raise ConfigError(f"out_dir: {out} is not a privtune run directory (no {R.CONFIG}); cannot resume")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out_dir: {out} already exists; pass --resume to continue it or choose another out_dir")


def train(cfg, *, resume: bool = False, callback: Callback | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume) a training run described by `cfg`. Returns the final eval dict.

    `stop_after` stops cleanly after that many steps of this invocation (tests use it to simulate interruptions).
    A failing write (disk full, read-only directory) becomes a one-line PrivtuneError naming the file; the ledger
    and the last checkpoint stay valid, so the run can be resumed once the disk is fixed.
    Under torchrun (privtune.dist) every rank runs this same loop on its share of the chunks; only rank 0 holds the
    secret key and writes the run dir, and every rank applies the same released updates.
    """
    with dist.session(cfg.model.device):
        try:
            return _train(cfg, resume=resume, callback=callback if dist.is_main() else None, stop_after=stop_after)
        except BudgetError as e:
            # A spent budget ends the run for good (a resume refuses it), so its key and private state go now.
            out = Path(cfg.out_dir)
            if not dist.is_main() or not (out / R.PRIVACY).is_file():
                raise
            from .forget import forget_run

            gone = forget_run(out)
            raise BudgetError(f"{e}; {'its secret key and private state were deleted' if gone else 'no secrets kept'}"
                              ) from None
        except OSError as e:
            from .models import cache_dir

            where = e.filename or cfg.out_dir
            again = "--resume" if (Path(cfg.out_dir) / R.CONFIG).is_file() else "the same command"
            if Path(where).resolve().is_relative_to(cache_dir().resolve()):  # the private keystore / resume state
                raise PrivtuneError(f"{where}: cannot write: {e.strerror or e}; fix it and rerun with {again}") from None
            raise PrivtuneError(f"out_dir: cannot write {where}: {e.strerror or e}; fix it and rerun with {again}"
                                ) from None


def _train(cfg, *, resume: bool, callback: Callback | None, stop_after: int | None) -> dict:
    out = Path(cfg.out_dir)
    main = dist.is_main()

    def resolve():  # rank 0 checks the run dir; on resume every rank trains the config saved in it
        check_out_dir(out, resume)
        if resume:
            R.sweep_temp(out)  # temp files of writes a kill interrupted
        return (C.load_yaml(out / R.CONFIG), recorded_z_kernel(out)) if resume else (None, None)
    saved, zk = dist.from_main(resolve)
    if saved is not None:
        cfg = build_config(saved)
    setup = prepare(cfg, callback=callback, z_kernel=zk, z_recorded_in=out / R.ENGINE if resume else None)
    cls = method_class(cfg.method.name)
    steps = cfg.train.steps
    ledger = key = None
    run_id = ""
    secret_source = None  # "key" | "fixed" | None (no secret), written to privacy.json
    recorded: list[dict] = []  # rank 0: the transcript as found (read once per invocation)

    def open_run():  # rank 0 only: the ledger and the secret key never leave it
        nonlocal ledger, key, run_id, secret_source
        if resume:
            ledger = Ledger.open(out)
            run_id = ledger.state.get("run_id", "")
            secret_source = ledger.state.get("secret_source")
            finished = _checkpoint_step(out) >= steps  # killed after its final checkpoint: only the wrap-up is left
            key = S.load(run_id) if cls.needs_secret else None
            if cls.needs_secret and key is None and not finished:
                raise PrivtuneError(f"{out}: this private run's secret key is gone from the keystore ({S.__name__}); "
                                    "it cannot resume without re-drawing its secret")
            return finished
        run_id = uuid.uuid4().hex
        if cls.needs_secret:
            fixed = S.fixed_seed_from_env()
            secret_source = "key" if fixed is None else "fixed"
            key = S.create(run_id, fixed, run_dir=out)
        return False
    finished = dist.from_main(open_run)
    if not main and cls.needs_secret:
        key = dist.RemoteSecret()
    try:
        # A finished run whose key is already forgotten needs no mechanism: the key is forgotten only after the
        # final ledger update, so privacy.json is complete and only eval.json (and the model) are left to write.
        method = (None if resume and finished and cls.needs_secret and key is None else
                  cls(cfg.method, setup.engine, setup.pool, cfg.train.seed, steps, secret=key))
    except BaseException:
        if key is not None and not resume:
            key.forget()  # nothing was released under this key
        raise

    def begin():  # rank 0: the resume point (θ, private state, metrics cut back) or a fresh run dir
        nonlocal ledger, recorded
        if resume:
            start = load_checkpoint(out, setup)
            recorded = R.read_jsonl(out / R.TRANSCRIPT, repair=True)
            before = []
            if start < steps:  # a finished run takes no more steps: its mechanism state is not needed
                method.load_private_state(_load_private(run_id, start))
                before = [r for r in recorded if int(r["step"]) < start]
            R.truncate_jsonl(out / R.METRICS, lambda r: start > 0 and r.get("step", -1) <= start)
        else:
            try:
                extra = {R.ENGINE: engine_record(setup)}
                if setup.canaries is not None:
                    extra["canaries.json"] = setup.canaries
                ledger = _create_run_dir(out, cfg, method, run_id, extra,  # audit mode: canaries + inclusion
                                         secret_source=secret_source)
            except BaseException:
                if key is not None:
                    key.forget()
                raise
            start, before = 0, []
        if start < steps and ledger.exhausted():
            raise BudgetError(f"privacy budget: {out / R.PRIVACY} shows the budget is spent; this run cannot go on")
        return start, before
    start, before = dist.from_main(begin)
    tb = tblog.Mirror(out, R.read_jsonl(out / R.METRICS)) if main and cfg.train.tensorboard else None
    if start > 0:
        dist.broadcast_tensors([p for _, p in setup.sel.params])  # θ at the checkpoint, from rank 0
    if method is not None and start < steps:
        method.resume(start, before)
    done = {int(r["step"]): r for r in recorded}

    if secret_source == "fixed":  # once the run has really started (a run that fails to start says only why)
        _emit(callback, {"event": "warning", "message": AUDIT_MODE_WARNING})
    _emit(callback, {"event": "start", "step": start, "steps": steps, "out_dir": str(out)})
    t0 = time.time()
    # A step's wall time and traffic grow with secret work (a Poisson batch's size): a method with a secret releases
    # neither per step, only the total wall time in eval.json (methods.TIMING_RESIDUAL).
    per_step_costs = not cls.needs_secret
    if start == 0:
        zero = evaluate(setup)
        if main:
            zero_row = {"step": 0, "eval_accuracy": zero["accuracy"], "kind": "eval"}
            R.append_jsonl(out / R.METRICS, zero_row)
            if tb is not None:
                tb.log(zero_row)
        _emit(callback, {"event": "eval", "step": 0, **zero})
    ran, comm, logged_at = 0, 0, start
    for t in range(start, steps):
        if stop_after is not None and ran >= stop_after:
            if main:
                _save_private(run_id, t, method, out)
                save_checkpoint(out, setup, t)
            if tb is not None:
                tb.close()
            _emit(callback, {"event": "stopped", "step": t})
            return {"stopped_at": t}
        sent = dist.stats["bytes"]
        try:
            rel = method.step(t)
        except PrivtuneError:  # NaN loss, budget spent or a lost peer: stop cleanly at the last good state
            if main:
                _save_private(run_id, t, method, out)
                save_checkpoint(out, setup, t)  # θ is still the last good state
            raise
        lr = method.lr_at(t)
        line = {"step": t, "lr": lr, "updates": [[int(s), float(c)] for s, c in rel.updates], **rel.public}

        def record():  # rank 0: charge, then transcript; every rank waits for it before θ moves
            if t in done:
                if _released(done[t]) != _released(line):
                    raise PrivtuneError(f"{out / R.TRANSCRIPT}: the release recomputed at step {t} differs from the "
                                        "recorded one (non-deterministic device?); refusing to continue")
            ledger.charge(t, method.spending(), summary=method.summary, **rel.counters)  # before it is applied
            if t not in done:
                R.append_jsonl(out / R.TRANSCRIPT, line)
        dist.from_main(record)
        comm += dist.stats["bytes"] - sent
        method.apply(rel, lr)
        ran += 1
        if (t + 1) % cfg.train.log_every == 0 or t + 1 == steps:
            timing = {"elapsed_s": round(time.time() - t0, 3)} if per_step_costs else {}
            row = {"step": t + 1, "lr": lr, **timing, **rel.public, **rel.monitor}
            if dist.world() > 1:
                row["processes"] = dist.world()
                if per_step_costs:  # payload bytes rank 0 put into collectives per step since the last row
                    row["comm_bytes_per_step"] = round(comm / (t + 1 - logged_at), 1)
            comm, logged_at = 0, t + 1
            if cfg.train.eval_every and (t + 1) % cfg.train.eval_every == 0 and t + 1 < steps:
                row["eval_accuracy"] = evaluate(setup)["accuracy"]
            if main:
                R.append_jsonl(out / R.METRICS, row)
                if tb is not None:
                    tb.log(row)
        if main and (t + 1) % cfg.train.checkpoint_every == 0 and t + 1 < steps:
            ledger.update(**method.summary(ledger.state))
            _save_private(run_id, t + 1, method, out)
            save_checkpoint(out, setup, t + 1)
        _emit(callback, {"event": "step", "step": t + 1, "steps": steps, **rel.monitor})

    final = evaluate(setup)

    def finish():
        save_model(out, setup)
        save_checkpoint(out, setup, steps)
        ledger.update(steps_done=steps, **({**method.summary(ledger.state), **method.final_fields(final)}
                                          if method is not None else {}))
        if key is not None:
            key.forget()  # the run is complete: J and the noise can never be re-drawn
        _private_path(run_id).unlink(missing_ok=True)
        result = {"accuracy": final["accuracy"], "correct": final["correct"], "total": final["total"],
                  "task": cfg.task.name, "split": "eval", "steps": steps, "wall_time_s": round(time.time() - t0, 2)}
        first = next((r for r in R.read_jsonl(out / R.METRICS) if r.get("kind") == "eval" and r["step"] == 0), None)
        if first is not None:
            result["initial_accuracy"] = first["eval_accuracy"]
        R.atomic_write_json(out / R.EVAL, result)
        return result
    result = dist.from_main(finish)
    if tb is not None:
        tb.close()
    _emit(callback, {"event": "done", **result})
    return result


def _released(line: dict) -> str:
    """What a transcript line says was released (everything but the step and lr), in a canonical JSON form, so a
    recomputed release is compared bitwise with the recorded one."""
    import json

    return json.dumps({k: v for k, v in line.items() if k not in ("step", "lr")}, sort_keys=True)


# ------------------------------------------------------------------------- private state (kept out of the run dir)
def _private_path(run_id: str) -> Path:
    return S.private_state_path(run_id)  # named like the run's key, so `privtune forget` finds both


def _save_private(run_id: str, step: int, method: Method, run: Path) -> None:
    state = method.private_state()
    if not state:
        return
    path = _private_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import io

    states = torch.load(path, weights_only=False)["states"] if path.exists() else {}
    # Keep the state of the checkpoint state.json points at (the one a resume starts from) until the new checkpoint
    # lands, whatever crashes happened before; and the newest, in case the pointer moved since.
    keep = {_checkpoint_step(run), max(states, default=-1)}
    states = {s: v for s, v in states.items() if s in keep}
    states[step] = state
    buf = io.BytesIO()
    torch.save({"states": states}, buf)
    R.atomic_write_bytes(path, buf.getvalue())


def _checkpoint_step(run: Path) -> int:
    """The step state/state.json points at (0 when there is no checkpoint yet)."""
    st = _read_state(run)
    return 0 if st is None else st["step"]


def _load_private(run_id: str, step: int) -> dict:
    path = _private_path(run_id)
    if step == 0 or not path.exists():
        return {}
    states = torch.load(path, weights_only=False)["states"]
    if step not in states:
        raise PrivtuneError(f"{path}: no private state for checkpoint step {step} (have {sorted(states)}); cannot resume")
    return states[step]
