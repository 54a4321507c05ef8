"""ZO step cost versus inference, measured in one process as ratios (the machine is shared and noisy).

For each trainable set:
  time_ratio   = ZO step (θ±εz passes + update) ÷ two plain forward passes of the same batch (target ≤ 1.10)
  memory_ratio = peak RSS during a ZO step ÷ peak RSS during those two forward passes (target ≤ 1.10);
                 also the increments over the resident baseline (weights + cache), which isolate the step's own cost
  prefix_speedup (top_layers:k) = ZO step without the frozen-prefix cache ÷ with it
  z_sweep_s    = the z work of a step alone: both perturbed sweeps (θ ± εz for every trainable tensor) + the update

--device cuda measures GPU time (synchronized) and peak CUDA memory (torch.cuda.max_memory_allocated) instead of
RSS; --z-kernel picks the z backend (train.z_kernel: auto | torch | triton; triton = the fused Philox kernels), so
a GPU session can time torch against triton on the same model and batch.

Usage: python benchmarks/zo_step.py [--model smollm2-135m|tiny] [--batch 32] [--repeats 5] [--device cpu|cuda]
                                    [--z-kernel auto|torch|triton] [--out FILE]
Writes JSON (default benchmarks/results/zo_step.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from privtune import methods as M
from privtune.run.setup import encode_examples, prepare
from privtune.zo import kernels as Z
from privtune.zo.engine import ZOEngine
from privtune.zo.seeds import Direction, direction_seed

DEVICE = torch.device("cpu")  # set by --device


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_of(fn) -> tuple[int, int]:
    """(resident bytes before, peak resident bytes during fn); on CUDA, allocated device memory."""
    if DEVICE.type == "cuda":
        _sync()
        base = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        fn()
        _sync()
        return base, torch.cuda.max_memory_allocated(DEVICE)
    base = _status("VmRSS:")
    _reset_peak()
    fn()
    return base, _status("VmHWM:")


def timed(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def bench_kind(model: str, kind: str, batch: int, repeats: int, cache: bool = True, z_kernel: str = "auto",
               task: str = "sst2") -> dict:
    cfg = M.build_config({"model": {"name": model, "device": str(DEVICE)},
                   "task": {"name": task, "eval_limit": batch},
                   "trainable": {"kind": kind},
                   "train": {"micro_batch": batch, "prefix_cache": cache, "z_kernel": z_kernel}})
    setup = prepare(cfg, need_pool=False, need_eval=False)
    data = encode_examples(setup, setup.task.eval[:batch])
    eng: ZOEngine = setup.engine
    idx = list(range(batch))

    def infer():
        eng.logits(data, idx)
        eng.logits(data, idx)

    step_no = [0]

    def zo_step():
        seed = direction_seed(0, step_no[0])
        step_no[0] += 1
        lp, lm = eng.pair_losses(data, idx, seed, 1e-3)
        eng.apply_update([(seed, 0.0)], 0.0)  # coefficient 0: same work, weights unchanged

    def z_sweep():  # the z work of zo_step without the model: θ ± εz for every tensor, then the update
        seed = direction_seed(1, step_no[0])
        step_no[0] += 1
        for scale in (1e-3, -1e-3):
            d = Direction(seed, scale)
            with eng.at(d):
                for _, p in eng.params:
                    eng.value(p)
            eng.forget([d])
        eng.apply_update([(seed, 0.0)], 0.0)

    infer(), zo_step(), z_sweep()  # warm-up (and the triton kernels' compilation)
    t_inf, t_zo, t_z, m_inf, m_zo = [], [], [], [], []
    for _ in range(repeats):  # interleaved so that machine noise hits both alike
        t_inf.append(timed(infer))
        t_zo.append(timed(zo_step))
        t_z.append(timed(z_sweep))
    for _ in range(2):
        m_inf.append(peak_of(infer))
        m_zo.append(peak_of(zo_step))
    base = min(b for b, _ in m_inf + m_zo)
    peak_inf, peak_zo = max(p for _, p in m_inf), max(p for _, p in m_zo)
    out = {
        "task": task, "task_type": setup.task.type, "kind": kind,
        "prefix_cache": cache and eng.forward.cache_layer > 0, "batch": batch,
        "tokens_per_example": statistics.mean(len(x) for x in data.ids),
        "trainable_params": sum(p.numel() for _, p in setup.sel.params),
        "keep_z": eng.keep_z, "z_kernel": eng.z_kernel, "device": str(DEVICE),
        "z_sweep_s": statistics.median(t_z),
        "two_forward_s": statistics.median(t_inf), "zo_step_s": statistics.median(t_zo),
        "time_ratio": statistics.median(t_zo) / statistics.median(t_inf),
        "peak_rss_inference_mb": peak_inf / 2**20, "peak_rss_zo_mb": peak_zo / 2**20,
        "memory_ratio": peak_zo / peak_inf,
        "increment_over_resident_mb": {"inference": (peak_inf - base) / 2**20, "zo": (peak_zo - base) / 2**20},
    }
    eng.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kinds", default="top_layers:1,top_layers:2,top_layers:4,lora,full")
    ap.add_argument("--task", default="sst2", help="a built-in task; squad (generation: prompt + answer, teacher "
                    "forced) and arc_easy (multiple choice: prompt + every choice, packed) time the multi-token loss")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--z-kernel", default="auto", choices=["auto", "torch", "triton"],
                    help="z backend (train.z_kernel); triton needs CUDA (or TRITON_INTERPRET=1, very slow)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/zo_step.json (zo_step_<task>.json for a "
                    "task other than sst2)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(2)
    rows = []
    name = "zo_step.json" if args.task == "sst2" else f"zo_step_{args.task}.json"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds.split(","):
        row = bench_kind(args.model, kind, args.batch, args.repeats, z_kernel=args.z_kernel, task=args.task)
        if kind.startswith("top_layers"):
            nocache = bench_kind(args.model, kind, args.batch, max(2, args.repeats // 2), cache=False,
                                 z_kernel=args.z_kernel, task=args.task)
            row["zo_step_no_cache_s"] = nocache["zo_step_s"]
            row["prefix_speedup"] = nocache["zo_step_s"] / row["zo_step_s"]
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        result = {"benchmark": "zo_step", "command": " ".join(["zo_step.py", *__import__("sys").argv[1:]]),
                  "task": args.task, "model": args.model, "batch": args.batch, "repeats": args.repeats,
                  "device": str(DEVICE), "z_kernel": args.z_kernel,
                  "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                              "torch": torch.__version__, "triton": Z.triton_version(),
                              "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None},
                  "rows": rows}
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a long run keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
