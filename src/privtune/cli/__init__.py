"""privtune command line: parses, validates, calls the library, prints. Bad input → one line on stderr, exit 2.

One module per command group, each registering its commands on `app`; what they share is in common.py. Commands
import the library inside their bodies, so `privtune --help` and `privtune privacy convert` start without torch.
"""

from __future__ import annotations

import logging

import typer

from .. import __version__
from . import audit, config, offsite, privacy, train, tune

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Private post-training of language models.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"privtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print privtune's version and exit")):
    """Private post-training of language models."""


app.add_typer(config.app, name="config")
app.add_typer(privacy.app, name="privacy")
app.add_typer(offsite.app, name="offsite")
train.register(app)  # train, eval, export, replay, forget
audit.register(app)  # audit, report
tune.register(app)  # tune


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    app()

