"""`privtune train`, `eval`, `replay` and `forget`: the commands of a run and its run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import PrivtuneError
from ..paths import cache_dir
from .common import Progress, run

def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in out_dir from its last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train: privtune train --config FILE [key.sub=value ...]"""
    from ..methods import load_config
    from ..run.loop import train as run_train

    def go():
        cfg = load_config(config, ctx.args)
        return run_train(cfg, resume=resume, callback=Progress(cfg.method.name, quiet))

    result = run(go)
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun only rank 0 prints the result
        typer.echo(json.dumps(result))


def eval_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="a run directory (evaluates its trained model)"),
    model: Optional[str] = typer.Option(None, "--model", help="evaluate a base model zero-shot instead"),
    task: str = typer.Option("sst2", "--task"),
    split: str = typer.Option("dev", "--split", help="dev/test (the task's eval split) or train"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N examples only"),
    template: Optional[str] = typer.Option(None, "--template"),
    verbalizer: Optional[str] = typer.Option(None, "--verbalizer", help="comma-separated, e.g. ' negative, positive'"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result JSON here"),
):
    """Accuracy of a trained run (RUN_DIR) or of a base model (--model NAME) on a task split."""
    from ..run.evaluate import evaluate_base, evaluate_run

    progress = Progress("eval")

    def go():
        if (run_dir is None) == (model is None):
            raise PrivtuneError("eval: give exactly one of RUN_DIR or --model")
        verb = verbalizer.split(",") if verbalizer is not None else None
        if run_dir is not None:
            return evaluate_run(run_dir, split=split, limit=limit, callback=progress)
        return evaluate_base(model, task, split=split, limit=limit, template=template, verbalizer=verb,
                             callback=progress)

    result = run(go)
    if out is not None:
        from ..atomic import atomic_write_json

        atomic_write_json(out, result)
    typer.echo(json.dumps(result))


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
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(train)
    app.command("eval")(eval_cmd)
    app.command()(replay)
    app.command()(forget)
