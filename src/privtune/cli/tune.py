"""`privtune tune`: private hyper-parameter selection over DP runs (the library side: privtune.run.tune)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import Progress, fail, run
from .train import OVERRIDES_HELP


def tune(
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file of a DP method (dpzero, "
                                          "dpzo, dpsgd)"),
    grid: List[str] = typer.Option(..., "--grid", help="a key and its candidate values, e.g. method.lr=0.03,0.1,0.3 "
                                   "(repeat for more keys: the candidates are every combination)"),
    val: Path = typer.Option(..., "--val", help="the private validation file, in the task's format; its score is "
                             "noised and accounted"),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="ε of the whole selection (each run's "
                                            "method.epsilon is set to fit it); without it the runs keep the "
                                            "config's budget and the selection's ε is reported"),
    runs: float = typer.Option(3.0, "--runs", help="expected number of runs (K is drawn at random and kept secret)"),
    shape: float = typer.Option(1.0, "--shape", help="shape of K's truncated negative binomial: 1 geometric, "
                                "0 logarithmic"),
    score_std: float = typer.Option(0.01, "--score-std", help="noise std on the validation score (accuracy or F1, "
                                    "as a fraction)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or status lines"),
):
    """Choose hyper-parameters of a DP run on private data, with the choice accounted (Papernot & Steinke 2022).

    Runs the config a random, secret number of times, each with a candidate drawn from the grid, scores each on
    --val with noise, and keeps only the best: out_dir is that run, with tune.json and the whole selection's (ε, δ)
    in privacy.json. Example: privtune tune -c configs/sst2_dpzero.yaml --grid method.lr=0.2,0.6 --val my_val.tsv
    --epsilon 2 out_dir=runs/tuned
    """
    from ..run.tune import parse_grid, tune as run_tune

    def go():
        try:
            return run_tune(config, list(overrides or []), parse_grid(grid), val, epsilon=epsilon, runs=runs,
                            shape=shape, score_std=score_std, callback=Progress("tune", quiet))
        except KeyboardInterrupt:  # a tune cannot be resumed (common.run would suggest --resume)
            fail("interrupted: the tune's runs and their keys were deleted and nothing was released", 130)

    record = run(go)
    typer.echo(json.dumps(record))
    if not quiet:
        chosen = " ".join(f"{k}={v}" for k, v in record["chosen"].items())
        score = record["noisy_score"]
        typer.echo(f"tune: chose {chosen} · noisy validation {score['metric']} {score['value']:.1%} · "
                   f"(ε={record['epsilon']:.3g}, δ={record['delta']:g})-DP for the whole selection, MIA posterior ≤ "
                   f"{record['mia_posterior_bound']:.3f} · each run ε={record['run_epsilon']:.3g}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(tune)
