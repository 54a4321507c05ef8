"""privtune command line: parses, validates, calls the library, prints. Bad input → one line on stderr, exit 2.

One module per command group, each registering its commands on `app`; what they share is in common.py. Commands
import the library inside their bodies, so `privtune --help` and `privtune privacy convert` start without torch.
"""

from __future__ import annotations

import logging

import typer

from . import audit, offsite, privacy, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Private post-training of language models.")
app.add_typer(privacy.app, name="privacy")
app.add_typer(offsite.app, name="offsite")
train.register(app)  # train, eval, replay, forget
audit.register(app)  # audit, report


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    app()

