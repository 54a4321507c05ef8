"""`privtune report`: the privacy–utility frontier of a set of runs, one self-contained report.html (PNG plots
embedded as base64) plus the PNGs.

Reads only run dirs: config.yaml, privacy.json (the proven bound), eval.json (accuracy), metrics.jsonl (curves) and,
if present, audit.json (measured attacks). Runs whose configs differ only in train.seed (and out_dir) form one group:
a frontier point with error bars (± std over seeds).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config as C
from . import rundir as R
from .errors import PrivtuneError
from .privacy.bounds import privacy_views

AUDIT_MODE = "audit mode — not private"  # a run trained with PRIVTUNE_SECRET_SEED (privacy.json secret_source "fixed")


@dataclass
class RunInfo:
    path: Path
    cfg: dict
    privacy: dict
    eval: dict
    audit: dict | None
    metrics: list[dict] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.cfg.get("method", {}).get("name", "?")

    @property
    def audit_mode(self) -> bool:
        """Trained with a fixed secret: reproducible by whoever knows the seed, so its guarantee is nominal only."""
        return self.privacy.get("secret_source") == "fixed"

    @property
    def label(self) -> str:
        m = self.cfg.get("method", {})
        if m.get("name") == "paczero":
            tail = "ZPL" if m.get("mode") == "zpl" else f"MI {m.get('budget')} nats"
            name = f"PACZero-{tail}"
        elif m.get("epsilon") is not None:
            name = f"{m['name']} ε={m['epsilon']:g}"
        else:
            name = str(m.get("name", "?"))
        return f"{name} ({AUDIT_MODE})" if self.audit_mode else name

    @property
    def bound(self) -> float:
        b = self.privacy.get("mia_posterior_bound")
        return 1.0 if b is None else float(b)  # no guarantee: the attacker may always win

    @property
    def views(self) -> dict | None:
        p = self.privacy
        try:
            if p.get("epsilon") is not None:
                return privacy_views(epsilon=float(p["epsilon"]), delta=float(p.get("delta") or 0.0))
            if p.get("mi_nats") is not None:
                return privacy_views(mi=float(p["mi_nats"]))
        except PrivtuneError:
            return None
        return None

    def group_key(self) -> str:
        d = json.loads(json.dumps(self.cfg))
        try:  # fill in defaults, so configs written before a field existed group with newer ones
            from . import config as C

            d = C.build(d).model_dump(mode="json")
        except Exception:  # a config this version cannot build: group on its text as written
            pass
        d.pop("out_dir", None)
        d.get("train", {}).pop("seed", None)
        d["audit_mode"] = self.audit_mode  # a fixed-secret run never averages with private ones
        return json.dumps(d, sort_keys=True)


def load_run(path: Path) -> RunInfo:
    path = Path(path)
    if not (path / R.CONFIG).is_file():
        raise PrivtuneError(f"{path}: not a privtune run directory (no {R.CONFIG})")
    if not (path / R.EVAL).is_file():
        raise PrivtuneError(f"{path / R.EVAL}: missing; the run has not finished")

    def js(name):
        f = path / name
        return json.loads(f.read_text()) if f.is_file() else None

    return RunInfo(path, C.load_yaml(path / R.CONFIG), js(R.PRIVACY) or {}, js(R.EVAL), js("audit.json"),
                   R.read_jsonl(path / R.METRICS))


# ----------------------------------------------------------------------------------------------------- numbers
def groups(runs: list[RunInfo]) -> list[list[RunInfo]]:
    out: dict[str, list[RunInfo]] = {}
    for r in runs:
        out.setdefault(r.group_key(), []).append(r)
    return list(out.values())


def _std(xs) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def group_rows(runs: list[RunInfo]) -> list[dict]:
    rows = []
    for g in groups(runs):
        acc = [r.eval["accuracy"] for r in g]
        bound = [r.bound for r in g]
        rows.append({"label": g[0].label, "method": g[0].method, "seeds": len(g), "bound": float(np.mean(bound)),
                     "bound_std": _std(bound), "accuracy": float(np.mean(acc)), "accuracy_std": _std(acc),
                     "runs": [str(r.path) for r in g]})
    return rows


def run_row(r: RunInfo, group: dict) -> dict:
    v = r.views
    a = (r.audit or {}).get("summary", {})
    return {
        "run": r.path.name, "method": r.label,
        "guarantee": r.privacy.get("guarantee", "none") + (f" ({AUDIT_MODE})" if r.audit_mode else ""),
        "secret_source": r.privacy.get("secret_source"),
        "posterior_bound": r.privacy.get("mia_posterior_bound"),
        "mi_nats": v["mi_nats"] if v else None, "epsilon": v["epsilon"] if v else None,
        "delta": v["delta"] if v else None,
        "audit_auc": a.get("auc"), "audit_tpr_1pct": a.get("tpr_at_0.01_fpr"),
        "audit_posterior": a.get("posterior_success"), "empirical_epsilon": a.get("epsilon_lower_bound"),
        "violation": (r.audit or {}).get("violation"),
        "threat_model": ((r.audit["threat_model"] + (" (bound n/a)" if r.audit["mia_posterior_bound"] is not None
                                                     and not r.audit["bound_applies"] else ""))
                         if r.audit else None),
        "accuracy": r.eval["accuracy"], "accuracy_mean": group["accuracy"], "accuracy_std": group["accuracy_std"],
        "seeds": group["seeds"], "steps": r.eval.get("steps"), "wall_time_s": r.eval.get("wall_time_s"),
        "unanimity_rate": r.privacy.get("unanimity_rate"),
    }


# ------------------------------------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def frontier_png(rows: list[dict], runs: list[RunInfo]) -> bytes:
    """Left: the frontier (bound vs accuracy, ± std over seeds). Right: each audited run's measured posterior
    success (best attack, 95% CI) against its proven bound; a point above the diagonal is a violation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(rows) > 4
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 6.5 if many else 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>"
    color = {}
    ordered = sorted(rows, key=lambda g: (g["bound"], g["label"]))
    at = {}  # groups sharing a bound are spread a little along x so that none hides another
    for g in ordered:
        at.setdefault(round(g["bound"], 2), []).append(g["label"])
    for i, g in enumerate(ordered):
        c = color[g["label"]] = color.get(g["label"], colors[i % len(colors)])
        peers = at[round(g["bound"], 2)]
        dx = (peers.index(g["label"]) - (len(peers) - 1) / 2) * 0.008
        ax.errorbar(g["bound"] + dx, g["accuracy"], xerr=g["bound_std"] or None, yerr=g["accuracy_std"] or None,
                    fmt=markers[i % len(markers)], ms=8, capsize=5, color=c, label=f"{g['label']} (n={g['seeds']})")
        if not many:
            ax.annotate(g["label"], (g["bound"], g["accuracy"]), textcoords="offset points", xytext=(8, 6),
                        fontsize=9)
    ax.set_xlim(0.48, 1.02)
    lo = min(g["accuracy"] - g["accuracy_std"] for g in rows)
    hi = max(g["accuracy"] + g["accuracy_std"] for g in rows)
    pad = max(0.05 - (hi - lo), 0.0) / 2 + 0.01  # at least a 5-point span: no zoom that makes noise look large
    ax.set_ylim(lo - pad, hi + pad)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("MIA posterior bound (attacker success, prior ½; 1.0 = no guarantee)")
    ax.set_ylabel("eval accuracy (mean ± std over seeds)")
    ax.set_title("Privacy–utility frontier")
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    else:
        ax.legend(fontsize=8, loc="lower right")

    bx.plot([0.5, 1.0], [0.5, 1.0], color="grey", lw=1, ls="--", label="measured = proven bound")
    for r in runs:
        if not r.audit:
            continue
        best = max(r.audit["attacks"].values(), key=lambda m: m["posterior_success"])
        lo, hi = best["posterior_success_ci"]
        y = best["posterior_success"]
        covered = r.audit["bound_applies"] or r.audit["mia_posterior_bound"] is None  # no guarantee: bound 1 holds
        bx.errorbar(r.bound, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="s" if covered else "x",
                    ms=7, capsize=4, color=color.get(r.label, "black"))
    bx.set_xlim(0.48, 1.02)
    bx.set_ylim(0.4, 1.02)
    bx.set_xlabel("proven MIA posterior bound")
    bx.set_ylabel("measured posterior success (best attack, 95% CI)")
    bx.set_title("Measured attack vs proven bound\n(■ bound covers the audit's threat model, × it does not)",
                 fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8, loc="upper left")
    out = _png(fig)
    plt.close(fig)
    return out


