"""`privtune config show [--method M]`: every config key, its default, type and meaning, from the pydantic schema."""

from __future__ import annotations

from typing import Optional

import typer

from .common import run

app = typer.Typer(no_args_is_help=True, help="The run config: every key, its default and meaning.")


@app.command()
def show(method: Optional[str] = typer.Option(None, "--method", "-m", help="only this method's section (e.g. "
                                              "dpzero) beside the shared ones")):
    """Print the config schema with defaults and meanings (the text form of docs/config.md)."""
    from ..schema_doc import render_text

    typer.echo(run(lambda: render_text(method)))
