"""What every command shares: the one-line error exit, the library-call wrapper, the progress bar."""

from __future__ import annotations

import sys

import typer

from ..errors import PrivtuneError


def fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


class Progress:
    """tqdm bar on stderr driven by the library's events (the library itself never prints)."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet, self.bar = desc, quiet, None
        self.score_bar = None  # evaluation progress (examples scored), apart from the training-step bar

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
            self.desc = ev.get("method", self.desc)  # the run's own method: a resume's label comes from its run dir
            if ev.get("resumed"):
                typer.echo(f"resuming {ev.get('out_dir', 'the run')} from step {ev['step']} of {ev['steps']}", err=True)
            self.bar = tqdm(total=ev["steps"], initial=ev["step"], desc=self.desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        elif kind == "step" and self.bar is not None:
            self.bar.update(ev["step"] - self.bar.n)
            if "train_loss" in ev:
                self.bar.set_postfix(loss=f"{ev['train_loss']:.4f}", refresh=False)
        elif kind == "eval":
            if "f1" in ev:
                msg = f"eval F1 at step {ev['step']}: {ev['f1']:.4f} (exact match {ev['exact_match']:.4f}, {ev['total']})"
            else:
                msg = f"eval accuracy at step {ev['step']}: {ev['accuracy']:.4f} ({ev['correct']}/{ev['total']})"
            (self.bar.write(msg, file=sys.stderr) if self.bar else typer.echo(msg, err=True))
        elif kind in ("done", "stopped") and self.bar is not None:
            self.bar.close()
        elif kind == "score":
            if self.score_bar is None:
                self.score_bar = tqdm(total=ev["total"], desc="eval", unit="ex", dynamic_ncols=True, file=sys.stderr)
            self.score_bar.update(ev["done"] - self.score_bar.n)
            if ev["done"] >= ev["total"]:
                self.score_bar.close()
                self.score_bar = None


def run(fn):
    """fn() with the library's errors turned into one line on stderr and exit code 2."""
    try:
        return fn()
    except PrivtuneError as e:
        if getattr(e, "relayed", False):  # torchrun: rank 0 already printed this error; exit with it quietly
            raise typer.Exit(2)
        fail(str(e))
    except OSError as e:  # a write the library did not name (it names its own): still one line, exit 2
        fail(f"{e.filename or 'file'}: {e.strerror or e}")
    except KeyboardInterrupt:
        fail("interrupted; continue with --resume", 130)
