"""privtune offsite build | tune | plug | eval: offsite-tuning (emulator + adapters) and GradOT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, PrivtuneError
from .common import Progress, fail, run

app = typer.Typer(no_args_is_help=True, help="Offsite-tuning: build an emulator, tune adapters on it, plug them in.")


@app.command()
def build(
    model: str = typer.Option(..., "--model", help="full model: smollm2-135m, tiny or a local HF folder"),
    method: str = typer.Option(..., "--method", help="uniform-drop | gradot"),
    out: Path = typer.Option(..., "--out", help="emulator folder to create"),
    adapters: int = typer.Option(2, "--adapters", help="n: first n and last n blocks are the adapters"),
    ratio: float = typer.Option(0.5, "--ratio", help="fraction of the middle's parameters removed, in [0, 1)"),
    task: str = typer.Option("sst2", "--task", help="gradot: calibration task (train split)"),
    calib: int = typer.Option(32, "--calib", help="gradot: calibration examples"),
    lam: float = typer.Option(0.5, "--lam", help="gradot: GCS λ (weight of the loss-increase term)"),
    keep_top: float = typer.Option(0.05, "--keep-top", help="gradot DRD: top fraction of rank always kept"),
    seed: int = typer.Option(0, "--seed"),
    distill_corpus: Optional[str] = typer.Option(
        None, "--distill-corpus", help="distil the middle on this public corpus: a task name (its train texts, "
        "labels unused) or a text file, one text per line; never the data owner's data"),
    distill_texts: int = typer.Option(512, "--distill-texts", help="texts drawn from the corpus"),
    distill_max_tokens: int = typer.Option(64, "--distill-max-tokens", help="tokens kept per text"),
    distill_steps: int = typer.Option(200, "--distill-steps"),
    distill_batch: int = typer.Option(8, "--distill-batch"),
    distill_lr: float = typer.Option(1e-4, "--distill-lr"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Build an emulator folder (emulator.safetensors + manifest.json) from the full model."""
    from ..offsite import distill as D
    from ..offsite import emulator as E

    dopt = None if distill_corpus is None else D.DistillOptions(
        corpus=distill_corpus, texts=distill_texts, max_tokens=distill_max_tokens, steps=distill_steps,
        batch_size=distill_batch, lr=distill_lr, seed=seed)
    opt = E.BuildOptions(method=method, adapters=adapters, ratio=ratio, task=task, calib=calib, lam=lam,
                         keep_top=keep_top, seed=seed, distill=dopt)
    if method not in E.METHODS:  # before loading a model
        fail(f"--method: {method!r} is not one of {', '.join(E.METHODS)}")
    result = run(lambda: E.build_folder(model, opt, out, Progress("build", quiet)))
    typer.echo(json.dumps(result))


@app.command()
def tune(
    emulator: Path = typer.Option(..., "--emulator", help="emulator folder (privtune offsite build)"),
    out: Path = typer.Option(..., "--out", help="folder for adapters.safetensors + adapters.json"),
    task: str = typer.Option("sst2", "--task"),
    examples: int = typer.Option(400, "--examples", help="training pool size (label-balanced for classification)"),
    epochs: int = typer.Option(1, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(2e-5, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train the adapter blocks on the emulator (first-order Adam); save them under the full model's names."""
    from ..offsite import emulator as E
    from ..offsite import tune as T

    def go():
        opt = T.TuneOptions(task=task, examples=examples, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        T.check_options(opt)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PrivtuneError(f"--out: {out} exists and is not an empty folder")
        T.training_pool(task, examples, seed)  # an eval-only task or too large a pool fails before the model loads
        lm, manifest = E.load(emulator)
        amap = T.adapter_map(manifest)
        summary = T.train_adapters(lm.model, lm.codec, amap, opt, Progress("tune", quiet))
        info = {"source": manifest["source"], "emulator_method": manifest["method"],
                "emulator_manifest_sha256": __import__("hashlib").sha256(E.manifest_bytes(manifest)).hexdigest(),
                "task": task, "steps": summary["steps"], "examples": summary["examples"],
                "options": summary["options"]}  # goes back to the model owner: no loss trajectory
        T.save_adapters(out, T.adapter_state(lm.model, amap), info)
        return {"out": str(out), "steps": summary["steps"], "examples": summary["examples"],
                "final_train_loss": summary["loss_log"][-1]["train_loss"] if summary["loss_log"] else None}

    typer.echo(json.dumps(run(go)))


@app.command()
def plug(
    model: str = typer.Option(..., "--model", help="the full model the emulator was built from"),
    adapters: Path = typer.Option(..., "--adapters", help="folder written by privtune offsite tune"),
    out: Path = typer.Option(..., "--out", help="HF model folder to write (usable as privtune eval --model OUT)"),
):
    """Plug trained adapters into the full model and save it as an HF folder."""
    from ..models import HFCodec, load_model
    from ..offsite import emulator as E
    from ..offsite import plug as P
    from ..offsite import tune as T

    def go():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PrivtuneError(f"--out: {out} exists and is not an empty folder")
        state, info = T.load_adapters(adapters)
        lm = load_model(model)
        P.check_source(info["source"], E.model_identity(lm))
        P.plug(lm.model, state, str(adapters / T.ADAPTERS))
        if not isinstance(lm.codec, HFCodec):
            raise ConfigError("--model: plug writes an HF folder; the tiny model has no tokenizer to save "
                              "(use the library: privtune.offsite.plug.plug)")
        lm.model.save_pretrained(out)
        lm.codec.tok.save_pretrained(out)
        return {"out": str(out), "tensors": len(state)}

    typer.echo(json.dumps(run(go)))


@app.command("eval")
def eval_cmd(
    emulator: Optional[Path] = typer.Option(None, "--emulator", help="evaluate an emulator folder"),
    model: Optional[str] = typer.Option(None, "--model", help="evaluate the full model"),
    adapters: Optional[Path] = typer.Option(None, "--adapters", help="plug these adapters in first"),
    task: str = typer.Option("sst2", "--task"),
    limit: int = typer.Option(300, "--limit", help="first N examples of the task's eval split"),
):
    """Accuracy of an emulator or of the full model (optionally with adapters plugged in) on a task's eval split."""
    from ..data import load_task
    from ..models import load_model
    from ..offsite import emulator as E
    from ..offsite import forward as FW
    from ..offsite import plug as P
    from ..offsite import tune as T

    def go():
        if (emulator is None) == (model is None):
            raise PrivtuneError("offsite eval: give exactly one of --emulator or --model")
        if limit < 1:
            raise ConfigError(f"--limit: must be >= 1, got {limit}")
        t = load_task(task, eval_limit=limit)
        if emulator is not None:
            lm, _ = E.load(emulator)
        else:
            lm = load_model(model)
        if adapters is not None:
            state, info = T.load_adapters(adapters)
            if emulator is None:
                P.check_source(info["source"], E.model_identity(lm))
                P.plug(lm.model, state, str(adapters / T.ADAPTERS))
            else:
                raise PrivtuneError("--adapters: only with --model (the emulator folder's adapters are its own)")
        examples = FW.task_examples(lm.codec, t, t.eval)
        acc, correct = examples.accuracy(lm.model)
        return {"accuracy": acc, "correct": correct, "total": len(examples), "task": task, "split": "eval",
                "model": str(emulator) if emulator is not None else model, "adapters": str(adapters) if adapters else None}

    typer.echo(json.dumps(run(go)))
