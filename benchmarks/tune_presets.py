"""The preset protocol: each method's learning rate chosen on public tuning tasks only, never on evaluated data.

A user's private task cannot be tuned on without spending privacy, so a shipped preset must transfer. Protocol:
1. Tuning tasks: SST-2 with the papers' template ("{text} It was" → " terrible"/" great") and AG News. Each is split
   from its public TRAIN file only: a balanced validation set of --val examples (seeded, fixed), and the remaining
   rows as the training file the pool is drawn from. The tasks' dev/test files are never read here.
2. Each method runs its preset (configs/sst2_<method>.yaml) at every learning rate of the grid: the preset's lr times
   --factors. Private methods run at the middle posterior level --posterior (matched per mechanism exactly as in
   benchmarks/frontier.py), one seed (--seed).
3. The chosen lr maximises the mean over tuning tasks of the validation accuracy gain over zero-shot; ties go to the
   smaller lr. The script writes the grid and the choice; the presets in configs/ carry the chosen values and name
   this file.

Usage: python benchmarks/tune_presets.py [--only mezo,...] [--factors 0.3,1,3,10,30] [--posterior 0.88] [--val 500]
           [--jobs 1] [--runs runs/tune] [--out benchmarks/results/tune_presets.json] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

from frontier import PRESETS, REPO, TASKS, run_all  # benchmarks/frontier.py: presets, matching, one run

from privtune.paths import data_dir

TUNING = {"sst2-paper": "sst2/train.tsv", "agnews": "agnews/train.tsv"}
SPLIT_SEED = 20261201  # fixes the validation split once for everyone


def split_task(task: str, out: Path, n_val: int) -> list[str]:
    """Write <out>/<task>/{train,val}.tsv from the task's public train file; return the overrides that use them."""
    src = data_dir() / TUNING[task]
    header, *rows = src.read_text(encoding="utf-8").splitlines()  # lines copied verbatim: no re-quoting
    label = header.split("\t").index("label")
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r.split("\t")[label], []).append(i)
    rng = random.Random(SPLIT_SEED)
    per = n_val // len(by_label)
    val = sorted(i for idx in by_label.values() for i in rng.sample(idx, per))
    chosen = set(val)
    d = out / task
    d.mkdir(parents=True, exist_ok=True)
    for name, keep in (("val.tsv", val), ("train.tsv", [i for i in range(len(rows)) if i not in chosen])):
        (d / name).write_text("\n".join([header, *(rows[i] for i in keep)]) + "\n", encoding="utf-8")
    return [*TASKS[task], f"task.train_path={d / 'train.tsv'}", f"task.eval_path={d / 'val.tsv'}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PRESETS))
    ap.add_argument("--factors", default="0.3,1,3,10,30")
    ap.add_argument("--factors-for", action="append", default=[], metavar="TASK=F,F",
                    help="another grid for one tuning task (the choice uses the lrs every task ran)")
    ap.add_argument("--posterior", type=float, default=0.88)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--runs", default="runs/tune")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tune_presets.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    runs_dir = Path(args.runs)
    grids = {t: [float(x) for x in args.factors.split(",")] for t in TUNING}
    for item in args.factors_for:
        task, _, fs = item.partition("=")
        if task not in TUNING:
            ap.error(f"--factors-for: unknown tuning task {task!r} (choose from {list(TUNING)})")
        grids[task] = [float(x) for x in fs.split(",")]
    todo = []
    for task in TUNING:
        task_over = split_task(task, runs_dir / "data", args.val)
        for m in args.only.split(","):
            preset, at = PRESETS[m]
            base_lr = yaml.safe_load((REPO / preset).read_text())["method"]["lr"]
            for f in grids[task]:
                lr = float(f"{base_lr * f:.3g}")
                todo.append({"mechanism": m, "level": args.posterior if at else None, "seed": args.seed,
                             "task": task, "lr": lr, "tag": f"{task}/{m}_lr{lr:g}", "preset": preset,
                             "overrides": [*task_over, *(at(args.posterior) if at else []), f"method.lr={lr}",
                                           f"train.seed={args.seed}", *args.overrides]})
    for task in TUNING:  # run dirs are <runs>/<task>/<method>_lr<lr>
        (runs_dir / task).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = [{**row, "task": r["task"], "lr": r["lr"]}
            for r, row in zip(todo, run_all(todo, runs_dir, args.jobs, group=lambda r: (r["task"], r["seed"])))]
    choice = {}
    for m in dict.fromkeys(r["mechanism"] for r in runs):
        gains = {}
        for lr in dict.fromkeys(r["lr"] for r in runs if r["mechanism"] == m):
            g = {r["task"]: r["accuracy"] - r["initial_accuracy"] for r in runs if r["mechanism"] == m and r["lr"] == lr}
            if len(g) == len(TUNING):  # only a learning rate every tuning task ran can be chosen
                gains[lr] = statistics.mean(g.values())
        best = max(gains.values())
        choice[m] = {"lr": min(lr for lr, g in gains.items() if g == best), "mean_gain": best,
                     "gains": {f"{lr:g}": round(g, 4) for lr, g in gains.items()}}
    result = {"benchmark": "tune_presets", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "protocol": __doc__.split("Protocol:")[1].split("Usage:")[0].strip(), "posterior": args.posterior,
              "val_examples": args.val, "split_seed": SPLIT_SEED, "wall_s": round(time.time() - t0, 1),
              "cpu_s_total": round(sum(r["cpu_s"] for r in runs), 1), "choice": choice, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(choice, indent=2))


if __name__ == "__main__":
    main()
