"""`privtune privacy convert`: one attacker bound, three views (MI ↔ ε ↔ MIA posterior bound)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ..errors import PrivtuneError
from .common import run

app = typer.Typer(no_args_is_help=True, help="Privacy conversions (MI ↔ ε ↔ MIA posterior bound).")


@app.command("convert")
def privacy_convert(
    mi: Optional[str] = typer.Option(None, "--mi", help="mutual information budget, nats"),
    epsilon: Optional[str] = typer.Option(None, "--epsilon", help="DP ε (at --delta)"),
    posterior: Optional[str] = typer.Option(None, "--posterior", help="MIA posterior bound (success probability)"),
    delta: str = typer.Option("0", "--delta", help="δ for the ε ↔ posterior conversion"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
):
    """One attacker bound, three views: privtune privacy convert (--mi X | --epsilon E [--delta D] | --posterior P)"""
    from ..privacy import privacy_views

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

    views = run(go)
    if as_json:
        typer.echo(json.dumps({k: (v if v != float("inf") else "inf") for k, v in views.items()}))
        return
    rows = [("MIA posterior bound", f"{views['posterior']:.4f}"), ("MI (nats)", f"{views['mi_nats']:.4f}"),
            (f"epsilon (delta={views['delta']:g})", f"{views['epsilon']:.4f}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value:>8}")
