"""`privtune tune`: choose a DP run's hyper-parameters on private data, and account for the choice.

A user's own task cannot be tuned on without spending privacy: every run tried, and every validation score read,
depends on the data. This is Papernot & Steinke's private selection (ICLR 2022), accounted by
privacy.selection:
1. Draw K ≥ 1 from the truncated negative binomial with mean `runs` and shape `shape`, from a secret generator.
2. K times: draw a candidate uniformly from the grid (the product of the --grid values), train the config with it,
   score the trained model on the private validation file (accuracy, or F1 for generation), and add Gaussian noise of
   std `score_std`·n to the summed score (n: the validation examples; one example moves the sum by at most 1).
3. Release the best repetition only: its run directory becomes out_dir, with tune.json (the chosen candidate, its noisy
   score, the guarantee of the whole selection) and its privacy.json showing that guarantee. The other repetitions'
   run directories and every secret key are deleted; K and the other scores are written nowhere.

With `epsilon` (the whole selection's ε), each run's method.epsilon is set to the largest ε whose selection costs at
most `epsilon` (privacy.selection.run_epsilon_for). Without it each run keeps the config's budget and the selection's
ε is reported. Every run is accounted by RDP (method.accountant is set to rdp), and every candidate must share one
privacy event: a grid key that changes it (ε, steps, batch size, pool size, sampling, ...) is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import secrets
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import atomic as A
from ..config import dump
from ..errors import ConfigError, PrivtuneError
from ..methods import build_config, load_config
from ..methods.dpzero import DPCfg, config_errors
from ..privacy import dp, selection
from ..privacy.bounds import eps_to_posterior
from ..zo.sums import headline
from .evaluate import _on_file, evaluate_run
from .forget import forget_run
from .ledger import Ledger
from .loop import train
from .rundir import RunDir

TUNE = "tune.json"
REFERENCE = "Papernot & Steinke, Hyperparameter Tuning with Renyi Differential Privacy (ICLR 2022), Thm. 2"
FIXED = ("out_dir", "method.accountant", "method.epsilon", "method.noise_multiplier")  # tune sets these itself


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["method.lr=0.1,0.3", ...] → {"method.lr": ["0.1", "0.3"], ...}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(vals):
            raise ConfigError(f"--grid: {item!r} must look like key.sub=v1,v2 (e.g. method.lr=0.03,0.1,0.3)")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; put all its values in one --grid")
        if key in FIXED:
            raise ConfigError(f"--grid {key}: tune sets it itself (the budget with --epsilon, the runs' folders "
                              "under out_dir); tune keys that leave the accounting alone, e.g. method.lr")
        grid[key] = vals
    if not grid:
        raise ConfigError("--grid: give at least one key.sub=v1,v2 to choose among")
    return grid


class Accounting(NamedTuple):
    """What a run's privacy event depends on, besides its noise: the arguments of DPZero._accounting."""
    mechanism: str
    per_step: float  # privacy.dp.release_factor: the accountant sees the noise divided by it
    steps: int
    rate: float
    sampling: str
    pool_size: int
    delta: float


def _accounting(cfg) -> Accounting:
    """A config's Accounting, the pool size from the config (data.draw_pool draws exactly it)."""
    m = cfg.method
    mechanism = getattr(m, "mechanism", "gaussian")
    k = getattr(m, "directions", 1)  # DP-SGD has none: one release per step
    n = cfg.task.pool_size
    return Accounting(mechanism, dp.release_factor(mechanism, k), cfg.train.steps, m.batch_size / n, m.sampling, n,
                      m.delta)


def _noise_for(acc: Accounting, epsilon: float) -> float:
    """The accountant's noise parameter (noise / per-step factor) a run calibrated to `epsilon` gets: the same call
    the method's own calibration makes (methods.dpzero.DPZero._calibrate), with the RDP accountant."""
    calibrate = dp.gaussian_sigma_for_epsilon if acc.mechanism == "gaussian" else dp.laplace_scale_for_epsilon
    return calibrate(epsilon, acc.delta, acc.steps, acc.rate, "rdp", acc.sampling, acc.pool_size)


def _selection_epsilon(acc: Accounting, noise: float, score_noise: float, mean: float, shape: float) -> float:
    run = dp.run_event(acc.mechanism, noise, acc.steps, acc.rate, acc.sampling, acc.pool_size)
    return selection.selection_epsilon(selection.repetition_event(run, score_noise), mean, shape, acc.delta,
                                       acc.sampling)


def _recorded(privacy: dict) -> tuple[Accounting, float]:
    """(Accounting, accountant noise) from a finished run's privacy.json: what it actually ran with."""
    mechanism = privacy["mechanism"]
    per_step = dp.release_factor(mechanism, int(privacy.get("directions", 1)))
    acc = Accounting(mechanism, per_step, int(privacy["steps_total"]), float(privacy["sampling_rate"]),
                     privacy["sampling"], int(privacy["pool_size"]), float(privacy["delta"]))
    return acc, float(privacy["noise_multiplier"]) / per_step


