"""PACZero step cost: versus a MeZO step on the same N examples, and versus naive per-subset evaluation.

  vs_mezo  = PACZero step (N examples, M subsets: union passes + clipping + subset means + release + update)
             ÷ MeZO step on the same N examples (same two passes + update)          target ≤ 1.10
  vs_naive = naive step (two passes per subset, M subsets of ~N/2 examples) ÷ PACZero step    target ≥ 50×
             The naive cost is measured on `--naive-subsets` subsets and scaled by M / naive_subsets (stated in
             the JSON), since running all M subsets on the real model takes M times a full step.

Usage: python benchmarks/paczero_step.py [--model smollm2-135m|tiny] [--kind top_layers:1] [--n 1000] [--m 128]
Writes JSON (default benchmarks/results/paczero_step.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from privtune import methods as M
from privtune.methods.mezo import Mezo
from privtune.methods.paczero import PACZero, subset_means
from privtune.run.keystore import SecretKey
from privtune.run.setup import prepare
from privtune.zo.seeds import direction_seed
from privtune.zo.sums import zo_scalars


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kind", default="top_layers:1")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--mode", default="mi", choices=["zpl", "mi"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-subsets", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "paczero_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = {"model": {"name": args.model, "device": "cpu"}, "task": {"name": "sst2", "pool_size": args.n},
            "trainable": {"kind": args.kind}, "train": {"micro_batch": 64}}
    pcfg = M.build_config({**base, "method": {"name": "paczero", "mode": args.mode, "subsets": args.m, "budget": 0.33}})
    setup = prepare(pcfg, need_eval=False)
    steps = 1000
    pac = PACZero(pcfg.method, setup.engine, setup.pool, 0, steps, secret=SecretKey(1))
    mcfg = M.build_config({**base, "method": {"name": "mezo", "batch_size": args.n}}).method
    mezo = Mezo(mcfg, setup.engine, setup.pool, 0, steps)
    lr = 0.0  # same work, weights unchanged, so every repeat measures the same state

    def run(method, t):
        rel = method.step(t)
        setup.engine.apply_update(rel.updates, lr)

    def naive(t, n_subsets):
        """What PACZero avoids: two passes per subset over that subset's examples."""
        seed = direction_seed(0, t)
        for m in range(n_subsets):
            idx = np.flatnonzero(pac.member[:, m]).tolist()
            lp, lm = setup.engine.pair_losses(setup.pool, idx, seed, pcfg.method.eps)
            zo_scalars(lp, lm, pcfg.method.eps).clamp(-pcfg.method.clip, pcfg.method.clip).mean()
        setup.engine.apply_update([(seed, 0.0)], lr)

    run(pac, 0), run(mezo, 0)  # warm-up
    t_pac, t_mezo = [], []
    for r in range(args.repeats):  # interleaved: machine noise hits both alike
        t_pac.append(timed(lambda: run(pac, r + 1)))
        t_mezo.append(timed(lambda: run(mezo, r + 1)))
    t_naive = timed(lambda: naive(99, args.naive_subsets)) * args.m / args.naive_subsets
    g = np.random.default_rng(0).normal(size=args.n)
    t_means = timed(lambda: [subset_means(g, pac.member) for _ in range(100)]) / 100
    row = {"model": args.model, "kind": args.kind, "n": args.n, "m": args.m, "mode": args.mode,
           "trainable_params": sum(p.numel() for _, p in setup.sel.params),
           "paczero_step_s": statistics.median(t_pac), "mezo_step_s": statistics.median(t_mezo),
           "vs_mezo": statistics.median(t_pac) / statistics.median(t_mezo),
           "naive_step_s_extrapolated": t_naive, "naive_subsets_measured": args.naive_subsets,
           "vs_naive": t_naive / statistics.median(t_pac), "subset_means_s": t_means,
           "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                       "torch": torch.__version__}}
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
