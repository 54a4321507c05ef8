"""SmolLM2-135M on SST-2: MeZO vs PACZero-ZPL vs PACZero-MI (0.33 and 0.68 nats) at equal steps, over seeds.

Every run is a normal `privtune train` run (its run dir under --runs), built from configs/sst2_paczero_*.yaml and
configs/sst2_mezo.yaml with dotted overrides; this script only loops and tabulates. The secret key of run
seed s is PRIVTUNE_SECRET_SEED=s so that the table is reproducible (J differs across seeds).

Usage: python benchmarks/paczero_sst2.py [--seeds 0,1,2] [--steps 1000] [--runs runs/paczero_sst2]
                                         [--only mezo,zpl,mi033,mi068] [key=value ...]
Writes JSON (default benchmarks/results/paczero_sst2.json): per run accuracy, unanimity rate, spent MI, posterior
bound, wall time; per method mean ± std.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "mezo": ("configs/sst2_mezo.yaml", []),
    "zpl": ("configs/sst2_paczero_zpl.yaml", []),
    "mi033": ("configs/sst2_paczero_mi.yaml", ["method.budget=0.33"]),
    "mi068": ("configs/sst2_paczero_mi.yaml", ["method.budget=0.68"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--runs", default="runs/paczero_sst2")
    ap.add_argument("--only", default=",".join(METHODS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "paczero_sst2.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    from privtune import config as C
    from privtune.train import train

    torch.set_num_threads(2)
    rows = []
    for name in args.only.split(","):
        path, extra = METHODS[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = Path(args.runs) / f"{name}_s{seed}"
            if out.exists():
                shutil.rmtree(out)
            os.environ["PRIVTUNE_SECRET_SEED"] = str(1000 + seed)
            cfg = C.load(REPO / path, [*extra, f"train.seed={seed}", f"train.steps={args.steps}",
                                       f"out_dir={out}", *args.overrides])
            t0 = time.time()
            res = train(cfg)
            led = json.loads((out / "privacy.json").read_text())
            row = {"method": name, "seed": seed, "steps": args.steps, "accuracy": res["accuracy"],
                   "initial_accuracy": res.get("initial_accuracy"), "wall_s": round(time.time() - t0, 1),
                   "guarantee": led.get("guarantee"), "mi_spent": led.get("spent"),
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
                         "wall_s_mean": statistics.mean(r["wall_s"] for r in rows if r["method"] == name)}
    result = {"benchmark": "paczero_sst2", "steps": args.steps, "overrides": args.overrides, "rows": rows,
              "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
