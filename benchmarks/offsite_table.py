"""Offsite-tuning five-setting table (Xiao, Lin & Han 2023, Table 2 layout): uniform drop vs GradOT at equal
emulator size, on one task per call.

Settings: full zero-shot, emulator zero-shot, emulator fine-tuned, plug-in (adapters trained on the emulator, put
into the full model), full fine-tuned (the same adapter blocks trained on the full model). Plus the privacy gap
(plug-in − emulator zero-shot), emulator size and build time, and the cosine similarity of the adapter gradient on
the emulator vs the full model (one calibration batch, at the initial adapters).

Variants NAME+distill also distil the emulator's middle (Offsite-Tuning §3.3, privtune.offsite.distill) on a public
corpus the model owner holds: by default the other built-in task's train texts, labels unused (never the tuned task).

Accuracy is on the first --eval examples of the task's eval split (SST-2 dev / AG News test / ARC-Easy test /
OpenBookQA test, file order). Each stage's result is stored as soon as it exists (resumable: a finished stage is not
recomputed).

Multiple choice (the papers' setting: Offsite-Tuning and GradOT report OpenBookQA and ARC): --task arc_easy or
--task openbookqa. A choice's score is the task's default (data.TASKS; task.choice_score): the sum of its tokens'
log-probs after the prompt for arc_easy, their per-token mean for openbookqa (the adapters' ARC-Easy training sums),
computed by the ZO engine's scorer (privtune.zo.sequences.SequenceForward); the adapters' loss is the cross-entropy
over the choices and accuracy is the argmax. OpenBookQA ships no train split: its adapters are tuned on ARC-Easy
train (--train-task, default arc_easy for it; GradOT calibrates there too) and evaluated on OpenBookQA test; the
JSON says so under "train_task" and "note".

Usage: python benchmarks/offsite_table.py --task sst2 [--model smollm2-135m] [--eval 200] [--train 192]
       [--lr 1e-4] [--ratio 0.5] [--adapters 2] [--out benchmarks/results/offsite.json]
       python benchmarks/offsite_table.py --task openbookqa --eval 500 --train 256 --methods uniform-drop
       (multiple-choice tasks write benchmarks/results/offsite_<task>.json unless --out says otherwise)
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from privtune.data import load_task
from privtune.models import load_model
from privtune.offsite import distill as D
from privtune.offsite import emulator as E
from privtune.offsite import forward as FW
from privtune.offsite import plug as P
from privtune.offsite import tune as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--train-task", default=None,
                    help="task whose train split tunes the adapters (default: --task; arc_easy for openbookqa)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--train", type=int, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="uniform-drop,gradot,uniform-drop+distill,gradot+distill",
                    help="emulator builders; NAME+distill also distils the middle on --distill-corpus")
    ap.add_argument("--distill-corpus", default=None,
                    help="default: distill.default_corpus, never the tuned or evaluated task")
    ap.add_argument("--distill-texts", type=int, default=512)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--distill-lr", type=float, default=2e-4)
    ap.add_argument("--out", default=None, help="default: offsite.json (classification), offsite_<task>.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task = load_task(a.task, eval_limit=a.eval)
    mc = task.type == "multiple_choice"
    train_task = a.train_task or ("arc_easy" if a.task == "openbookqa" else a.task)
    if a.out is None:
        a.out = f"benchmarks/results/offsite_{a.task}.json" if mc else "benchmarks/results/offsite.json"

    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    key = f"{a.model}|{a.task}"
    setup = {k: getattr(a, k) for k in ("model", "task", "eval", "train", "batch", "lr", "ratio", "adapters",
                                        "calib", "lam", "seed")}
    if mc:
        setup |= {"train_task": train_task, "choice_score": task.choice_score}
    res = results.get(key) if results.get(key, {}).get("setup") == setup else None
    old = results.get(key, {})
    zero_shot = old.get("full_zero_shot") if all(old.get("setup", {}).get(k) == setup.get(k) for k in ("model", "task", "eval", "choice_score")) else None
    res = res or {"setup": setup, **({"full_zero_shot": zero_shot} if zero_shot else {}), "eval_split": f"first {a.eval} examples of the {a.task} eval split (file order)",
                  "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if mc:
        res["command"] = " ".join(shlex.quote(x) for x in ["python", *sys.argv])
        res["eval_split"] = f"first {len(task.eval)} examples of the {a.task} test split (file order)"
        how = "sum" if task.choice_score == "sum" else "per-token mean"
        res["choice_score"] = (f"{how} of the choice tokens' log-probs after the prompt (task.choice_score: "
                               f"{task.choice_score}, the task's default), privtune.zo.sequences.SequenceForward; "
                               "loss: cross-entropy over the choices")
        res["train_task"] = train_task
        if train_task != a.task:
            res["note"] = (f"{a.task} has no train split: the adapters (and GradOT's calibration) use {train_task} "
                           f"train; accuracy is on {a.task} test")
    results[key] = res

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    def stage(name, fn):
        if name in res:
            print(f"[{a.task}] {name}: cached {res[name]}", flush=True)
            return res[name]
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        if isinstance(value, dict):
            value["seconds"] = round(time.perf_counter() - t0, 1)
            if mc:
                value["cpu_seconds"] = round(time.process_time() - c0, 1)
        res[name] = value
        save()
        print(f"[{a.task}] {name}: {value}", flush=True)
        return value

    lm = load_model(a.model)
    evals = FW.task_examples(lm.codec, task, task.eval)
    L = len(lm.model.model.layers)
    full_map = T.full_adapter_map(L, a.adapters)
    topt = T.TuneOptions(task=train_task, examples=a.train, batch_size=a.batch, lr=a.lr, seed=a.seed)
    tuned, cos_examples = T.training_pool(train_task, 8, a.seed + 1)
    cos_batch = FW.task_examples(lm.codec, tuned, cos_examples)

    def acc(model):
        x, c = evals.accuracy(model)
        return {"accuracy": x, "correct": c, "total": len(evals)}

    def trained(model, amap):
        t0 = time.perf_counter()
        summary = T.train_adapters(model, lm.codec, amap, topt)
        seconds = round(time.perf_counter() - t0, 1)
        return {**acc(model), "train_seconds": seconds, "train_steps": summary["steps"],
                "train_loss": summary["loss_log"]}

    stage("full_zero_shot", lambda: acc(lm.model))

    corpus = a.distill_corpus or D.default_corpus([a.task, train_task])
    for method in a.methods.split(","):
        builder, _, variant = method.partition("+")
        dopt = D.DistillOptions(corpus=corpus, texts=a.distill_texts, steps=a.distill_steps, lr=a.distill_lr,
                                seed=a.seed) if variant == "distill" else None
        recorded = res.get(f"{method}/emulator", {}).get("distill")
        if f"{method}/plug_in" in res and (dopt is None or recorded == asdict(dopt)):
            continue
        for k in [k for k in res if k.startswith(method + "/")]:  # a method's stages are redone together
            del res[k]
        opt = E.BuildOptions(method=builder, adapters=a.adapters, ratio=a.ratio, task=train_task, calib=a.calib,
                             lam=a.lam, seed=a.seed, distill=dopt)
        t0 = time.perf_counter()
        measured = {}
        emu, manifest, state = E.build(lm, opt, measured=measured)
        built = time.perf_counter() - t0
        emu_map = T.adapter_map(manifest)
        res[f"{method}/emulator"] = {"build_seconds": round(built, 1), "params": manifest["params"],
                                     **({"distill": asdict(dopt), **measured} if dopt else {}),
                                     "emulator_mb": round(sum(t.numel() * t.element_size() for t in state.values()) / 2**20, 2),
                                     "blocks": [{k: b[k] for k in ("source", "role", "ranks") if k in b}
                                                | ({"channels": len(b["channels"])} if "channels" in b else {})
                                                for b in manifest["blocks"]]}
        stage(f"{method}/grad_cosine", lambda: {"cosine": T.grad_cosine_on(emu, emu_map, lm.model, full_map,
                                                                            cos_batch)})
        stage(f"{method}/emulator_zero_shot", lambda: acc(emu))
        stage(f"{method}/emulator_fine_tuned", lambda: trained(emu, emu_map))
        old = P.plug(lm.model, T.adapter_state(emu, emu_map))
        try:
            stage(f"{method}/plug_in", lambda: acc(lm.model))
        finally:
            P.plug(lm.model, old)
        del emu, state

    if "full_fine_tuned" not in res:
        before = T.adapter_state(lm.model, full_map)
        stage("full_fine_tuned", lambda: trained(lm.model, full_map))
        P.plug(lm.model, before)

    table = {}
    for method in a.methods.split(","):
        if f"{method}/plug_in" not in res:
            continue
        table[method] = {
            "full_zero_shot": res["full_zero_shot"]["accuracy"],
            "emulator_zero_shot": res[f"{method}/emulator_zero_shot"]["accuracy"],
            "emulator_fine_tuned": res[f"{method}/emulator_fine_tuned"]["accuracy"],
            "plug_in": res[f"{method}/plug_in"]["accuracy"],
            "full_fine_tuned": res.get("full_fine_tuned", {}).get("accuracy"),
            "privacy_gap": res[f"{method}/plug_in"]["accuracy"] - res[f"{method}/emulator_zero_shot"]["accuracy"],
            "emulator_params": res[f"{method}/emulator"]["params"]["emulator"],
            "emulator_mb": res[f"{method}/emulator"]["emulator_mb"],
            "build_seconds": res[f"{method}/emulator"]["build_seconds"],
            "grad_cosine": res[f"{method}/grad_cosine"]["cosine"],
            **({"distill_held_out_nmse": res[f"{method}/emulator"]["distill_held_out_nmse"]}
               if "distill_held_out_nmse" in res[f"{method}/emulator"] else {}),
        }
    res["table"] = table
    save()
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