def _validation_size(cfg, val: Path) -> int:
    """How many examples `val` holds, read as the run's task reads an eval file (privtune eval --data)."""
    from .setup import build_task

    data = cfg.model_dump(mode="json")
    data["task"] = _on_file(data["task"], val, None)
    return len(build_task(build_config(data)).eval)


def plan(config: str | Path | None, overrides: list[str], grid: dict[str, list[str]], val: str | Path,
         epsilon: float | None, runs: float, shape: float, score_std: float, callback=None) -> dict:
    """Check everything a tune needs before any run starts (one-line ConfigErrors naming the flag or key); return
    the plan: candidates, the per-run ε and the selection's guarantee."""
    base = load_config(config, overrides)
    if not isinstance(base.method, DPCfg):
        raise ConfigError(f"method.name: tune accounts (ε, δ)-DP runs (dpzero, dpzo, dpsgd); {base.method.name} "
                          "has no DP guarantee to compose (PACZero's MI has no private-selection rule here)")
    RunDir.check_out_dir(base.out_dir, resume=False)
    val = Path(val)
    if not val.is_file():
        raise ConfigError(f"--val: {val}: no such file (the private validation examples, in the task's format)")
    for name, value, ok, need in (("--runs", runs, 1.0 <= runs < math.inf, "finite and >= 1"),
                                  ("--shape", shape, 0.0 <= shape < math.inf, "finite and >= 0"),
                                  ("--score-std", score_std, 0.0 < score_std < math.inf, "finite and > 0")):
        if not ok:
            raise ConfigError(f"{name}: must be {need}, got {value}")
    if epsilon is not None and not (0.0 < epsilon < math.inf):
        raise ConfigError(f"--epsilon: must be finite and > 0, got {epsilon}")
    budget = [] if epsilon is None else ["method.noise_multiplier=null"]
    pinned = ["method.accountant=rdp", *budget]
    keys = list(grid)
    candidates = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    accs = {}
    for cand in candidates:
        cfg = load_config(config, [*overrides, *pinned, *(f"{k}={v}" for k, v in cand.items())])
        accs[tuple(cand.items())] = _accounting(cfg)
    first = next(iter(accs.values()))
    for key in keys:  # a key whose values alone change the event (the grid is a product: if any does, one key does)
        seen: dict[tuple, tuple] = {}
        for cand, acc in accs.items():
            if seen.setdefault(tuple(kv for kv in cand if kv[0] != key), acc) != acc:
                raise ConfigError(f"--grid {key}: changes a run's privacy accounting (ε, steps, batch, pool, "
                                  "sampling or δ); tune keys that leave it alone, e.g. method.lr")
    if first.mechanism == "laplace" and first.rate < 1.0:
        raise ConfigError("method.mechanism: tune accounts runs with RDP, which has no rule for sub-sampled Laplace "
                          "noise; use gaussian, or method.batch_size = task.pool_size")
    if callback is not None:
        callback({"event": "status", "message": f"tune: reading the validation file {val}"})
    n_val = _validation_size(base, val)
    score_noise = score_std * n_val
    gamma = selection.tnb_gamma(runs, shape)
    mean = selection.tnb_mean(gamma, shape)  # the mean of the distribution K is drawn from, exactly
    with config_errors("--epsilon"):
        if epsilon is not None:
            if callback is not None:
                callback({"event": "status", "message": f"tune: calibrating each run's ε for a selection at ε = "
                                                        f"{epsilon:g}"})
            run_eps = selection.run_epsilon_for(
                epsilon, lambda e: _selection_epsilon(first, _noise_for(first, e), score_noise, mean, shape),
                field="--epsilon")
            noise = _noise_for(first, run_eps)
        else:
            m = base.method
            run_eps = m.epsilon
            noise = (_noise_for(first, m.epsilon) if m.epsilon is not None
                     else float(m.noise_multiplier) / first.per_step)
            if noise == 0.0:
                raise ConfigError("method.noise_multiplier: 0 claims no guarantee, so there is nothing to tune "
                                  "privately")
        total = _selection_epsilon(first, noise, score_noise, mean, shape)
    run_overrides = [*pinned, *([] if epsilon is None else [f"method.epsilon={run_eps!r}"])]
    return {"base": base, "config": config, "overrides": list(overrides), "run_overrides": run_overrides,
            "grid": grid, "candidates": candidates, "accounting": first, "noise": noise, "run_epsilon": run_eps,
            "epsilon": total, "target": epsilon, "val": val, "n_val": n_val, "score_std": score_std,
            "score_noise": score_noise, "gamma": gamma, "mean": mean, "shape": shape}


