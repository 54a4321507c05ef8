"""Step sizes for the QA presets, chosen on validation sets split from the tasks' TRAIN files only.

The classification presets' step sizes (configs/sst2_*.yaml, benchmarks/tune_presets.py) do not transfer to the
multi-token losses: there a final-norm gain moves full-vocabulary log-probs at several answer positions, and MeZO at
the classification lr 0.3 diverged (SQuAD: answer NLL ≈ 1 nat per token at step 0, a 15.6-nat mean train loss over
steps 1–50). So,
per task (SQuAD, ARC-Easy), with the preset's pool (256 train questions, train.seed 0) and a validation set of --val
other train questions (a seeded sample; SQuAD dev and ARC test are never read):
  MeZO runs --steps steps at each lr of --grid (in process, the preset's batch and ε), and the validation loss (the
  training objective, teacher-forced: answer NLL / CE over the choices; plus accuracy for multiple choice) is read
  every --every steps. The chosen lr has the lowest final validation loss; ties go to the smaller lr.
The other methods follow MeZO's change: DPZero keeps its classification ratio to MeZO (lr 2× MeZO's), PACZero's
sign step (lr per released sign) and DP-LoRA's Adam are scale-free in the loss and keep their classification values.

Usage: python benchmarks/tune_qa.py --task squad|arc_easy [--grid 0.01,0.03,0.1] [--steps 100] [--val 128]
           [--config FILE (default configs/<task>_mezo.yaml)]
Writes benchmarks/results/tune_qa_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from privtune import methods as M
from privtune.config import load_yaml
from privtune.methods.mezo import Mezo
from privtune.run.setup import encode_examples, prepare
from privtune.trainable import load_trainable_state, trainable_state
from privtune.zo.sums import score

REPO = Path(__file__).resolve().parents[1]
VAL_SEED = 20261202


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["squad", "arc_easy"])
    ap.add_argument("--grid", default="0.01,0.03,0.1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--config", default=None, help="the MeZO config to tune (default configs/<task>_mezo.yaml)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_yaml(args.config or REPO / "configs" / f"{args.task}_mezo.yaml")
    cfg = M.build_config(data)
    setup = prepare(cfg, need_eval=False)
    rest = sorted(set(range(len(setup.task.train))) - set(setup.pool_index))
    val_idx = sorted(np.random.default_rng(VAL_SEED).choice(rest, size=args.val, replace=False).tolist())
    valset = encode_examples(setup, [setup.task.train[i] for i in val_idx])
    mc = setup.task.type == "multiple_choice"
    base = trainable_state(setup.sel)

    def measure() -> dict:
        row = {"val_loss": float(setup.engine.losses(valset).double().mean())}
        if mc:
            row["val_accuracy"] = score(setup.engine, valset)["accuracy"]
        return row

    t0 = time.time()
    curves = {}
    zero = measure()
    print(json.dumps({"lr": 0.0, "step": 0, **zero}), flush=True)
    for lr in [float(x) for x in args.grid.split(",")]:
        load_trainable_state(setup.sel, base)
        method = Mezo(cfg.method.model_copy(update={"lr": lr}), setup.engine, setup.pool, cfg.train.seed, args.steps)
        curve = []
        for t in range(args.steps):
            rel = method.step(t)
            method.apply(rel, method.lr_at(t))
            if (t + 1) % args.every == 0:
                curve.append({"step": t + 1, **measure()})
                print(json.dumps({"lr": lr, **curve[-1]}), flush=True)
        curves[str(lr)] = curve
    final = {lr: c[-1]["val_loss"] for lr, c in curves.items()}
    best = min(final, key=lambda lr: (round(final[lr], 4), float(lr)))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"tune_qa_{args.task}.json")
    out.write_text(json.dumps({
        "benchmark": "tune_qa", "task": args.task, "command": " ".join(["tune_qa.py", *sys.argv[1:]]),
        "model": cfg.model.name, "trainable": cfg.trainable.model_dump(), "pool_size": cfg.task.pool_size,
        "batch_size": cfg.method.batch_size, "eps": cfg.method.eps, "lr_schedule": cfg.method.lr_schedule,
        "steps": args.steps,
        "validation": {"examples": args.val, "from": "train split, outside the pool", "seed": VAL_SEED},
        "zero_shot": zero, "curves": curves, "chosen_lr": float(best), "wall_s": round(time.time() - t0, 1),
    }, indent=2) + "\n")
    print(f"wrote {out}: chosen lr {best}", file=sys.stderr)


if __name__ == "__main__":
    main()
