"""An audit that bites: a memorising first-order run next to MeZO and the private presets on the same pool.

The positive control is configs/sst2_fo_memorise.yaml (fo, LoRA on the top blocks, 200 examples + 200 PII canaries,
many epochs). The same pool and canaries (task.pool_size=200, task.canaries=200, same seed, so the same examples
and the same coin flips) then go through MeZO and each private method's shipped preset at the posterior level
--posterior (matched per mechanism as in benchmarks/frontier.py). Every run is audited with `privtune audit`
(loss, conf, zlib, Min-K%, Min-K%++, ref attacks, pool vs held-out; the one-run canary audit): the table puts each
run's best attack AUC, TPR at 1% FPR, measured posterior and canary ε lower bound beside its proven bound.

The attacker's reference: for each run the attacker trains a shadow run, the same recipe on another pool draw
(train.seed --shadow-seed), and the ref attack calibrates against it (`privtune audit --reference`). A shadow removes
the fine-tuning's general gain, which a memorising run also gives the non-members it classifies well. --shadow-seed -1
keeps the base model as the reference (no shadow runs).

--task squad does the same on SQuAD with configs/squad_fo_memorise.yaml and the QA presets (configs/squad_*.yaml):
the attacks read the answer's tokens, and the canaries are QA canaries.

Usage: python benchmarks/audit_contrast.py [--task sst2|squad] [--only fo-memorise,mezo,paczero-zpl,...]
           [--posterior 0.88] [--shadow-seed 1] [--attacks loss,conf,ref] [--runs runs/audit_contrast]
           [--out benchmarks/results/audit_contrast.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from frontier import PRESETS, REPO, THREADS, run_one  # benchmarks/frontier.py: presets, matching, one run

SAME_POOL = ["task.pool_size=200", "task.canaries=200", "train.seed=0"]
# Per task: each mechanism's preset and how a posterior level becomes overrides (frontier.PRESETS), plus what every run
# of the task adds. sst2: the classification presets; squad: the QA presets (configs/squad_*), whose evals decode,
# so they score the first 100 dev questions and skip the step-0 eval.
RUNS = {
    "sst2": {"fo-memorise": ("configs/sst2_fo_memorise.yaml", None), **PRESETS},
    "squad": {"fo-memorise": ("configs/squad_fo_memorise.yaml", None),
              **{m: (f"configs/squad_{m.replace('-', '_')}.yaml", PRESETS[m][1])
                 for m in ("mezo", "paczero-zpl", "dpzero")},
              "dpsgd": ("configs/squad_dpsgd_lora.yaml", PRESETS["dpsgd"][1])},
}
EXTRA = {"sst2": [], "squad": ["task.eval_limit=100", "train.initial_eval=false"]}
# batch sizes on the 200-example pool: full batches where the preset takes the whole pool (fo, MeZO), a quarter where
# it samples (DP: the preset's 250 of 1000, so the same sampling rate). The QA presets' batches (32 of 256) are kept.
BATCH = {"sst2": {"fo": 200, "mezo": 200, "dpzero": 50, "dpzo": 50, "dpsgd": 50}, "squad": {}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", choices=sorted(RUNS))
    ap.add_argument("--only", default=None, help="mechanisms (default: every one the task has)")
    ap.add_argument("--posterior", type=float, default=0.88)
    ap.add_argument("--attacks", default=None, help="privtune audit --attacks (default: all)")
    ap.add_argument("--shadow-seed", type=int, default=1, help="train.seed of the shadow runs (-1: none)")
    ap.add_argument("--runs", default=None, help="default runs/audit_contrast (sst2), runs/audit_contrast_<task>")
    ap.add_argument("--out", default=None, help="default benchmarks/results/audit_contrast[_<task>].json")
    args = ap.parse_args()
    suffix = "" if args.task == "sst2" else f"_{args.task}"
    runs_dir = Path(args.runs or f"runs/audit_contrast{suffix}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"audit_contrast{suffix}.json")
    runs, batch = RUNS[args.task], BATCH[args.task]
    rows = []
    for name in (args.only.split(",") if args.only else runs):
        preset, at = runs[name]
        same = [] if name == "fo-memorise" else [*SAME_POOL, *EXTRA[args.task]]  # the memorising config says it all
        if name in batch:  # the preset's batch is drawn from a 1000-example pool: scale it to this one
            same = [*same, f"method.batch_size={batch[name]}"]
        r = {"mechanism": name, "level": args.posterior if at else None, "seed": 0, "tag": name, "preset": preset,
             "overrides": [*same, *(at(args.posterior) if at else [])]}
        row = run_one(r, runs_dir)
        reference, shadow_cpu = [], None
        if args.shadow_seed >= 0:
            shadow = run_one({**r, "tag": f"{name}-shadow", "overrides": [*r["overrides"],
                                                                         f"train.seed={args.shadow_seed}"]}, runs_dir)
            reference, shadow_cpu = ["--reference", shadow["run_dir"]], shadow["cpu_s"]
        t0 = time.time()
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PRIVTUNE_SECRET_SEED": "1000"}
        audit_path = Path(row["run_dir"]) / "audit.json"
        want = str(Path(reference[1]).resolve()) if reference else "base model"
        if not (row.get("reused") and audit_path.exists()
                and json.loads(audit_path.read_text()).get("reference") == want):  # a kept run keeps its audit
            attacks = ["--attacks", args.attacks] if args.attacks else []
            subprocess.run([sys.executable, "-m", "privtune", "audit", "-q", row["run_dir"], *reference, *attacks],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        audit = json.loads(audit_path.read_text())
        s = audit["summary"]
        row.update({"audit_s": round(time.time() - t0, 1), "reference": audit["reference"],
                    "shadow_cpu_s": shadow_cpu, "threat_model": audit["threat_model"],
                    "best_attack": s["best_attack"], "auc": s["auc"],
                    "auc_ci": audit["attacks"][s["best_attack"]].get("auc_ci"),
                    "tpr_at_0.01_fpr": s["tpr_at_0.01_fpr"], "measured_posterior": s["posterior_success"],
                    "canary_epsilon_lower_bound": s["epsilon_lower_bound"],
                    "canary_auc": (audit.get("canary") or {}).get("auc"), "violation": audit["violation"]})
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("mechanism", "accuracy", "mia_posterior_bound", "auc",
                                              "canary_epsilon_lower_bound", "violation")}), flush=True)
    result = {"benchmark": "audit_contrast", "task": args.task,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "posterior": args.posterior, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
