"""BBoxER on SmolLM2-135M + SST-2 (configs/sst2_bboxer.yaml): budget b × optimizer grid, the generalization bound vs
the observed train − dev gap, a loss-threshold membership attack, and the cost of one scoring pass with the
frozen-prefix cache ÷ without it. Writes benchmarks/results/bboxer_sst2.json.

    PYTHONPATH=src nice -n 10 python benchmarks/bboxer_sst2.py [--budgets 30 100 300] [--optimizers one_plus_one diagonal_cma]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from privtune import atomic as A
from privtune import methods as M
from privtune.data import balanced_pool
from privtune.run import replay as RP
from privtune.run import rundir as R
from privtune.run.evaluate import evaluate_setup
from privtune.run.loop import train
from privtune.run.setup import encode_examples, prepare
from privtune.trainable import load_trainable_state, trainable_state
from privtune.zo.engine import ZOEngine
from privtune.zo.forward import Encoded

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sst2_bboxer.yaml"


def subset(data: Encoded, n: int) -> Encoded:
    return Encoded(data.ids[:n], data.labels[:n], data.cache[:n] if data.cache is not None else None)


def scoring_pass_seconds(setup, n: int, repeats_cached: int = 20) -> dict:
    """Wall time of one scoring pass (verbalizer logits of n pool examples) with the frozen-prefix cache (the cached
    final hidden states) and without it (a second engine on the same model, train.prefix_cache = false)."""
    cached = subset(setup.pool, n)
    plain = Encoded(cached.ids, cached.labels, None)
    uncached_engine = ZOEngine(setup.sel, setup.verbalizer_ids, device=setup.engine.device,
                               micro_batch=setup.engine.forward.micro_batch, use_cache=False)
    times = []
    for _ in range(repeats_cached):
        t0 = time.perf_counter()
        a = setup.engine.logits(cached)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    b = uncached_engine.logits(plain)
    uncached = time.perf_counter() - t0
    uncached_engine.close()
    return {"examples": n, "cached_s": statistics.median(times), "uncached_s": uncached,
            "speedup": uncached / statistics.median(times), "max_abs_logit_diff": float((a - b).abs().max())}


def loss_attack_auc(setup, members: Encoded, nonmembers: Encoded) -> float:
    """AUC of the loss-threshold attack (lower loss → 'member'); only the AUC leaves this function."""
    from sklearn.metrics import roc_auc_score

    lm = setup.engine.losses(members).cpu().numpy()
    ln = setup.engine.losses(nonmembers).cpu().numpy()
    y = [1] * len(lm) + [0] * len(ln)
    return float(roc_auc_score(y, [-v for v in list(lm) + list(ln)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=int, nargs="+", default=[30, 100, 300])
    ap.add_argument("--optimizers", nargs="+", default=["one_plus_one", "diagonal_cma"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attack", type=int, default=200, help="members and non-members for the loss attack")
    ap.add_argument("--timing-examples", type=int, default=200)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bboxer_sst2.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {"config": str(CONFIG.relative_to(REPO)), "seed": args.seed, "runs": []}

    # the attack's data: members from the scoring pool, non-members from the rest of SST-2 train (same distribution)
    cfg0 = M.load_config(CONFIG, ["out_dir=/tmp/unused", f"train.seed={args.seed}"])
    setup = prepare(cfg0)
    base_state = trainable_state(setup.sel)
    pool_set = set(setup.pool_index)
    rest = [i for i in balanced_pool(setup.task.train, cfg0.task.pool_size + 2 * args.attack, args.seed + 1)
            if i not in pool_set][:args.attack]
    members = subset(setup.pool, args.attack)
    nonmembers = encode_examples(setup, [setup.task.train[i] for i in rest])
    result["base"] = {"dev_accuracy": evaluate_setup(setup)["accuracy"],
                      "loss_attack_auc": loss_attack_auc(setup, members, nonmembers)}
    result["attack"] = {"members": len(members), "nonmembers": len(nonmembers),
                        "note": "members: first examples of the scoring pool; non-members: other SST-2 train examples"}

    with tempfile.TemporaryDirectory() as tmp:
        for opt in args.optimizers:
            for b in args.budgets:
                out = Path(tmp) / f"{opt}-{b}"
                cfg = M.load_config(CONFIG, [f"out_dir={out}", f"method.optimizer={opt}", f"train.steps={b}",
                                      f"train.seed={args.seed}", f"train.log_every={b}", f"train.checkpoint_every={b}"])
                t0 = time.time()
                ev = train(cfg)
                wall = time.time() - t0
                priv = json.loads((out / R.PRIVACY).read_text())
                bits = [x["bit"] for x in A.read_jsonl(out / R.TRANSCRIPT)]
                load_trainable_state(setup.sel, A.load_tensors(out / R.MODEL_DIR / "trainable.safetensors"))
                auc = loss_attack_auc(setup, members, nonmembers)
                load_trainable_state(setup.sel, base_state)
                row = {"optimizer": opt, "budget_b": b, "dev_accuracy": ev["accuracy"],
                       "base_dev_accuracy": ev["initial_accuracy"], "dev_total": ev["total"],
                       "scoring_accuracy": priv["scoring_accuracy"], "observed_gap": priv["observed_gap"],
                       "generalization_bound": priv["generalization_bound"], "bits_released": priv["bits_released"],
                       "scoring_examples": priv["scoring_examples"], "improvements": sum(bits),
                       "loss_attack_auc": auc, "train_wall_s": ev["wall_time_s"], "total_wall_s": round(wall, 2)}
                if b == max(args.budgets):
                    ok, msg = RP.verify(out, RP.replay(out))
                    row["replay_verify"] = msg if ok else f"FAILED: {msg}"
                result["runs"].append(row)
                print(json.dumps(row), flush=True)

    result["scoring_pass"] = scoring_pass_seconds(setup, args.timing_examples)
    print(json.dumps(result["scoring_pass"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
