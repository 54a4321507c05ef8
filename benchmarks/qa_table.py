"""Multiple-choice and generative QA on SmolLM2-135M: zero-shot and each method's shipped preset, over seeds.

For each task (SQuAD: greedy-decoded F1 / exact match; ARC-Easy: accuracy over the choices' summed log-probs) every
mechanism runs its preset configs/<task>_<mechanism>.yaml unchanged, except the seed (train.seed = s; the secret key
of seed s is PRIVTUNE_SECRET_SEED=1000+s) and any overrides given on the command line. Zero-shot is every run's step-0
eval (the same model on the same eval set). Runs are plain `privtune train` processes (benchmarks/frontier.py's
runner: a finished run with the same command is reused, so an interrupted table resumes); cpu_s is the process's
user+system CPU time.

--transfer openbookqa (with --task arc_easy): also evaluate every trained model on an eval-only multiple-choice task,
as the offsite papers do for OpenBookQA: the run is exported (`privtune export`, a plain transformers folder) and
scored by `privtune eval --model FOLDER --task openbookqa` (the target task's own choice score), beside the base
model's zero-shot on the same split. Those rows go under `transfer`.

Usage: python benchmarks/qa_table.py --task squad|arc_easy [--seeds 0,1,2] [--only mezo,paczero-zpl,dpzero,dpsgd-lora]
           [--runs DIR] [--out FILE] [--jobs N] [--transfer openbookqa] [key=value ...]
Writes benchmarks/results/qa_<task>.json: `rows` (method, metric, accuracy_mean = the metric's mean, accuracy_std,
seeds, cpu_s, and the guarantee), `runs`, and with --transfer `transfer`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import frontier  # benchmarks/frontier.py: the runner, the kept-run rule and the rows

REPO = Path(__file__).resolve().parents[1]

TASKS = ("squad", "arc_easy")
MECHANISMS = ("mezo", "paczero-zpl", "dpzero", "dpsgd-lora")
TRANSFER = {"arc_easy": ("openbookqa",)}  # --task: the eval-only tasks its trained models may be scored on
BASE = "smollm2-135m"


def preset(task: str, mechanism: str) -> str:
    return f"configs/{task}_{mechanism.replace('-', '_')}.yaml"


def plan(task: str, mechanisms: list[str], seeds: list[int], extra: list[str]) -> list[dict]:
    """Every run. The zero-shot number is the same for all of them (the base model on the same eval set), so only
    the first run evaluates at step 0 (an eval decodes every SQuAD question and scores all 2,376 ARC-Easy ones)."""
    out = []
    for m in mechanisms:
        for s in seeds:
            skip = bool(out)
            out.append({"mechanism": m, "level": None, "seed": s, "tag": f"{m}_s{s}", "preset": preset(task, m),
                        "overrides": [f"train.seed={s}", *(["train.initial_eval=false"] if skip else []), *extra]})
    return out


def ci95(mean: float, n: int) -> float:
    """A conservative 95% half-width for a mean over n eval questions of a score in [0, 1] (accuracy, F1, exact
    match): such a score's variance is at most μ(1 − μ), with equality for a 0/1 score, so 1.96·√(μ(1 − μ)/n) bounds
    the normal interval without the per-question scores (the runs keep only their means)."""
    return 1.96 * math.sqrt(max(mean * (1.0 - mean), 0.0) / n)


def rows(runs: list[dict]) -> list[dict]:
    """frontier.rows_of, plus each row's conservative 95% interval over the eval questions (`ci95`, see ci95), and
    for a generation task the mean exact match beside the F1 (`accuracy_mean`)."""
    out = frontier.rows_of(runs)
    n = runs[0]["eval_examples"] if runs else 0
    for row in out:
        row["ci95"] = ci95(row["accuracy_mean"], n) if n else None
    if runs and runs[0]["metric"] == "f1":
        for row in out:
            if row["method"] == "zero-shot":
                row["exact_match_mean"] = runs[0]["initial_exact_match"]
            else:
                em = [r["exact_match"] for r in runs if r["mechanism"] == row["method"]]
                row["exact_match_mean"] = sum(em) / len(em)
    return out


def eval_model(model: str | Path, task: str, out: Path, cpu_before: float = 0.0) -> dict:
    """`privtune eval --model MODEL --task TASK --out OUT` in its own process (one thread), with its CPU seconds plus
    `cpu_before` (what producing MODEL cost); a result already in `out` is reused."""
    if not out.exists():
        cpu, _ = frontier.timed([sys.executable, "-m", "privtune", "eval", "--model", str(model), "--task", task,
                                 "--out", str(out)])
        out.write_text(json.dumps({**json.loads(out.read_text()), "cpu_s": round(cpu + cpu_before, 1)}, indent=2))
    return json.loads(out.read_text())


def transfer_one(run: dict, task: str) -> dict:
    """One trained run scored on `task`: exported to a temporary folder beside it, evaluated, the folder removed."""
    run_dir = Path(run["run_dir"])
    out = run_dir.with_name(f"{run_dir.name}_{task}.json")
    if not out.exists() or out.stat().st_mtime < (run_dir / "eval.json").stat().st_mtime:
        out.unlink(missing_ok=True)
        folder = run_dir.with_name(f"{run_dir.name}_export")
        shutil.rmtree(folder, ignore_errors=True)
        cpu, _ = frontier.timed([sys.executable, "-m", "privtune", "export", str(run_dir), "--out", str(folder)])
        try:
            res = eval_model(folder, task, out, cpu_before=cpu)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        res = json.loads(out.read_text())
    return {"mechanism": run["mechanism"], "seed": run["seed"], "accuracy": res["accuracy"], "total": res["total"],
            "choice_score": res["choice_score"], "cpu_s": res["cpu_s"]}


def transfer(runs: list[dict], task: str, runs_dir: Path, jobs: int, base_model: str = BASE) -> dict:
    """Every run's model and the base model on `task`'s eval split: rows as `rows` (zero-shot with its 95% interval,
    each mechanism's mean and sd over seeds) and the per-run scores. cpu_s counts export and eval."""
    base = eval_model(base_model, task, runs_dir / f"zero_shot_{task}.json")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        scored = list(pool.map(lambda r: transfer_one(r, task), runs))
    n = base["total"]
    out = [{"method": "zero-shot", "accuracy_mean": base["accuracy"], "ci95": ci95(base["accuracy"], n),
            "seeds": 1, "cpu_s": base["cpu_s"]}]
    for m in dict.fromkeys(r["mechanism"] for r in scored):
        accs = [r["accuracy"] for r in scored if r["mechanism"] == m]
        out.append({"method": m, "accuracy_mean": statistics.mean(accs),
                    "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
                    "cpu_s": round(statistics.mean(r["cpu_s"] for r in scored if r["mechanism"] == m), 1)})
    return {"task": task, "eval_examples": n, "choice_score": base["choice_score"], "rows": out, "runs": scored}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=",".join(MECHANISMS))
    ap.add_argument("--runs", default=None, help="run dirs (default runs/qa_<task>)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/qa_<task>.json")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    ap.add_argument("--transfer", default=None, help="also score every trained model on this eval-only task "
                    "(arc_easy: openbookqa)")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = ap.parse_args()
    if args.transfer is not None and args.transfer not in TRANSFER.get(args.task, ()):
        ap.error(f"--transfer: {args.task} models transfer to {list(TRANSFER.get(args.task, ())) or 'no task'}")
    mechanisms = args.only.split(",")
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown:
        ap.error(f"--only: unknown mechanism(s) {unknown}; known: {list(MECHANISMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = Path(args.runs or f"runs/qa_{args.task}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = frontier.run_all(plan(args.task, mechanisms, seeds, args.overrides), runs_dir, jobs=args.jobs)
    result = {"benchmark": "qa_table", "task": args.task, "model": "SmolLM2-135M-Instruct",
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "metric": runs[0]["metric"],
              "threads_per_run": frontier.THREADS, "seeds": seeds, "wall_s": round(time.time() - t0, 1),
              "cpu_s_total": round(sum(r["cpu_s"] for r in runs), 1), "rows": rows(runs), "runs": runs}
    if args.transfer:
        result["transfer"] = transfer(runs, args.transfer, runs_dir, args.jobs)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"qa_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}: {len(runs)} runs, {result['cpu_s_total'] / 60:.1f} CPU-minutes", file=sys.stderr)


if __name__ == "__main__":
    main()
