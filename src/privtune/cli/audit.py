"""`privtune audit RUN_DIR` and `privtune report RUN_DIR... --out DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PrivtuneError
from .common import Progress, run


def audit(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    attacks: str = typer.Option("loss,conf,zlib,mink,minkpp,ref", "--attacks", help="comma-separated attack names"),
    limit: Optional[int] = typer.Option(500, "--limit", help="at most N members and N non-members (0: all)"),
    bootstrap: int = typer.Option(200, "--bootstrap", help="bootstrap resamples for the confidence intervals"),
    seed: int = typer.Option(0, "--seed", help="seed of the held-out draw, subsampling and bootstrap"),
    secret_seed: Optional[int] = typer.Option(None, "--secret-seed", help="PACZero audit mode: the "
                                              "PRIVTUNE_SECRET_SEED the run was trained with (members = S_J)"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="a shadow run (the same model, task and "
                                             "trainable set trained on other data) the ref attack calibrates "
                                             "against, instead of the base model"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Membership-inference attacks (and the canary audit) on a run; writes RUN_DIR/audit.json."""
    from ..audit import audit_run
    from ..run.rundir import RunDir

    def go():
        names = [a.strip() for a in attacks.split(",") if a.strip()]
        if bootstrap < 10:
            raise PrivtuneError(f"--bootstrap: must be >= 10, got {bootstrap}")
        if limit is not None and limit < 0:
            raise PrivtuneError(f"--limit: must be >= 0, got {limit}")
        return audit_run(run_dir, attacks=names, limit=limit or None, n_boot=bootstrap, seed=seed,
                         secret_seed=secret_seed, reference=reference, callback=Progress("audit", quiet))

    res = run(go)
    bound = res["mia_posterior_bound"]
    shown = "none" if bound is None else f"{bound:.4f}"
    if bound is not None and not res["bound_applies"]:
        shown += " (does not cover this threat model)"
    typer.echo(f"{res['method']} ({res['guarantee']}), threat model {res['threat_model']}: "
               f"{res['n_members']} members vs {res['n_nonmembers']} non-members; MIA posterior bound {shown}")
    typer.echo(f"{'attack':<8} {'AUC':>22} {'TPR@1%FPR':>10} {'TPR@0.1%FPR':>12} {'posterior':>22}")
    for name, m in res["attacks"].items():
        lo, hi = m["auc_ci"]
        plo, phi = m["posterior_success_ci"]
        typer.echo(f"{name:<8} {m['auc']:.4f} [{lo:.4f}, {hi:.4f}] {m['tpr_at_0.01_fpr']:>10.4f} "
                   f"{m['tpr_at_0.001_fpr']:>12.4f} {m['posterior_success']:.4f} [{plo:.4f}, {phi:.4f}]")
    if "subset_rank_p_value" in res:
        ps = ", ".join(f"{a} {p:.3f}" for a, p in res["subset_rank_p_value"].items() if p is not None)
        typer.echo(f"exact subset-rank test (I = 0 ⇒ uniform p): {ps}")
    if "canary" in res:
        c = res["canary"]
        typer.echo(f"canaries: {c['canaries']} ({c['included']} members), ε lower bound "
                   f"{c['epsilon_lower_bound']:.4f} at {c['confidence']:.1%} confidence (δ={c['delta']:g}, "
                   f"best attack {c['best_attack']})" + ("" if c["valid"] else f" — {c['note']}"))
    typer.echo(f"wrote {RunDir(run_dir).audit}")
    if res["violation"]:
        for v in res["violations"]:
            typer.echo(f"VIOLATION: {v}", err=True)
        typer.echo("VIOLATION: a measured attack exceeds the run's proven bound: this is a bug to find", err=True)
        raise typer.Exit(1)


def report(
    run_dirs: List[Path] = typer.Argument(..., help="run directories, and/or frontier sweep files "
                                          "(benchmarks/frontier.py's frontier_<task>.json)"),
    out: Path = typer.Option(..., "--out", help="output folder for report.html and the PNGs"),
):
    """Privacy–utility frontier report: report.html (plots embedded) + PNGs, one frontier per task and model."""
    from ..report import write_report

    path = run(lambda: write_report(run_dirs, out))
    typer.echo(json.dumps({"report": str(path)}))


def register(app: typer.Typer) -> None:
    app.command()(audit)
    app.command()(report)