def curves_png(runs: list[RunInfo]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in runs:
        ev = [(m["step"], m["eval_accuracy"]) for m in r.metrics if "eval_accuracy" in m]
        ev.append((r.eval.get("steps", 0), r.eval["accuracy"]))
        ev = sorted(dict(ev).items())
        a1.plot(*zip(*ev), marker="o", ms=3, label=f"{r.label} · {r.path.name}")
        tl = [(m["step"], m["train_loss"]) for m in r.metrics if "train_loss" in m]
        if tl:
            a2.plot(*zip(*tl), label=f"{r.label} · {r.path.name}")
    a1.set(xlabel="step", ylabel="eval accuracy", title="Eval accuracy")
    a2.set(xlabel="step", ylabel="train loss (batch mean)", title="Train loss (non-private methods only)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=7)
    out = _png(fig)
    plt.close(fig)
    return out


# -------------------------------------------------------------------------------------------------------- html
COLUMNS = [("run", "run"), ("method", "method"), ("guarantee", "guarantee"), ("posterior_bound", "MIA posterior bound"),
           ("mi_nats", "MI (nats)"), ("epsilon", "ε"), ("delta", "δ"), ("audit_auc", "audit AUC"),
           ("audit_tpr_1pct", "TPR@1% FPR"), ("audit_posterior", "measured posterior"),
           ("threat_model", "audit threat model"),
           ("empirical_epsilon", "empirical ε (canaries, 95%)"), ("accuracy", "accuracy"),
           ("accuracy_mean", "accuracy mean ± std"), ("steps", "steps"), ("wall_time_s", "wall time (s)"),
           ("unanimity_rate", "unanimity rate")]


def _fmt(key: str, row: dict) -> str:
    v = row[key]
    if key == "accuracy_mean":
        return f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f} (n={row['seeds']})"
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:g}" if key == "delta" else f"{v:.1f}" if key == "wall_time_s" else f"{v:.4f}"
    return html.escape(str(v))


