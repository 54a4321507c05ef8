"""Peak memory and step time of first-order DP-SGD (Opacus) ÷ a zeroth-order method (MeZO, DPZero: same engine
path), at the same model, trainable set and batch.

Each method runs in its own fresh process (so peaks don't mix): load model, encode the batch, one inference pass
over the batch (the reference), then `--steps` training steps through the method object exactly as privtune.run.loop
runs them. Reported per method: whole-process peak RSS (ru_maxrss) ÷ the peak after the inference pass, the
overheads above the loaded model of a training step and of inference, and seconds per step. The ratio DP-SGD ÷ ZO is the number to read; absolute values depend on
the machine. Defaults: SmolLM2-135M, LoRA r=8 on q/v in every block (no frozen-prefix cache, so the backward pass
goes through the whole model), batch 16.

Usage: python benchmarks/dp_memory.py [--model smollm2-135m] [--batch 16] [--steps 3] [--lora-layers N]
Writes benchmarks/results/dp_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> dict:
    import torch

    from privtune import methods as M
    from privtune.methods import method_class
    from privtune.run.keystore import SecretKey
    from privtune.run.setup import prepare

    torch.set_num_threads(args.threads)
    lora = {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
    if args.lora_layers:
        lora["layers"] = args.lora_layers
    method = {"name": args.method, "batch_size": args.batch, "lr": 1e-4}
    if args.method != "mezo":
        method.update(noise_multiplier=1.0, clip=1.0, sampling="fixed")
    cfg = M.build_config({"model": {"name": args.model, "device": "cpu"},
                   "task": {"name": "sst2", "pool_size": max(args.batch, 64), "eval_limit": 1},
                   "trainable": {"kind": "lora", "lora": lora}, "method": method,
                   "train": {"steps": args.steps, "micro_batch": args.batch, "prefix_cache": bool(args.lora_layers)},
                   "out_dir": "/tmp/unused"})
    setup = prepare(cfg, need_eval=False)
    m = method_class(args.method)(cfg.method, setup.engine, setup.pool, 0, args.steps, secret=SecretKey(1))
    base = rss_mb()
    setup.engine.logits(setup.pool, list(range(args.batch)))  # one inference pass over the batch: the reference
    infer_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    for t in range(args.steps):
        m.apply(m.step(t), cfg.method.lr, 0.0)
    dt = (time.perf_counter() - t0) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_train = sum(p.numel() for _, p in setup.sel.params)
    return {"method": args.method, "s_per_step": round(dt, 3), "rss_loaded_mb": round(base, 1),
            "inference_peak_rss_mb": round(infer_peak, 1), "peak_rss_mb": round(peak, 1),
            "step_overhead_mb": round(peak - base, 1), "inference_overhead_mb": round(infer_peak - base, 1),
            "peak_over_inference": round(peak / infer_peak, 3), "trainable_params": n_train}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora-layers", type=int, default=0, help="adapters only in the top N blocks (0 = all)")
    ap.add_argument("--methods", default="mezo,dpzero,dpsgd")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dp_memory.json"))
    args = ap.parse_args()
    if args.child:
        args.method = args.child
        print(json.dumps(child(args)))
        return
    rows = []
    for name in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads), "--lora-layers", str(args.lora_layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    by = {r["method"]: r for r in rows}
    ratios = {}
    for zo in ("mezo", "dpzero"):
        if "dpsgd" in by and zo in by:
            ratios[f"dpsgd_over_{zo}"] = {
                "step_overhead_memory": round(by["dpsgd"]["step_overhead_mb"] / max(by[zo]["step_overhead_mb"], 1.0), 2),
                "peak_memory": round(by["dpsgd"]["peak_rss_mb"] / by[zo]["peak_rss_mb"], 2),
                "peak_over_inference": {"dpsgd": by["dpsgd"]["peak_over_inference"],
                                        zo: by[zo]["peak_over_inference"]},
                "step_time": round(by["dpsgd"]["s_per_step"] / by[zo]["s_per_step"], 2)}
    result = {"benchmark": "dp_memory", "model": args.model, "batch": args.batch, "steps": args.steps,
              "trainable": f"lora r=8 q,v, {'top ' + str(args.lora_layers) if args.lora_layers else 'all'} blocks",
              "device": "cpu", "threads": args.threads, "rows": rows, "ratios": ratios,
              "command": "python benchmarks/dp_memory.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
