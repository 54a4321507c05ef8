"""`privtune train`, `eval`, `export`, `replay` and `forget`: the commands of a run and its run directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PrivtuneError
from ..paths import cache_dir
from .common import Progress, fail, run

OVERRIDES_HELP = ("config overrides, each a dotted key=value into the config's sections, e.g. method.lr=3e-3 "
                  "train.steps=200 out_dir=runs/try (every key: privtune config show)")
NO_CONFIG = ("train: give --config FILE (e.g. configs/tiny_mezo.yaml) and/or key=value overrides; every key and its "
             "default: privtune config show")


def _keys(overrides: list[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in overrides]


def train(
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in out_dir from its last checkpoint (its "
                                "config comes from the run dir: no overrides but out_dir=RUN)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars, status or summary lines (errors, "
                               "warnings and the JSON result still show)"),
):
    """Train a model: privtune train --config FILE KEY=VALUE...

    Overrides are dotted keys into the config, as in: privtune train -c configs/tiny_mezo.yaml method.lr=3e-3
    train.steps=200 out_dir=runs/try. The result JSON goes to stdout, a one-line summary to stderr.
    """
    from ..methods import load_config
    from ..run.loop import train as run_train

    overrides = list(overrides or [])
    if config is None and not overrides:  # the defaults alone train the random tiny model: never what was meant
        fail(NO_CONFIG)
    if resume and [k for k in _keys(overrides) if k != "out_dir"]:
        extra = ", ".join(k for k in _keys(overrides) if k != "out_dir")
        fail(f"--resume: the config comes from the run dir's config.yaml; drop the override(s) {extra} (only "
             "out_dir=RUN may name the run)")
    t0 = time.monotonic()

    def go():
        cfg = load_config(config, overrides)
        return cfg, run_train(cfg, resume=resume, callback=Progress(cfg.method.name, quiet))

    cfg, result = run(go)
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun only rank 0 prints the result
        typer.echo(json.dumps(result))
        if not quiet and ("accuracy" in result or "f1" in result):
            typer.echo(_summary(cfg.out_dir, result, time.monotonic() - t0), err=True)


def _summary(out_dir: str, result: dict, seconds: float) -> str:
    """`accuracy 78.6% → 80.6% · (ε=2, δ=1e-05)-DP, MIA posterior ≤ 0.881 · runs/sst2_dpzero · 35 s`: the run's
    guarantee as its method words it, from privacy.json."""
    from ..methods import find
    from ..zo.sums import headline
    from ..run.rundir import RunDir

    run = RunDir(out_dir)
    privacy = run.read_record(run.privacy) or {}
    method = find(privacy.get("method"))
    guarantee = method.guarantee_line(privacy) if method is not None else str(privacy.get("guarantee", "?"))
    name, value = headline(result)
    before = result.get(f"initial_{name}")
    shown = f"{value:.1%}" if before is None else f"{before:.1%} → {value:.1%}"
    return f"{'F1' if name == 'f1' else name} {shown} · {guarantee} · {run.path} · {seconds:.0f} s"


def eval_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="a run directory (evaluates its trained model)"),
    model: Optional[str] = typer.Option(None, "--model", help="evaluate a base model, or an exported folder, "
                                        "zero-shot instead"),
    data: Optional[Path] = typer.Option(None, "--data", help="evaluate on your own file (TSV, CSV, JSONL, Parquet "
                                        "or a datasets folder; the format of a custom task's files) instead of a "
                                        "task split"),
    task: Optional[str] = typer.Option(None, "--task", help="with --model: a built-in task, sst2 by default (with "
                                       "--data: its template, verbalizer and labels)"),
    split: Optional[str] = typer.Option(None, "--split", help="dev/test (the task's eval split, the default) or "
                                        "train; not with --data"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N examples only"),
    template: Optional[str] = typer.Option(None, "--template", help="with --model: the prompt, holding {text}"),
    verbalizer: Optional[str] = typer.Option(None, "--verbalizer", help="with --model: one word per label, "
                                             "comma-separated, e.g. ' negative, positive'"),
    label_names: Optional[str] = typer.Option(None, "--label-names", help="with --model --data: the labels as "
                                              "written in the file, comma-separated, in verbalizer order"),
    choice_score: Optional[str] = typer.Option(None, "--choice-score", help="with --model, a multiple-choice task: "
                                               "a choice's score is the sum or the per-token mean of its log-probs "
                                               "(default: the task's, sum for arc_easy, else mean)"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="with --model, a generation task: "
                                                 "decode at most this many tokens (default: the task's, 32; give a "
                                                 "run's task.max_new_tokens to compare with it)"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the result JSON to this file (without it, "
                                       "eval only prints); for a generation task's eval split it also holds each "
                                       "question's F1 and exact match (per_question)"),
):
    """Accuracy of a trained run (RUN_DIR) or of a base model (--model NAME) on a task split or your own file."""
    from ..run.evaluate import evaluate_base, evaluate_run

    progress = Progress("eval")

    def go():
        if (run_dir is None) == (model is None):
            raise PrivtuneError("eval: give exactly one of RUN_DIR or --model")
        if data is not None and split is not None:
            raise PrivtuneError("--split: not with --data (the file is the evaluation set)")
        given = {"--task": task, "--template": template, "--verbalizer": verbalizer, "--label-names": label_names,
                 "--choice-score": choice_score, "--max-new-tokens": max_new_tokens}
        if run_dir is not None:
            flag = next((f for f, v in given.items() if v is not None), None)
            if flag is not None:
                raise PrivtuneError(f"{flag}: not with RUN_DIR (the run's config.yaml defines its task)")
            result = evaluate_run(run_dir, split=split or "dev", limit=limit, callback=progress, data=data)
        else:
            name = task if task is not None else ("custom" if data is not None else "sst2")
            if name == "custom":
                missing = next((f for f in ("--template", "--verbalizer") if given[f] is None), None)
                if missing is not None:
                    raise PrivtuneError(f"{missing}: required with --model --data (or name a built-in task's with "
                                        "--task)")
            result = evaluate_base(model, name, split=split or "dev", limit=limit, template=template,
                                   verbalizer=_list(verbalizer), label_names=_list(label_names), callback=progress,
                                   data=data, choice_score=choice_score, max_new_tokens=max_new_tokens)
        if out is not None:
            from ..atomic import atomic_write_json

            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out, result)
        return result

    result = run(go)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_question"}))


def _list(text: str | None) -> list[str] | None:
    return text.split(",") if text is not None else None


def export_cmd(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    out: Path = typer.Option(..., "--out", help="the folder to write (new, or empty)"),
):
    """Write a run's model as a standard transformers folder: merged weights, config and tokenizer.

    AutoModelForCausalLM.from_pretrained(OUT) loads it, whatever the run trained (LoRA adapters are merged)."""
    from ..run.export import export

    result = run(lambda: export(run_dir, out))
    typer.echo(f"exported {result['run_dir']} ({result['base_model']}, trainable {result['trainable']}) to "
               f"{result['out']}: {', '.join(result['files'])}")


def replay(
    run_dir: Path = typer.Argument(..., help="run directory with transcript.jsonl"),
    verify: bool = typer.Option(False, "--verify", help="compare the rebuilt weights with model/ bit for bit"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the rebuilt weights (safetensors)"),
):
    """Rebuild the trained weights from the base model and the transcript (public seeds + released values)."""
    from ..run import replay as RP

    def go():
        state = RP.replay(run_dir)
        if out is not None:
            from ..atomic import atomic_save_tensors

            atomic_save_tensors(out, state)
        return RP.verify(run_dir, state) if verify else (True, f"rebuilt {len(state)} tensors")

    ok, msg = run(go)
    typer.echo(f"replay: {msg}")
    if not ok:
        raise typer.Exit(1)


def forget(
    run_dir: Optional[Path] = typer.Argument(None, help="a run directory whose secrets to delete"),
    stale: Optional[str] = typer.Option(None, "--stale", metavar="DAYS",
                                        help="delete every key whose run directory is gone, finished or idle > DAYS"),
    dry_run: bool = typer.Option(False, "--dry-run", help="with --stale: list, delete nothing"),
):
    """Delete a run's secret key and private state (it can then never resume, and J / the noise are gone for good)."""
    from ..run import forget as F

    def go():
        if (run_dir is None) == (stale is None):
            raise PrivtuneError("forget: give exactly one of RUN_DIR or --stale DAYS")
        if run_dir is not None:
            return F.forget_run(run_dir)
        try:
            days = float(stale)
        except ValueError:
            raise PrivtuneError(f"--stale: must be a number of days >= 0, got {stale!r}") from None
        return F.stale(days) if dry_run else F.forget_stale(days)

    result = run(go)
    if run_dir is not None:
        if result:
            kinds = {".key": "secret key", ".json": "key record", ".pt": "private state"}
            what = ", ".join(kinds.get(p.suffix, p.name) for p in result)
            typer.echo(f"forgot {run_dir}: deleted its {what} from {cache_dir()}; it can no longer be resumed")
        else:
            typer.echo(f"nothing to forget for {run_dir}: no secret key or private state in {cache_dir()}")
        return
    verb = "would delete" if dry_run else "deleted"
    for f in result:
        typer.echo(f"{verb} {f.stem} ({f.reason}{'' if f.run_dir is None else f': {f.run_dir}'})")
    if not result:
        typer.echo(f"no stale keys in {cache_dir()}")
    else:
        typer.echo(f"{len(result)} stale key(s) in {cache_dir()}; dry run, nothing deleted" if dry_run else
                   f"{len(result)} stale key(s) deleted from {cache_dir()}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)
    app.command()(replay)
    app.command()(forget)
