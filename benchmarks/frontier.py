"""The privacy–utility frontier of one task: every mechanism at matched MIA-posterior bounds, over seeds.

Each private mechanism is run at each posterior level p (the best membership-inference attacker's success probability,
prior ½), matched exactly per mechanism:
  DPZero, DP-ZO, DP-SGD at ε = posterior_to_eps(p, δ) rounded down to 4 decimals (δ = 1e-5),
  PACZero-MI at the budget posterior_to_mi(p) rounded down to 4 decimals (privacy.matching's rule),
so no mechanism gets a looser bound than p. PACZero-ZPL (I = 0, posterior 0.5), MeZO and the first-order reference
fo (no guarantee) are run once per seed, and zero-shot is every run's step-0 accuracy (one number: the model and the
eval set are the same for all runs).

Every run is a normal `privtune train` process built from the shipped presets configs/sst2_<method>.yaml with only the
task swapped (--task) and the privacy level set: the presets are what a user would run on their own task, so the
frontier measures them, not a per-task tuning. The secret key of seed s is PRIVTUNE_SECRET_SEED=1000+s.
cpu_s is the child process's user+system CPU time (wait4), i.e. what the run cost on this machine.

Usage: python benchmarks/frontier.py --task agnews|sst2|sst2-paper [--seeds 0,1,2] [--levels 0.55,0.6,...]
           [--only mezo,fo,paczero-zpl,paczero-mi,dpzero,dpzo,dpsgd] [--jobs 1] [--runs DIR] [--out FILE]
           [key=value ...]
Writes benchmarks/results/frontier_<task>.json: `rows` (one per mechanism and level: method, mia_posterior_bound,
epsilon, delta, mi_nats, accuracy_mean, accuracy_std, seeds, cpu_s) that `privtune report` draws, and `runs` (every run).
A run dir that already holds an eval.json of the same resolved config is reused (frontier.kept), so an interrupted
sweep resumes and an edited preset reruns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from privtune.privacy.bounds import eps_to_posterior, posterior_to_eps, posterior_to_mi
from privtune.privacy.matching import MATCH_DECIMALS

REPO = Path(__file__).resolve().parents[1]
DELTA = 1e-5
THREADS = 1  # torch threads per run (OMP_NUM_THREADS)
LEVELS = (0.55, 0.6, 0.75, 0.88, 0.95, 0.997)
# The task variants: the overrides that swap the presets' task (SST-2) for another. sst2-paper is the MeZO/PACZero
# papers' prompt (zero-shot ≈ 52% for SmolLM2), where SST-2 still has headroom.
TASKS = {
    "sst2": [],
    "sst2-paper": ["task.template={text} It was", "task.verbalizer=[' terrible', ' great']"],
    "agnews": ["task.name=agnews"],
}
# mechanism → (preset, how a posterior level p becomes overrides; None: the mechanism has one level)
PRESETS = {
    "fo": ("configs/sst2_fo.yaml", None),
    "mezo": ("configs/sst2_mezo.yaml", None),
    "paczero-zpl": ("configs/sst2_paczero_zpl.yaml", None),
    "paczero-mi": ("configs/sst2_paczero_mi.yaml", lambda p: [f"method.budget={_down(posterior_to_mi(p))}"]),
    "dpzero": ("configs/sst2_dpzero.yaml", lambda p: _dp_level(p)),
    "dpzo": ("configs/sst2_dpzo.yaml", lambda p: _dp_level(p)),
    "dpsgd": ("configs/sst2_dpsgd.yaml", lambda p: _dp_level(p)),
}


def _dp_level(p: float) -> list[str]:
    """(ε, δ) overrides whose attacker bound is at most p. Below (1 + δ)/2 no ε ≥ 0 gets there: δ alone allows more."""
    eps = _down(posterior_to_eps(p, DELTA))
    if eps_to_posterior(eps, DELTA) > p:
        raise ValueError(f"posterior level {p}: unreachable by (ε, δ={DELTA:g})-DP (δ alone allows {(1 + DELTA) / 2})")
    return [f"method.epsilon={eps}", f"method.delta={DELTA}"]


def _down(x: float, decimals: int = MATCH_DECIMALS) -> float:
    """x rounded down (never up: a matched level must not be looser than the posterior it is matched to)."""
    scale = 10**decimals
    units = int(x * scale)
    while units / scale > x:
        units -= 1
    return units / scale


def plan(task: str, mechanisms: list[str], levels: list[float], seeds: list[int], extra: list[str]) -> list[dict]:
    """Every run of the sweep: its mechanism, level (None for one-level mechanisms), seed and command overrides."""
    out = []
    for m in mechanisms:
        preset, at = PRESETS[m]
        for p in (levels if at is not None else [None]):
            for s in seeds:
                tag = f"{m}_p{p}_s{s}" if p is not None else f"{m}_s{s}"
                out.append({"mechanism": m, "level": p, "seed": s, "tag": tag, "preset": preset,
                            "overrides": [*TASKS[task], *(at(p) if p is not None else []), f"train.seed={s}", *extra]})
    return out


def kept(out: Path, preset: Path, overrides: list[str]) -> bool:
    """Whether `out` is a finished run of exactly the config `preset` + `overrides` resolves to (the sweep resumes).
    The resolved configs are compared, not the command: a preset edited since the run reruns it, and a checkout moved
    elsewhere still finds its runs."""
    from privtune import methods as M
    from privtune.config import apply_overrides, load_yaml
    from privtune.run.rundir import RunDir

    if not ((out / "eval.json").exists() and (out / "sweep_cpu.json").exists() and (out / "config.yaml").exists()):
        return False
    want = M.build_config(apply_overrides(load_yaml(preset), [*overrides, f"out_dir={out}"]))
    return RunDir(out).load_config() == want


def timed(cmd: list[str], **env: str) -> tuple[float, float]:
    """Run `cmd` (stdout discarded) to completion with THREADS threads and the extra environment `env`: its
    user+system CPU seconds and wall seconds. A failure stops the sweep with the command.

    One thread per process: a step on cached states is many tiny ops, which threads only slow down (and --jobs
    processes share the cores); the thread count is recorded because results are reproducible at a fixed count."""
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **env}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {' '.join(map(str, cmd))}")
    return round(usage.ru_utime + usage.ru_stime, 1), round(time.time() - t0, 1)


def run_one(r: dict, runs: Path) -> dict:
    out = runs / r["tag"]
    cmd = [sys.executable, "-m", "privtune", "train", "-q", "--config", str(REPO / r["preset"]), *r["overrides"],
           f"out_dir={out}"]
    stamp = out / "sweep_cmd.json"  # the command, for the record
    if kept(out, REPO / r["preset"], r["overrides"]):
        res = json.loads((out / "eval.json").read_text())
        cpu = json.loads(stamp.with_name("sweep_cpu.json").read_text())["cpu_s"]
        reused = True
    else:
        reused = False
        if out.exists():
            shutil.rmtree(out)
        cpu, wall = timed(cmd, PRIVTUNE_SECRET_SEED=str(1000 + r["seed"]))
        stamp.write_text(json.dumps(cmd[3:]))
        stamp.with_name("sweep_cpu.json").write_text(json.dumps({"cpu_s": cpu, "wall_s": wall}))
        res = json.loads((out / "eval.json").read_text())
    led = json.loads((out / "privacy.json").read_text())
    metric = "f1" if "f1" in res else "accuracy"  # a generation task is judged by F1 (eval.json has no accuracy)
    row = {**{k: r[k] for k in ("mechanism", "level", "seed")}, "metric": metric, "accuracy": res[metric],
           "initial_accuracy": res.get(f"initial_{metric}"), "eval_examples": res.get("total"), "cpu_s": cpu,
           "guarantee": led.get("guarantee"), "epsilon": led.get("epsilon"), "delta": led.get("delta"),
           "mi_nats": led.get("mi_nats"), "mia_posterior_bound": led.get("mia_posterior_bound"),
           "unanimity_rate": led.get("unanimity_rate"), "run_dir": str(out), "reused": reused}
    if metric == "f1":
        row["exact_match"], row["initial_exact_match"] = res.get("exact_match"), res.get("initial_exact_match")
    print(json.dumps(row), flush=True)
    return row


def rows_of(runs: list[dict]) -> list[dict]:
    """The frontier rows `privtune report` draws: one per (mechanism, level), plus the zero-shot floor."""
    rows = []
    inits = {r["initial_accuracy"] for r in runs if r["initial_accuracy"] is not None}
    if inits:
        if len(inits) > 1:  # every run evaluates the same model on the same eval set at step 0
            raise SystemExit(f"runs disagree on the zero-shot accuracy: {sorted(inits)}")
        rows.append({"method": "zero-shot", "mia_posterior_bound": 0.5, "epsilon": 0.0, "delta": 0.0,
                     "mi_nats": 0.0, "accuracy_mean": inits.pop(), "accuracy_std": 0.0,
                     "seeds": len({r["seed"] for r in runs}), "cpu_s": 0.0})
    keys = list(dict.fromkeys((r["mechanism"], r["level"]) for r in runs))
    for m, p in keys:
        g = [r for r in runs if (r["mechanism"], r["level"]) == (m, p)]
        accs = [r["accuracy"] for r in g]
        bounds = {r["mia_posterior_bound"] for r in g}
        none = g[0]["guarantee"] in (None, "none")
        rows.append({
            "method": m, "level": p,
            "mia_posterior_bound": None if none else max(b for b in bounds if b is not None),
            "epsilon": float("inf") if none else g[0]["epsilon"], "delta": g[0]["delta"],
            "mi_nats": float("inf") if none else g[0]["mi_nats"],
            "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": len(accs), "cpu_s": round(statistics.mean(r["cpu_s"] for r in g), 1),
            "unanimity_rate": (statistics.mean(u) if (u := [r["unanimity_rate"] for r in g
                                                            if r["unanimity_rate"] is not None]) else None)})
    return rows


def merged(old: dict, new: dict, runs: list[dict]) -> tuple[dict, list[dict]]:
    """An earlier sweep's result with this sweep's runs in place of the runs they redo (same mechanism, level and
    seed; in place, so the rows keep their order), new runs after them. Levels and seeds are the unions, and
    `commands` lists every sweep's command in order (the earlier file's `commands`, or its `command`)."""
    if old.get("task") != new["task"]:
        raise SystemExit(f"--merge: the existing file is task {old.get('task')!r}, not {new['task']!r}")
    key = lambda r: (r["mechanism"], r["level"], r["seed"])  # noqa: E731
    redo = {key(r): r for r in runs}
    before = {key(r) for r in old["runs"]}
    both = [redo.get(key(r), r) for r in old["runs"]] + [r for r in runs if key(r) not in before]
    out = {**new, "commands": [*old.get("commands", [old["command"]]), new["command"]],
           "levels": sorted(set(old.get("levels", [])) | set(new["levels"])),
           "seeds": sorted(set(old.get("seeds", [])) | set(new["seeds"])),
           "wall_s": round(old.get("wall_s", 0.0) + new["wall_s"], 1)}
    return out, both


def run_all(todo: list[dict], runs: Path, jobs: int, group=lambda r: r["seed"]) -> list[dict]:
    """Run `todo` with `jobs` at once. The first run of each group (runs sharing a training pool, so its cached
    hidden states) goes alone first, so that parallel runs find the cache instead of all computing it."""
    first = list({group(r): i for i, r in reversed(list(enumerate(todo)))}.values())
    done = {i: run_one(todo[i], runs) for i in sorted(first)}
    rest = [i for i in range(len(todo)) if i not in done]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done.update(zip(rest, pool.map(lambda i: run_one(todo[i], runs), rest)))
    return [done[i] for i in range(len(todo))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--only", default=",".join(PRESETS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each a privtune process)")
    ap.add_argument("--runs", default=None, help="run dirs (default runs/frontier_<task>)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/frontier_<task>.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of an existing --out file that this sweep does not redo (same mechanism, "
                         "level and seed are replaced) and recompute its rows; its commands are kept in `commands`")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every run (after the task's)")
    args = ap.parse_args()
    mechanisms = args.only.split(",")
    unknown = [m for m in mechanisms if m not in PRESETS]
    if unknown:
        ap.error(f"--only: unknown mechanism(s) {unknown}; known: {list(PRESETS)}")
    levels = [float(x) for x in args.levels.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = Path(args.runs or f"runs/frontier_{args.task}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = plan(args.task, mechanisms, levels, seeds, args.overrides)
    t0 = time.time()
    out = Path(args.out or REPO / "benchmarks" / "results" / f"frontier_{args.task}.json")
    runs = run_all(todo, runs_dir, args.jobs)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    result = {"benchmark": "frontier", "task": args.task, "model": "SmolLM2-135M-Instruct", "command": command,
              "delta": DELTA, "threads_per_run": THREADS, "levels": levels, "seeds": seeds,
              "wall_s": round(time.time() - t0, 1)}
    if args.merge and out.exists():
        result, runs = merged(json.loads(out.read_text()), result, runs)
    result.update({"cpu_s_total": round(sum(r["cpu_s"] for r in runs), 1), "rows": rows_of(runs), "runs": runs})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}: {len(runs)} runs, {result['cpu_s_total'] / 60:.1f} CPU-minutes", file=sys.stderr)


if __name__ == "__main__":
    main()
