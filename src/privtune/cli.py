"""privtune command line: parses, validates, calls the library, prints. Bad input → one line on stderr, exit 2."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import PrivtuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Private post-training of language models.")
privacy_app = typer.Typer(no_args_is_help=True, help="Privacy conversions (MI ↔ ε ↔ MIA posterior bound).")
app.add_typer(privacy_app, name="privacy")
from .cli_offsite import app as _offsite_app  # noqa: E402
app.add_typer(_offsite_app, name="offsite")


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


class _Progress:
    """tqdm bar on stderr driven by the library's events (the library itself never prints)."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "warning":  # e.g. audit mode (a fixed secret): shown even with --quiet
            msg = f"warning: {ev['message']}"
            (self.bar.write(msg, file=sys.stderr) if self.bar else typer.echo(msg, err=True))
            return
        if self.quiet:
            return
        from tqdm import tqdm

        if kind == "status":
            typer.echo(ev["message"], err=True)
        elif kind == "start":
            self.bar = tqdm(total=ev["steps"], initial=ev["step"], desc=self.desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        elif kind == "step" and self.bar is not None:
            self.bar.update(ev["step"] - self.bar.n)
            if "train_loss" in ev:
                self.bar.set_postfix(loss=f"{ev['train_loss']:.4f}", refresh=False)
        elif kind == "eval":
            msg = f"eval accuracy at step {ev['step']}: {ev['accuracy']:.4f} ({ev['correct']}/{ev['total']})"
            (self.bar.write(msg, file=sys.stderr) if self.bar else typer.echo(msg, err=True))
        elif kind in ("done", "stopped") and self.bar is not None:
            self.bar.close()


def _run(fn):
    try:
        return fn()
    except PrivtuneError as e:
        if getattr(e, "relayed", False):  # torchrun: rank 0 already printed this error; exit with it quietly
            raise typer.Exit(2)
        _fail(str(e))
    except OSError as e:  # a write the library did not name (it names its own): still one line, exit 2
        _fail(f"{e.filename or 'file'}: {e.strerror or e}")
    except KeyboardInterrupt:
        _fail("interrupted; continue with --resume", 130)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in out_dir from its last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train: privtune train --config FILE [key.sub=value ...]"""
    from .methods import load_config
    from .train import train as run_train

    def go():
        cfg = load_config(config, ctx.args)
        return run_train(cfg, resume=resume, callback=_Progress(cfg.method.name, quiet))

    result = _run(go)
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun only rank 0 prints the result
        typer.echo(json.dumps(result))


@app.command("eval")
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
    from .evaluate import evaluate_base, evaluate_run

    def go():
        if (run_dir is None) == (model is None):
            raise PrivtuneError("eval: give exactly one of RUN_DIR or --model")
        verb = verbalizer.split(",") if verbalizer is not None else None
        if run_dir is not None:
            return evaluate_run(run_dir, split=split, limit=limit)
        return evaluate_base(model, task, split=split, limit=limit, template=template, verbalizer=verb)

    result = _run(go)
    if out is not None:
        from .rundir import atomic_write_json

        atomic_write_json(out, result)
    typer.echo(json.dumps(result))


@app.command()
def replay(
    run_dir: Path = typer.Argument(..., help="run directory with transcript.jsonl"),
    verify: bool = typer.Option(False, "--verify", help="compare the rebuilt weights with model/ bit for bit"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the rebuilt weights (safetensors)"),
):
    """Rebuild the trained weights from the base model and the transcript (public seeds + released values)."""
    from . import replay as RP

    def go():
        state = RP.replay(run_dir)
        if out is not None:
            from .rundir import atomic_save_tensors

            atomic_save_tensors(out, state)
        return RP.verify(run_dir, state) if verify else (True, f"rebuilt {len(state)} tensors")

    ok, msg = _run(go)
    typer.echo(f"replay: {msg}")
    if not ok:
        raise typer.Exit(1)


@app.command()
def forget(
    run_dir: Optional[Path] = typer.Argument(None, help="a run directory whose secrets to delete"),
    stale: Optional[str] = typer.Option(None, "--stale", metavar="DAYS",
                                        help="delete every key whose run directory is gone, finished or idle > DAYS"),
    dry_run: bool = typer.Option(False, "--dry-run", help="with --stale: list, delete nothing"),
):
    """Delete a run's secret key and private state (it can then never resume, and J / the noise are gone for good)."""
    from . import forget as F
    from .models import cache_dir

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

    result = _run(go)
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


from . import cli_audit  # noqa: E402  (privtune audit / report)
cli_audit.register(app)


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    app()


if __name__ == "__main__":
    main()


@privacy_app.command("convert")
def privacy_convert(
    mi: Optional[str] = typer.Option(None, "--mi", help="mutual information budget, nats"),
    epsilon: Optional[str] = typer.Option(None, "--epsilon", help="DP ε (at --delta)"),
    posterior: Optional[str] = typer.Option(None, "--posterior", help="MIA posterior bound (success probability)"),
    delta: str = typer.Option("0", "--delta", help="δ for the ε ↔ posterior conversion"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
):
    """One attacker bound, three views: privtune privacy convert (--mi X | --epsilon E [--delta D] | --posterior P)"""
    from .privacy import privacy_views

    def number(flag: str, text: Optional[str]) -> Optional[float]:
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            raise PrivtuneError(f"{flag}: must be a number, got {text!r}") from None

    def go():
        given = [f for f, v in (("--mi", mi), ("--epsilon", epsilon), ("--posterior", posterior)) if v is not None]
        if len(given) != 1:
            raise PrivtuneError("privacy convert: give exactly one of --mi, --epsilon, --posterior "
                                f"(got {given or 'none'})")
        try:
            return privacy_views(mi=number("--mi", mi), epsilon=number("--epsilon", epsilon),
                                 posterior=number("--posterior", posterior), delta=number("--delta", delta))
        except PrivtuneError as e:  # name the flag, not the library's argument
            head, sep, rest = str(e).partition(":")
            flag = {"mi_nats": "--mi", "mi": "--mi", "epsilon": "--epsilon", "posterior": "--posterior",
                    "delta": "--delta"}.get(head, head)
            raise PrivtuneError(f"{flag}{sep}{rest}") from None

    views = _run(go)
    if as_json:
        typer.echo(json.dumps({k: (v if v != float("inf") else "inf") for k, v in views.items()}))
        return
    rows = [("MIA posterior bound", f"{views['posterior']:.4f}"), ("MI (nats)", f"{views['mi_nats']:.4f}"),
            (f"epsilon (delta={views['delta']:g})", f"{views['epsilon']:.4f}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value:>8}")