def render_html(runs: list[RunInfo], rows: list[dict], images: dict[str, bytes]) -> str:
    table_rows = []
    for row in rows:
        bad = (' class="violation"' if row["violation"] else
               ' class="audit-mode"' if row["secret_source"] == "fixed" else "")
        cells = "".join(f'<td data-key="{k}" data-value="{html.escape(json.dumps(row[k]))}">{_fmt(k, row)}</td>'
                        for k, _ in COLUMNS)
        table_rows.append(f"<tr{bad}>{cells}</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    img = {k: base64.b64encode(v).decode() for k, v in images.items()}
    n_viol = sum(bool(r["violation"]) for r in rows)
    warn = (f'<p class="alert">{n_viol} run(s) have a measured attack above the proven bound: a bug to find.</p>'
            if n_viol else "")
    n_audit = sum(r.audit_mode for r in runs)
    if n_audit:
        warn += (f'<p class="alert">{n_audit} run(s) in {AUDIT_MODE}: trained with a fixed secret '
                 "(PRIVTUNE_SECRET_SEED), so whoever knows it can undo the mechanism; their bounds are nominal.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>privtune report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; font-size: 0.85em; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 4px 6px; text-align: right; }}
th {{ background: #f2f2f2; }} td:nth-child(-n+3) {{ text-align: left; }}
tr.violation td {{ background: #fdd; }} tr.audit-mode td {{ background: #ffd; }} .alert {{ color: #b00; font-weight: bold; }}
img {{ max-width: 100%; }} .note {{ color: #555; font-size: 0.85em; }}
</style></head><body>
<h1>privtune: privacy–utility report</h1>
<p class="note">{len(runs)} runs in {len(groups(runs))} configurations. The MIA posterior bound is the proven largest
success probability of a membership-inference attacker facing a fair coin; the measured posterior is the best audit
attack's cross-fitted balanced accuracy (privtune audit). Empirical ε is the one-run canary audit's lower bound
(Steinke, Nasr &amp; Jagielski 2023), where the run has canaries.</p>
{warn}
<h2>Privacy–utility frontier</h2>
<img alt="frontier" src="data:image/png;base64,{img['frontier']}">
<h2>Runs</h2>
<table id="runs"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(table_rows)}
</tbody></table>
<h2>Training curves</h2>
<img alt="training curves" src="data:image/png;base64,{img['curves']}">
</body></html>
"""


def write_report(run_dirs, out) -> Path:
    runs = [load_run(Path(p)) for p in run_dirs]
    if not runs:
        raise PrivtuneError("report: give at least one run directory")
    grows = group_rows(runs)
    by_run = {p: g for g in grows for p in g["runs"]}
    rows = [run_row(r, by_run[str(r.path)]) for r in runs]
    images = {"frontier": frontier_png(grows, runs), "curves": curves_png(runs)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        R.atomic_write_bytes(out / f"{name}.png", data)
    R.atomic_write_json(out / "runs.json", {"groups": grows, "runs": rows})
    path = out / "report.html"
    R.atomic_write_text(path, render_html(runs, rows, images))
    return path