def tune(config: str | Path | None, overrides: list[str], grid: dict[str, list[str]], val: str | Path,
         epsilon: float | None = None, runs: float = 3.0, shape: float = 1.0, score_std: float = 0.01,
         callback=None, rng: np.random.Generator | None = None) -> dict:
    """Run the private selection (module docstring); return tune.json's content. `rng` is for tests only: the
    guarantee needs K, the candidates and the score noise drawn from a generator nobody can recompute."""
    p = plan(config, overrides, grid, val, epsilon, runs, shape, score_std, callback)
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    out = Path(p["base"].out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tune-{secrets.token_hex(4)}"
    work.mkdir()
    best = None  # (noisy summed score, repetition folder, candidate)
    try:
        k = selection.draw_runs(rng, p["gamma"], p["shape"])
        for j in range(k):
            cand = p["candidates"][int(rng.integers(len(p["candidates"])))]
            folder = work / str(j)
            cfg = load_config(config, [*p["overrides"], *p["run_overrides"], *(f"{a}={b}" for a, b in cand.items()),
                                       f"out_dir={folder}"])
            if callback is not None:
                callback({"event": "status", "message": "tune: training a candidate"})
            train(cfg, callback=callback)
            _check_recorded(folder, p)
            forget_run(folder)  # its secret key and private state: no repetition is ever resumed
            result = evaluate_run(folder, data=p["val"])
            name, value = headline(result)
            noisy = value * int(result["total"]) + p["score_noise"] * float(rng.standard_normal())
            if best is None or noisy > best[0]:
                best = (noisy, folder, cand, name)
        noisy, folder, cand, name = best
        record = _record(p, cand, name, noisy)
        _finish(folder, out, record)
        return record
    finally:
        for run in sorted(work.iterdir()) if work.exists() else []:  # a repetition that failed before its forget
            with contextlib.suppress(PrivtuneError):
                forget_run(run)
        shutil.rmtree(work, ignore_errors=True)


def _check_recorded(folder: Path, p: dict) -> None:
    """The run used exactly the accounting planned (a guard: the selection's ε was computed from the plan)."""
    run = RunDir(folder)
    privacy = run.read_record(run.privacy) or {}
    acc, noise = _recorded(privacy)
    if acc != p["accounting"] or not noise >= p["noise"] * (1 - 1e-12):
        raise PrivtuneError(f"{folder}: the run's privacy.json ({acc}, noise {noise}) differs from the tune's plan "
                            f"({p['accounting']}, noise {p['noise']}); nothing was released")


def _record(p: dict, cand: dict, metric: str, noisy: float) -> dict:
    delta = p["accounting"].delta
    return {
        "method": p["base"].method.name, "guarantee": "dp", "epsilon": p["epsilon"], "delta": delta,
        "mia_posterior_bound": eps_to_posterior(p["epsilon"], delta), "epsilon_target": p["target"],
        "run_epsilon": p["run_epsilon"], "grid": p["grid"], "chosen": cand,
        "noisy_score": {"metric": metric, "value": noisy / p["n_val"]}, "validation": str(p["val"]),
        "validation_size": p["n_val"], "score_std": p["score_std"], "runs_mean": p["mean"], "runs_shape": p["shape"],
        "accountant": "rdp", "reference": REFERENCE,
        "assumptions": (f"(ε, δ)-DP of the released run and its noisy score together, with respect to the training "
                        f"pool and the validation file: the best of K secret repetitions (K ~ truncated negative "
                        f"binomial, mean {p['mean']:.4g}, shape {p['shape']:g}), each a run at ε = "
                        f"{p['run_epsilon']:.4g} composed with a Gaussian score (std {p['score_std']:g} of the mean "
                        f"score); neither K nor any other repetition is released"),
    }


def _finish(folder: Path, out: Path, record: dict) -> None:
    """The chosen run becomes out_dir: tune.json beside its files, and its privacy.json states the selection's
    guarantee (the run's own ε stays as run_epsilon). The folder is complete before the one rename."""
    run = RunDir(folder)
    Ledger.open(run).update(epsilon=record["epsilon"], epsilon_spent=record["epsilon"],
                            mia_posterior_bound=record["mia_posterior_bound"], run_epsilon=record["run_epsilon"],
                            assumptions=record["assumptions"], selected_by=TUNE)
    A.atomic_write_json(folder / TUNE, record)
    cfg = run.load_config_dict()
    cfg["out_dir"] = str(out)
    A.atomic_write_text(run.config, dump(build_config(cfg)))
    if out.exists():  # check_out_dir allowed only an empty folder
        out.rmdir()
    folder.rename(out)


def read(path: str | Path) -> dict:
    return json.loads((Path(path) / TUNE).read_text(encoding="utf-8"))
