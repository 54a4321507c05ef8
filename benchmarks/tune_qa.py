"""Step sizes for the QA presets, chosen on validation sets split from the tasks' TRAIN files only.

The classification presets' step sizes (configs/sst2_*.yaml, benchmarks/tune_presets.py) do not transfer to the
multi-token losses: there a final-norm gain moves full-vocabulary log-probs at several answer positions, and MeZO at
the classification lr 0.3 diverged (SQuAD: answer NLL ≈ 1 nat per token at step 0, a 15.6-nat mean train loss over
steps 1–50). So,
per task (SQuAD, ARC-Easy), with the preset's pool (256 train questions, train.seed 0) and a validation set of --val
other train questions (a seeded sample; SQuAD dev and ARC test are never read):
  MeZO runs --steps steps at each lr of --grid (in process, the preset's batch and ε), and the validation loss (the
  training objective, teacher-forced: answer NLL / CE over the choices; plus accuracy for multiple choice) is read
  every --every steps. The chosen lr has the lowest final validation loss (--criterion loss), or the highest final
  validation metric (--criterion metric: greedy F1 for generation, accuracy for multiple choice; a teacher-forced
  answer NLL can fall while free-running decoding breaks); ties go to the smaller lr.
The other methods follow MeZO's change: DPZero keeps its classification ratio to MeZO (lr 2× MeZO's), PACZero's
sign step (lr per released sign) and DP-LoRA's Adam are scale-free in the loss and keep their classification values.
--config tunes another ZO method's preset the same way (e.g. configs/squad_paczero_zpl.yaml: its sign step); this is
a sweep on public data outside the pool, so it spends no privacy, and a method that needs a secret key gets a fixed
throwaway one (TUNE_KEY), never a run's.

Usage: python benchmarks/tune_qa.py --task squad|arc_easy [--grid 0.01,0.03,0.1] [--steps 100] [--val 128]
           [--criterion loss|metric] [--config FILE (default configs/<task>_mezo.yaml)] [key=value ...]
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
from privtune.methods.base import method_class
from privtune.run.keystore import SecretKey
from privtune.run.setup import encode_examples, prepare
from privtune.trainable import load_trainable_state, trainable_state
from privtune.zo.sums import score

REPO = Path(__file__).resolve().parents[1]
VAL_SEED = 20261202
TUNE_KEY = 20261203  # the throwaway secret of a tuned method that needs one (PACZero's J): public, like the data


def chosen_lr(curves: dict[str, list[dict]], criterion: str, metric: str) -> str:
    """The lr (a key of `curves`) whose last point has the lowest val_loss (criterion "loss") or the highest `metric`
    (criterion "metric"); values equal to 4 decimals tie, and a tie goes to the smaller lr."""
    if criterion == "loss":
        final = {lr: c[-1]["val_loss"] for lr, c in curves.items()}
    else:  # the metric, negated: the lowest value still wins
        final = {lr: -c[-1][metric] for lr, c in curves.items()}
    return min(final, key=lambda lr: (round(final[lr], 4), float(lr)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["squad", "arc_easy"])
    ap.add_argument("--grid", default="0.01,0.03,0.1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--criterion", choices=["loss", "metric"], default="loss",
                    help="choose the lr by the final validation loss, or by its greedy F1 / accuracy")
    ap.add_argument("--config", default=None, help="the ZO config to tune (default configs/<task>_mezo.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value applied to the config (e.g. task.min_new_tokens=0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = M.load_config(args.config or REPO / "configs" / f"{args.task}_mezo.yaml", args.overrides)
    setup = prepare(cfg, need_eval=False)
    rest = sorted(set(range(len(setup.task.train))) - set(setup.pool_index))
    val_idx = sorted(np.random.default_rng(VAL_SEED).choice(rest, size=args.val, replace=False).tolist())
    valset = encode_examples(setup, [setup.task.train[i] for i in val_idx])  # packed, with its prompts to decode
    mc, gen = setup.task.type == "multiple_choice", setup.task.type == "generation"
    base = trainable_state(setup.sel)

    def measure() -> dict:
        row = {"val_loss": float(setup.engine.losses(valset).double().mean())}
        if mc:
            row["val_accuracy"] = score(setup.engine, valset)["accuracy"]
        elif gen and args.criterion == "metric":
            row["val_f1"] = score(setup.engine, valset)["f1"]
        return row

    t0 = time.time()
    curves = {}
    zero = measure()
    print(json.dumps({"lr": 0.0, "step": 0, **zero}), flush=True)
    cls = method_class(cfg.method.name)
    for lr in [float(x) for x in args.grid.split(",")]:
        load_trainable_state(setup.sel, base)
        method = cls(cfg.method.model_copy(update={"lr": lr}), setup.engine, setup.pool, cfg.train.seed, args.steps,
                     secret=SecretKey(TUNE_KEY) if cls.needs_secret else None)
        curve = []
        for t in range(args.steps):
            rel = method.step(t)
            method.apply(rel, method.lr_at(t))
            if (t + 1) % args.every == 0:
                curve.append({"step": t + 1, **measure()})
                print(json.dumps({"lr": lr, **curve[-1]}), flush=True)
        curves[str(lr)] = curve
    best = chosen_lr(curves, args.criterion, "val_accuracy" if mc else "val_f1")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"tune_qa_{args.task}.json")
    out.write_text(json.dumps({
        "benchmark": "tune_qa", "task": args.task, "command": " ".join(["tune_qa.py", *sys.argv[1:]]),
        "model": cfg.model.name, "method": cfg.method.model_dump(exclude={"lr"}),
        "trainable": cfg.trainable.model_dump(), "pool_size": cfg.task.pool_size, "overrides": args.overrides,
        "batch_size": getattr(cfg.method, "batch_size", None), "eps": cfg.method.eps,
        "lr_schedule": cfg.method.lr_schedule,
        "steps": args.steps, "criterion": args.criterion,
        "validation": {"examples": args.val, "from": "train split, outside the pool", "seed": VAL_SEED},
        "zero_shot": zero, "curves": curves, "chosen_lr": float(best), "wall_s": round(time.time() - t0, 1),
    }, indent=2) + "\n")
    print(f"wrote {out}: chosen lr {best}", file=sys.stderr)


if __name__ == "__main__":
    main()
