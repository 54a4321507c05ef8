"""SmolLM2-135M on SST-2, every method at matched MIA-posterior bounds (0.8808 ↔ ε = 2 ↔ 0.3278 nats; 0.9975 ↔ ε = 6
↔ 0.6758 nats, δ = 1e-5), over seeds: MeZO (no guarantee), PACZero-ZPL, PACZero-MI, DPZero, DP-ZO and DP-LoRA (DP-SGD,
Opacus). PACZero-MI's budgets come from privtune.privacy.matched_budget (the exact match rounded down).

Every run is a normal `privtune train` process (its run dir under --runs), built from configs/sst2_*.yaml with dotted
overrides; this script only loops, measures the process's peak RSS (wait4) and tabulates. The secret key of run
seed s is PRIVTUNE_SECRET_SEED=1000+s so that the table is reproducible (J and the noise differ across seeds).
--steps overrides every config's train.steps (DP noise is calibrated for the steps actually run); by default each
config's own steps are used.

Usage: python benchmarks/privacy_table_sst2.py [--seeds 0,1,2] [--steps N] [--runs runs/privacy_sst2]
                                               [--only mezo,zpl,mi_e2,...] [--out FILE] [key=value ...]
Writes JSON (default benchmarks/results/privacy_table_sst2.json): per run accuracy, guarantee, ε / MI, posterior
bound, unanimity rate, wall time, peak RSS; per method mean ± std.
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
from pathlib import Path

from privtune.privacy import matched_budget

REPO = Path(__file__).resolve().parents[1]
DELTA = 1e-5  # the δ of the DP configs, so of the ε that PACZero-MI is matched to
METHODS = {
    "mezo": ("configs/sst2_mezo.yaml", []),
    "zpl": ("configs/sst2_paczero_zpl.yaml", []),
    "mi_e2": ("configs/sst2_paczero_mi.yaml", [f"method.budget={matched_budget(2.0, DELTA)}"]),
    "mi_e6": ("configs/sst2_paczero_mi.yaml", [f"method.budget={matched_budget(6.0, DELTA)}"]),
    "dpzero_e2": ("configs/sst2_dpzero.yaml", ["method.epsilon=2"]),
    "dpzero_e6": ("configs/sst2_dpzero.yaml", ["method.epsilon=6"]),
    "dpzo_e2": ("configs/sst2_dpzo.yaml", ["method.epsilon=2"]),
    "dpzo_e6": ("configs/sst2_dpzo.yaml", ["method.epsilon=6"]),
    "dplora_e2": ("configs/sst2_dpsgd_lora.yaml", ["method.epsilon=2"]),
    "dplora_e6": ("configs/sst2_dpsgd_lora.yaml", ["method.epsilon=6"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--runs", default="runs/privacy_sst2")
    ap.add_argument("--only", default=",".join(METHODS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "privacy_table_sst2.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    for name in args.only.split(","):
        path, extra = METHODS[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = Path(args.runs) / f"{name}_s{seed}"
            if out.exists():
                shutil.rmtree(out)
            steps = [f"train.steps={args.steps}"] if args.steps else []
            cmd = [sys.executable, "-m", "privtune", "train", "-q", "--config", str(REPO / path), *extra,
                   f"train.seed={seed}", *steps, f"out_dir={out}", *args.overrides]
            env = {**os.environ, "PRIVTUNE_SECRET_SEED": str(1000 + seed)}
            t0 = time.time()
            proc = subprocess.Popen(cmd, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"run failed: {' '.join(cmd)}")
            res = json.loads((out / "eval.json").read_text())
            led = json.loads((out / "privacy.json").read_text())
            row = {"method": name, "seed": seed, "steps": res["steps"], "accuracy": res["accuracy"],
                   "initial_accuracy": res.get("initial_accuracy"), "wall_s": round(time.time() - t0, 1),
                   "train_wall_s": res.get("wall_time_s"), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                   "guarantee": led.get("guarantee"), "epsilon": led.get("epsilon"), "delta": led.get("delta"),
                   "mi_nats": led.get("mi_nats"), "mi_spent": led.get("spent"),
                   "mia_posterior_bound": led.get("mia_posterior_bound"),
                   "unanimity_rate": led.get("unanimity_rate"), "run_dir": str(out)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        accs = [r["accuracy"] for r in rows if r["method"] == name]
        un = [r["unanimity_rate"] for r in rows if r["method"] == name and r["unanimity_rate"] is not None]
        summary[name] = {"n": len(accs), "accuracy_mean": statistics.mean(accs),
                         "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "unanimity_rate_mean": statistics.mean(un) if un else None,
                         "wall_s_mean": statistics.mean(r["wall_s"] for r in rows if r["method"] == name),
                         "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows if r["method"] == name),
                         "mia_posterior_bound": next(r["mia_posterior_bound"] for r in rows if r["method"] == name)}
    result = {"benchmark": "privacy_table_sst2", "steps": args.steps, "command": " ".join(sys.argv), "overrides": args.overrides, "rows": rows,
              "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
