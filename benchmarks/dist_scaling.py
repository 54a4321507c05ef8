"""PACZero step on 1 vs 2 CPU processes (gloo): step time, scaling, bytes each rank puts into collectives per step.

Each configuration is launched the way torchrun launches ranks (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT):
  1 process × 1 thread,  2 processes × 1 thread each,  1 process × 2 threads (same cores as the 2-process run).
A rank prepares the PACZero step on N pool examples (every example's ZO scalar, M subset means, the release) and
times `steps` steps after one warm-up (lr = 0, so every step sees the same θ). The released signs of the 1- and
2-process runs are compared (they must be equal: the reductions are bit-identical by construction).

Usage: python benchmarks/dist_scaling.py [--model smollm2-135m] [--kind top_layers:1] [--n 512] [--m 128]
Writes JSON (default benchmarks/results/dist_scaling.json). The machine is shared: numbers are as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from privtune import methods as M
    from privtune import dist
    from privtune.methods.paczero import PACZero
    from privtune.run.keystore import SecretKey
    from privtune.run.setup import prepare

    cfg = M.build_config({"model": {"name": args.model, "device": "cpu"}, "task": {"name": "sst2", "pool_size": args.n},
                   "trainable": {"kind": args.kind}, "train": {"micro_batch": args.micro_batch},
                   "method": {"name": "paczero", "mode": args.mode, "subsets": args.m, "budget": 0.33}})
    with dist.session("cpu"):
        setup = prepare(cfg, need_eval=False)
        secret = SecretKey(1) if dist.is_main() else dist.RemoteSecret()
        pac = PACZero(cfg.method, setup.engine, setup.pool, 0, 1000, secret=secret)
        times, sent, signs = [], [], []
        for t in range(args.steps + 1):
            dist.barrier()
            b0, t0 = dist.stats["bytes"], time.perf_counter()
            rel = pac.step(t)
            pac.apply(rel, 0.0, 0.0)
            if t > 0:  # step 0 is the warm-up
                times.append(time.perf_counter() - t0)
                sent.append(dist.stats["bytes"] - b0)
            signs.append(rel.public["sign"])
        chunks = len(setup.engine.chunks(setup.pool))
    out = {"rank": int(os.environ.get("RANK", "0")), "threads": args.threads,
           "step_s": times, "bytes_sent_per_step": sent, "signs": signs, "chunks": chunks,
           "trainable_params": sum(p.numel() for _, p in setup.sel.params)}
    Path(args.result).write_text(json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, nproc: int, threads: int, tmp: Path) -> list[dict]:
    port, procs, files = free_port(), [], []
    for r in range(nproc):
        f = tmp / f"p{nproc}t{threads}r{r}.json"
        files.append(f)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc)}
        if nproc == 1:
            for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
                env.pop(k)
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--result", str(f),
               "--model", args.model, "--kind", args.kind, "--n", str(args.n), "--m", str(args.m),
               "--mode", args.mode, "--steps", str(args.steps), "--micro-batch", str(args.micro_batch)]
        procs.append(subprocess.Popen(cmd, env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"worker failed ({nproc} processes × {threads} threads)")
    return [json.loads(f.read_text()) for f in files]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kind", default="top_layers:1")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--mode", default="mi", choices=["zpl", "mi"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dist_scaling.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()[0]
        runs = {"p1_t1": launch(args, 1, 1, Path(tmp)), "p2_t1": launch(args, 2, 1, Path(tmp)),
                "p1_t2": launch(args, 1, 2, Path(tmp))}
        load1 = os.getloadavg()[0]
    step = {k: statistics.median(v[0]["step_s"]) for k, v in runs.items()}  # rank 0's wall time per step
    row = {
        "model": args.model, "kind": args.kind, "n": args.n, "m": args.m, "mode": args.mode,
        "micro_batch": args.micro_batch, "chunks": runs["p1_t1"][0]["chunks"], "steps_timed": args.steps,
        "trainable_params": runs["p1_t1"][0]["trainable_params"],
        "step_s": step,
        "speedup_2proc_vs_1proc_1thread": step["p1_t1"] / step["p2_t1"],
        "speedup_2proc_vs_1proc_2threads": step["p1_t2"] / step["p2_t1"],
        "bytes_sent_per_step_by_rank": {f"rank{r['rank']}": statistics.median(r["bytes_sent_per_step"])
                                        for r in runs["p2_t1"]},
        "bytes_note": ("payload each rank put into collectives per step (all_gather of its per-chunk partial sums "
                       "[ceil(chunks/P) x (M+1)] float64, plus rank 0's pickled release broadcast); a ring "
                       "all_gather moves (P-1) x that per rank on the wire"),
        "releases_equal_1proc_2proc": runs["p1_t1"][0]["signs"] == runs["p2_t1"][0]["signs"] == runs["p2_t1"][1]["signs"],
        "machine": {"cpu_cores": os.cpu_count(), "load_avg_1min_before_after": [round(load0, 2), round(load1, 2)],
                    "platform": platform.platform(), "note": "shared machine; times as measured"},
        "command": "python " + " ".join([Path(__file__).name] + sys.argv[1:]),
    }
    print(json.dumps(row, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
