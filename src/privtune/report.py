"""`privtune report`: the privacy–utility frontier of a set of runs and frontier sweeps, one self-contained
report.html (PNG plots embedded as base64) plus the PNGs and runs.json.

Reads run dirs — config.yaml, privacy.json (the proven bound), eval.json (accuracy; its initial_accuracy is the
zero-shot floor), metrics.jsonl (curves) and, if present, audit.json (measured attacks) — and sweep files
(benchmarks/frontier.py's frontier_<task>.json: `rows` of method, mia_posterior_bound, epsilon, mi_nats,
accuracy_mean, accuracy_std, seeds, cpu_s).

Accuracies are comparable only on one eval set with one model, so the page has one section ("panel") per (task,
model), each with its own frontier, zero-shot floor, fo ceiling and tables; a sweep file is a panel of its own. Runs
whose configs differ only in train.seed (and out_dir) form one configuration: a frontier point with error bars (± std
over seeds). Points of one mechanism whose configs differ only in the privacy level are joined by a line.
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
from . import methods as M
from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .errors import PrivtuneError
from .privacy.bounds import privacy_views
from .run.rundir import RunDir

# What a run's privacy.json "guarantee" promises about membership: a privacy guarantee (DP, PAC), nothing ("none"), or
# a bound on the generalization gap only (BBoxER), whose MI figure is vacuous and must not read as privacy.
PRIVACY, NO_GUARANTEE, GENERALIZATION = "privacy", "none", "generalization"
NOT_PRIVACY = "generalization bound, not a privacy guarantee"
# The frontier line that is no method: the untrained model (the floor), a sweep row or each run's step-0 eval.
ZERO_SHOT = "zero-shot"
# Every frontier line (a method's mechanism, as sweep rows name them) → (display name, guarantee), from the registry.
MECHANISMS = {ZERO_SHOT: (ZERO_SHOT, "none")}
# A method's lines → how the report draws them (Method.frontier_role: None, a point; "ceiling", a horizontal line).
ROLES: dict[str, str | None] = {}
for _cls in M.method_classes():
    MECHANISMS.update(_cls.mechanisms())
    ROLES.update(dict.fromkeys(_cls.mechanisms(), _cls.frontier_role))
NAMES = {k: display for k, (display, _) in MECHANISMS.items()}
CEILING = "ceiling"


def is_ceiling(point: dict) -> bool:
    """A frontier point drawn as the ceiling (its method's frontier_role), not as a point on the frontier."""
    return ROLES.get(point["mechanism"]) == CEILING
# Config fields that set a mechanism's privacy level: points whose configs differ only in these lie on one line.
LEVEL_FIELDS = ("method.epsilon", "method.noise_multiplier", "method.delta", "method.budget")
# Task fields that change what is trained on, not what eval accuracy measures: runs differing in them share a panel.
POOL_FIELDS = ("pool_size", "canaries")
AUDIT_MODE = "audit mode — not private"  # trained with PRIVTUNE_SECRET_SEED (privacy.json secret_source "fixed")


def privacy_kind(guarantee) -> str:
    if guarantee in (None, "none"):
        return NO_GUARANTEE
    return GENERALIZATION if str(guarantee).startswith("generalization") else PRIVACY


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
    def method_class(self) -> type[M.Method]:
        """Its registered method (the base class for a method this version does not know: generic labels)."""
        return M.find(self.method) or M.Method

    @property
    def label(self) -> str:
        name = self.method_class.label_of(self.cfg.get("method", {}))
        return f"{name} ({AUDIT_MODE})" if self.audit_mode else name

    @property
    def bound(self) -> float:
        b = self.privacy.get("mia_posterior_bound")
        return 1.0 if b is None else float(b)  # no guarantee: the attacker may always win

    @property
    def views(self) -> dict | None:
        p = self.privacy
        if self.kind != PRIVACY:  # e.g. BBoxER's b·ln 2 nats: a generalization bound, shown as such, not as MI or ε
            return None
        try:
            if p.get("epsilon") is not None:
                return privacy_views(epsilon=float(p["epsilon"]), delta=float(p.get("delta") or 0.0))
            if p.get("mi_nats") is not None:
                return privacy_views(mi=float(p["mi_nats"]))
        except PrivtuneError:
            return None
        return None

    @property
    def kind(self) -> str:
        return privacy_kind(self.privacy.get("guarantee"))

    @property
    def mechanism(self) -> str:
        """The frontier line this run belongs to, named like a sweep row's method (paczero-zpl, dpzero, …)."""
        cls = M.find(self.method)
        return cls.mechanism_of(self.cfg.get("method", {})) if cls is not None else str(self.method)

    def panel_key(self) -> str:
        """Task (every field that changes the eval: data files, prompt, eval limit) and model: accuracies of runs
        with different keys are not comparable, so they go to different panels."""
        d = json.loads(self.group_key())
        task = {k: v for k, v in d.get("task", {}).items() if k not in POOL_FIELDS}
        model = d.get("model", {})
        model = {"name": model.get("name", "tiny"), **({"seed": model.get("seed", 0)}
                                                        if model.get("name", "tiny") == "tiny" else {})}
        return json.dumps({"task": task, "model": model}, sort_keys=True)

    def line_key(self) -> str:
        d = json.loads(self.group_key())
        for path in LEVEL_FIELDS:
            head, _, leaf = path.partition(".")
            d.get(head, {}).pop(leaf, None)
        return json.dumps(d, sort_keys=True)

    def group_key(self) -> str:
        d = json.loads(json.dumps(self.cfg))
        try:  # fill in defaults, so configs written before a field existed group with newer ones
            d = M.build_config(d).model_dump(mode="json")
        except Exception:  # a config this version cannot build: group on its text as written
            pass
        d.pop("out_dir", None)
        d.get("train", {}).pop("seed", None)
        d["audit_mode"] = self.audit_mode  # a fixed-secret run never averages with private ones
        return json.dumps(d, sort_keys=True)


def load_run(path: Path) -> RunInfo:
    run = RunDir.open(path)
    if not run.eval.is_file():
        raise PrivtuneError(f"{run.eval}: missing; the run has not finished")

    def js(f):
        return json.loads(f.read_text()) if f.is_file() else None

    return RunInfo(run.path, run.load_config_dict(), js(run.privacy) or {}, js(run.eval), js(run.audit),
                   run.read_metrics())


# ------------------------------------------------------------------------------------------------- sweep files
@dataclass
class Sweep:
    """A frontier sweep file (benchmarks/frontier.py): one row per (method, privacy level), seeds already averaged."""

    path: Path
    task: str
    model: str
    rows: list[dict]


def _number(path: Path, where: str, v, *, lo: float = -math.inf, hi: float = math.inf, inf_ok: bool = False):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or (math.isinf(v) and not inf_ok) \
            or not lo <= v <= hi:
        raise PrivtuneError(f"{path}: {where}: expected a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def load_sweep(path: Path) -> Sweep:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PrivtuneError(f"{path}: not a readable frontier sweep file ({getattr(e, 'strerror', None) or e})")
    rows = d.get("rows") if isinstance(d, dict) else None
    if not isinstance(rows, list) or not rows:
        raise PrivtuneError(f"{path}: rows: missing or empty (a frontier sweep file holds a list of rows)")
    out = []
    for i, row in enumerate(rows):
        at = f"rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("method"), str) or not row["method"]:
            raise PrivtuneError(f"{path}: {at}.method: missing")
        if row.get("accuracy_mean") is None:
            raise PrivtuneError(f"{path}: {at}.accuracy_mean: missing")
        seeds = row.get("seeds")
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
            raise PrivtuneError(f"{path}: {at}.seeds: expected a whole number >= 1, got {seeds!r}")
        out.append({
            "method": row["method"], "seeds": seeds,
            "accuracy_mean": _number(path, f"{at}.accuracy_mean", row["accuracy_mean"], lo=0, hi=1),
            "accuracy_std": _number(path, f"{at}.accuracy_std", row.get("accuracy_std"), lo=0),
            "mia_posterior_bound": _number(path, f"{at}.mia_posterior_bound", row.get("mia_posterior_bound"),
                                           lo=0.5, hi=1),
            "epsilon": _number(path, f"{at}.epsilon", row.get("epsilon"), lo=0, inf_ok=True),
            "delta": _number(path, f"{at}.delta", row.get("delta"), lo=0, hi=1),
            "mi_nats": _number(path, f"{at}.mi_nats", row.get("mi_nats"), lo=0, inf_ok=True),
            "cpu_s": _number(path, f"{at}.cpu_s", row.get("cpu_s"), lo=0),
        })
    task = d.get("task") or path.stem.removeprefix("frontier_")
    return Sweep(path, str(task), str(d.get("model") or "model not recorded in the file"), out)


def _sweep_kind(method: str, row: dict) -> tuple[str, str]:
    """(privacy kind, guarantee) of a sweep row, from its method (the file has no privacy.json to read)."""
    if row["epsilon"] is not None and math.isinf(row["epsilon"]):
        return NO_GUARANTEE, "none"
    guarantee = MECHANISMS.get(method, (method, "dp"))[1]  # a line no method draws: read as DP (sweeps are DP's)
    return privacy_kind(guarantee), guarantee


def sweep_points(sweep: Sweep) -> list[dict]:
    """Frontier points of a sweep, shaped like group_rows' (the zero-shot row included: it becomes the floor)."""
    points = []
    for row in sweep.rows:
        m = row["method"]
        kind, guarantee = _sweep_kind(m, row)
        eps, mi = row["epsilon"], row["mi_nats"]
        level = (f" ε={eps:g}" if guarantee == "dp" and eps is not None else
                 f" {mi:.3g} nats" if guarantee == "pac-mi" and mi is not None else "")
        private = kind == PRIVACY
        points.append({
            "label": NAMES.get(m, m) + level, "method": m, "mechanism": m, "line": NAMES.get(m, m), "kind": kind,
            "guarantee": guarantee, "seeds": row["seeds"],
            "bound": row["mia_posterior_bound"] if private and row["mia_posterior_bound"] is not None else 1.0,
            "bound_std": 0.0, "mi_nats": mi if private else None, "epsilon": eps if private else None,
            "delta": row["delta"] if private else None, "accuracy": row["accuracy_mean"],
            "accuracy_std": row["accuracy_std"] or 0.0, "time_s": row["cpu_s"], "runs": []})
    return points


# ----------------------------------------------------------------------------------------------------- numbers
def groups(runs: list[RunInfo]) -> list[list[RunInfo]]:
    out: dict[str, list[RunInfo]] = {}
    for r in runs:
        out.setdefault(r.group_key(), []).append(r)
    return list(out.values())


def _std(xs) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def _differences(configs: list[dict], most: int = 3) -> list[str]:
    """Per config, the fields in which these configs differ, as "key=value" text: what tells two points apart when
    their names alone do not."""
    flats = [_flat(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    out = []
    for f in flats:
        parts = [f"{k}={_short(f.get(k))}" for k in varying[:most]]
        out.append(", ".join(parts) + (", …" if len(varying) > most else ""))
    return out


def _short(text: str | None) -> str:
    if text is None:
        return "unset"
    v = json.loads(text)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _disambiguate(names: list[str], configs: list[dict]) -> list[str]:
    """Names shared by several configs get the config fields that differ among those appended."""
    out = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len({json.dumps(configs[i], sort_keys=True) for i in idx}) > 1:  # equal configs: one line, one name
            for i, diff in zip(idx, _differences([configs[i] for i in idx])):
                out[i] = f"{name} · {diff}"
    return out


def group_rows(runs: list[RunInfo]) -> list[dict]:
    """One frontier point per configuration (runs differing only in seed): accuracy and bound mean ± std."""
    rows, gs = [], groups(runs)
    for g in gs:
        acc = [r.eval["accuracy"] for r in g]
        bound = [r.bound for r in g]
        views = [r.views for r in g]
        rows.append({"label": g[0].label, "method": g[0].method, "mechanism": g[0].mechanism, "kind": g[0].kind,
                     "guarantee": g[0].privacy.get("guarantee", "none"), "seeds": len(g),
                     "bound": float(np.mean(bound)), "bound_std": _std(bound),
                     **{k: _mean([v[k] if v else None for v in views]) for k in ("mi_nats", "epsilon", "delta")},
                     "accuracy": float(np.mean(acc)), "accuracy_std": _std(acc),
                     "time_s": _mean([r.eval.get("wall_time_s") for r in g]), "runs": [str(r.path) for r in g]})
    labels = _disambiguate([r["label"] for r in rows], [json.loads(g[0].group_key()) for g in gs])
    lines = _disambiguate([NAMES.get(g[0].mechanism, g[0].mechanism) + (f" ({AUDIT_MODE})" if g[0].audit_mode else "")
                           for g in gs], [json.loads(g[0].line_key()) for g in gs])
    for row, label, line in zip(rows, labels, lines):
        row["label"], row["line"] = label, line
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
        "unanimity_rate": r.privacy.get("unanimity_rate"), "kind": r.kind,
        "initial_accuracy": r.eval.get("initial_accuracy"),
    }


# ------------------------------------------------------------------------------------------------------ panels
@dataclass
class Panel:
    """One frontier: the runs of one (task, model), or one sweep file."""

    task: str
    model: str
    detail: str  # the non-default task fields (prompt, data files, eval limit): what else identifies the eval
    source: str  # "runs", or the sweep file's name
    points: list[dict]  # frontier points (zero-shot excluded; a ceiling method's kept: it is drawn as the ceiling)
    runs: list[RunInfo] = field(default_factory=list)
    floor: dict | None = None  # zero-shot accuracy: {"accuracy", "accuracy_std", "seeds", "note"}

    @property
    def title(self) -> str:
        head = f"Task {self.task} · model {self.model}"
        return head if self.source == "runs" else f"{head} · sweep {self.source}"

    @property
    def ceiling(self) -> list[dict]:
        return [p for p in self.points if is_ceiling(p)]


def _task_detail(task: dict) -> str:
    """The task fields set away from their defaults, e.g. the paper's template: two panels of one task name differ
    in these, and the heading must say how."""
    default = C.TaskCfg().model_dump(mode="json")
    parts = [f"{k} {json.dumps(v, ensure_ascii=False)}" for k, v in task.items()
             if k != "name" and k not in POOL_FIELDS and v is not None and v != default.get(k)]
    return " · ".join(parts)


def run_floor(runs: list[RunInfo]) -> dict | None:
    """Zero-shot floor: the step-0 eval every run records (eval.json initial_accuracy) before it trains."""
    accs = [r.eval["initial_accuracy"] for r in runs if r.eval.get("initial_accuracy") is not None]
    if not accs:
        return None
    lo, hi = min(accs), max(accs)
    note = (f"step-0 accuracy of {len(accs)} run(s) (eval.json initial_accuracy)" +
            (f", ranging {lo:.4f}–{hi:.4f}: their initial models differ" if hi - lo > 1e-9 else ""))
    # seeds None: these are runs of one base model, not seeds of a zero-shot eval (which has no randomness)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": _std(accs), "seeds": None, "note": note}


def make_panels(runs: list[RunInfo], sweeps: list[Sweep]) -> list[Panel]:
    by: dict[str, list[RunInfo]] = {}
    for r in runs:
        by.setdefault(r.panel_key(), []).append(r)
    panels = []
    for key, rs in by.items():
        k = json.loads(key)
        model = k["model"]["name"] + (f" (seed {k['model']['seed']})" if k["model"].get("seed") else "")
        panels.append(Panel(task=str(k["task"].get("name", "?")), model=model,
                            detail=_task_detail(k["task"]), source="runs", points=group_rows(rs), runs=rs,
                            floor=run_floor(rs)))
    panels.sort(key=lambda p: (p.task, p.model, p.detail))  # a task's default prompt before its variants
    for s in sweeps:
        pts = sweep_points(s)
        zero = [p for p in pts if p["mechanism"] == ZERO_SHOT]
        floor = ({"accuracy": zero[0]["accuracy"], "accuracy_std": zero[0]["accuracy_std"],
                  "seeds": zero[0]["seeds"], "note": "the sweep's zero-shot row"} if zero else None)
        panels.append(Panel(task=s.task, model=s.model, detail="", source=s.path.name,
                            points=[p for p in pts if p["mechanism"] != ZERO_SHOT], floor=floor))
    return panels


# ------------------------------------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


MARKERS = "osD^vP*Xh<>"


def _line_styles(panel: Panel) -> dict[str, tuple[str, str]]:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({p["line"] for p in panel.points if not is_ceiling(p)},
                   key=lambda n: (min(p["bound"] for p in panel.points if p["line"] == n), n))
    return {n: (colors[i % len(colors)], MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def _seeds_text(pts: list[dict]) -> str:
    ns = sorted({p["seeds"] for p in pts if p["seeds"] is not None})
    return "" if not ns else f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def frontier_figure(panel: Panel):
    """Left: the frontier — each point at its exact proven bound (x) and mean accuracy (y); one line per mechanism;
    zero-shot floor and fo ceiling as horizontal lines. Right (when some run was audited): each audited run's
    measured posterior success (best attack, 95% CI) against its proven bound; above the diagonal is a violation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audited = [r for r in panel.runs if r.audit]
    if audited:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(9, 5.2))
        bx = None
    style = _line_styles(panel)
    ys = []
    for name, (c, mk) in style.items():
        pts = sorted((p for p in panel.points if p["line"] == name), key=lambda p: p["bound"])
        kind = pts[0]["kind"]
        tag = {NO_GUARANTEE: ", no guarantee", GENERALIZATION: ", generalization bound only"}.get(kind, "")
        seeds = _seeds_text(pts)
        x = [p["bound"] for p in pts]  # exact: nothing is shifted, overlaps are told apart by marker shape
        y = [p["accuracy"] for p in pts]
        yerr = [p["accuracy_std"] for p in pts]
        xerr = [p["bound_std"] for p in pts]
        ax.errorbar(x, y, yerr=yerr if any(yerr) else None, xerr=xerr if any(xerr) else None,
                    fmt=f"{mk}-" if len(pts) > 1 else mk, ms=8, capsize=4, color=c, alpha=0.9, mec="white",
                    label=f"{name} ({seeds}{tag})" if seeds else f"{name}{' (' + tag[2:] + ')' if tag else ''}")
        ys += [a - s for a, s in zip(y, yerr)] + [a + s for a, s in zip(y, yerr)]
    if panel.floor:
        f = panel.floor
        ax.axhline(f["accuracy"], color="0.35", ls="--", lw=1.2, label=f"zero-shot floor {f['accuracy']:.1%}")
        if f["accuracy_std"]:
            ax.axhspan(f["accuracy"] - f["accuracy_std"], f["accuracy"] + f["accuracy_std"], color="0.35", alpha=0.08)
        ys += [f["accuracy"] - f["accuracy_std"], f["accuracy"] + f["accuracy_std"]]
    for p in panel.ceiling:
        sd = f" ± {p['accuracy_std']:.1%}" if p["accuracy_std"] else ""
        ax.axhline(p["accuracy"], color="black", ls=":", lw=1.4,
                   label=f"{p['label']} ceiling {p['accuracy']:.1%}{sd} (non-private first-order"
                         f"{', ' + _seeds_text([p]) if p['seeds'] else ''})")
        if p["accuracy_std"]:
            ax.axhspan(p["accuracy"] - p["accuracy_std"], p["accuracy"] + p["accuracy_std"], color="black", alpha=0.06)
        ys += [p["accuracy"] - p["accuracy_std"], p["accuracy"] + p["accuracy_std"]]
    ax.set_xlim(0.48, 1.02)
    ax.set_xticks([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], ["0.5", "0.6", "0.7", "0.8", "0.9", "1.0\n(none)"])
    ys = ys or [p["accuracy"] for p in panel.points] or [0.5]  # e.g. a panel of fo runs only, with no floor
    lo, hi = min(ys), max(ys)
    pad = max(0.05 - (hi - lo), 0.0) / 2 + 0.01  # at least a 5-point span: no zoom that makes noise look large
    ax.set_ylim(lo - pad, hi + pad)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("MIA posterior bound: proven attacker success at prior ½\n(lower is more private; 1.0 = no "
                  "privacy guarantee)")
    ax.set_ylabel("eval accuracy (mean ± std over seeds)")
    ax.set_title("Privacy–utility frontier · better is up-left ↖")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)

    if bx is not None:
        line_of = {path: p["line"] for p in panel.points for path in p["runs"]}
        bx.plot([0.5, 1.0], [0.5, 1.0], color="grey", lw=1, ls="--", label="measured = proven bound")
        for r in audited:
            best = max(r.audit["attacks"].values(), key=lambda m: m["posterior_success"])
            lo, hi = best["posterior_success_ci"]
            y = best["posterior_success"]
            covered = r.audit["bound_applies"] or r.audit["mia_posterior_bound"] is None  # no guarantee: 1 holds
            c, _ = style.get(line_of.get(str(r.path)), ("black", "s"))
            bx.errorbar(r.bound, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="s" if covered else "x",
                        ms=7, capsize=4, color=c)
        bx.set_xlim(0.48, 1.02)
        bx.set_ylim(0.4, 1.02)
        bx.set_xlabel("proven MIA posterior bound")
        bx.set_ylabel("measured posterior success (best attack, 95% CI)")
        bx.set_title("Measured attack vs proven bound\n(■ bound covers the audit's threat model, × it does not)",
                     fontsize=10)
        bx.grid(alpha=0.3)
        bx.legend(fontsize=8, loc="upper left")
    return fig


def frontier_png(panel: Panel) -> bytes:
    import matplotlib.pyplot as plt

    fig = frontier_figure(panel)
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
    if a1.lines:  # one legend for both (same runs, same colours), below the plots so it covers no curve
        a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(1.1, -0.16), ncol=3, frameon=False)
    out = _png(fig)
    plt.close(fig)
    return out


# -------------------------------------------------------------------------------------------------------- html
COLUMNS = [("run", "run"), ("method", "method"), ("guarantee", "guarantee"), ("posterior_bound", "MIA posterior bound"),
           ("mi_nats", "MI (nats)"), ("epsilon", "ε"), ("audit_auc", "audit AUC"),
           ("audit_tpr_1pct", "TPR@1% FPR"), ("audit_posterior", "measured posterior"),
           ("threat_model", "audit threat model"),
           ("empirical_epsilon", "empirical ε (canaries, 95%)"), ("accuracy", "accuracy"),
           ("steps", "steps"), ("wall_time_s", "wall time (s)"), ("unanimity_rate", "unanimity rate")]
# δ is in the configurations table's guarantee and in runs.json: one column less keeps the table inside 1280 px
PRIVACY_COLUMNS = ("posterior_bound", "mi_nats", "epsilon")  # one cell when the run has no privacy bound


def _fmt(key: str, row: dict) -> str:
    v = row[key]
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if key in ("mi_nats", "epsilon"):  # derived views: 4 significant digits say enough, and keep the table narrow
            return f"{v:.4g}"
        return f"{v:g}" if key == "delta" else f"{v:.1f}" if key == "wall_time_s" else f"{v:.4f}"
    return html.escape(str(v))


def _cell(key: str, row: dict, text: str | None = None, span: int = 1) -> str:
    colspan = f' colspan="{span}" class="text"' if span > 1 else ""
    return (f'<td data-key="{key}" data-value="{html.escape(json.dumps(row[key]))}"{colspan}>'
            f'{_fmt(key, row) if text is None else text}</td>')


def _runs_table(rows: list[dict], table_id: str) -> str:
    table_rows = []
    for row in rows:
        bad = (' class="violation"' if row["violation"] else
               ' class="audit-mode"' if row["secret_source"] == "fixed" else "")
        cells = []
        for k, _ in COLUMNS:
            if k in PRIVACY_COLUMNS and row["kind"] == GENERALIZATION:  # BBoxER: its MI bound is vacuous, ε ∞
                if k == "posterior_bound":
                    cells.append(_cell(k, row, NOT_PRIVACY, span=len(PRIVACY_COLUMNS)))
                continue
            cells.append(_cell(k, row, "none" if k == "posterior_bound" and row["kind"] == NO_GUARANTEE else None))
        table_rows.append(f"<tr{bad}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    return (f'<div class="table-box"><table class="runs" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(table_rows) + "\n</tbody></table></div>")


def _guarantee_text(p: dict) -> str:
    if p["guarantee"] == "pac-zpl" or (p["guarantee"].startswith("pac") and p["mi_nats"] == 0):
        return "PAC, I = 0 (zero privacy loss)"
    if p["guarantee"].startswith("pac"):
        return "PAC, MI ≤ —" if p["mi_nats"] is None else f"PAC, MI ≤ {p['mi_nats']:.3g} nats"
    eps = "—" if p["epsilon"] is None else "∞" if math.isinf(p["epsilon"]) else f"{p['epsilon']:.3g}"
    delta = "" if p["delta"] is None else f", δ={p['delta']:g}"
    return f"(ε={eps}{delta})-DP" if p["guarantee"] == "dp" else f"{html.escape(p['guarantee'])}: ε={eps}{delta}"


def _points_table(panel: Panel) -> str:
    """One row per configuration (runs) or sweep row: what the frontier plots, in numbers."""
    time_head = "wall time (s, mean)" if panel.source == "runs" else "CPU time (s)"
    heads = ("configuration", "MIA posterior bound", "guarantee", "accuracy mean ± std (n)", "vs zero-shot", time_head)
    head = "".join('<th class="text">' + h + "</th>" if h in ("configuration", "guarantee") else f"<th>{h}</th>"
                   for h in heads)
    f = panel.floor
    body = []
    if f:
        sd = f" ± {f['accuracy_std']:.4f}" if f["accuracy_std"] else ""
        n = f" (n={f['seeds']})" if f["seeds"] else ""
        body.append(f'<tr class="floor"><td>zero-shot (floor)</td><td colspan="2" class="text">trains on nothing: '
                    f'no data to leak</td><td>{f["accuracy"]:.4f}{sd}{n}</td><td>—</td><td>—</td></tr>')
    order = {PRIVACY: 0, GENERALIZATION: 1, NO_GUARANTEE: 2}
    for p in sorted(panel.points, key=lambda p: (is_ceiling(p), order[p["kind"]], p["bound"], p["label"])):
        if p["kind"] == PRIVACY:
            sd = f" ± {p['bound_std']:.4f}" if p["bound_std"] else ""
            privacy = f"<td>{p['bound']:.4f}{sd}</td><td class=\"text\">{_guarantee_text(p)}</td>"
        else:
            text = NOT_PRIVACY if p["kind"] == GENERALIZATION else "no privacy guarantee"
            privacy = f'<td colspan="2" class="text">{text}</td>'
        n = "" if p["seeds"] is None else f" (n={p['seeds']})"
        acc = f"{p['accuracy']:.4f} ± {p['accuracy_std']:.4f}{n}" if p["accuracy_std"] else f"{p['accuracy']:.4f}{n}"
        gain = f"{(p['accuracy'] - f['accuracy']) * 100:+.1f} points" if f else "—"
        t = "—" if p["time_s"] is None else f"{p['time_s']:.1f}"
        tag = ' class="ceiling"' if is_ceiling(p) else ""
        body.append(f"<tr{tag}><td>{html.escape(p['label'])}</td>{privacy}<td>{acc}</td><td>{gain}</td>"
                    f"<td>{t}</td></tr>")
    return (f'<div class="table-box"><table class="points"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def _caption(panel: Panel) -> str:
    f = panel.floor
    floor = (f"Dashed: the zero-shot floor, {f['accuracy']:.2%} ({html.escape(f['note'])})." if f else
             "No zero-shot floor: " + ("no run here recorded eval.json initial_accuracy." if panel.source == "runs"
                                       else "the sweep has no zero-shot row."))
    labels = sorted({p["label"] for p in panel.ceiling})
    ceiling_methods = " / ".join(sorted(m for m, role in ROLES.items() if role == CEILING))
    ceiling = (f"Dotted: the {html.escape(' / '.join(labels))} ceiling, non-private training of the same trainable "
               "set, what a user would run without a guarantee." if panel.ceiling else
               f"No ceiling: no {ceiling_methods} " + ("run" if panel.source == "runs" else "row") + " in this panel.")
    return (
        "x: the proven MIA posterior bound, the largest success probability of a membership-inference attacker "
        "facing a fair coin — lower is more private, 0.5 means the attacker cannot beat a coin. y: eval accuracy. "
        "<b>Better is up and to the left.</b> Each point is drawn at its exact bound and mean accuracy: no point is "
        "shifted. Points with no privacy guarantee (MeZO, ε = ∞) and BBoxER, whose bound is on generalization, "
        "not on privacy, sit at x = 1.0. Points that share a bound may overlap; they differ in marker shape, and "
        "the table below lists them all. Vertical bars: ± 1 std over seeds (none with one seed); horizontal bars: "
        "the bound's spread over seeds. A line joins one mechanism's privacy levels. "
        f"{floor} {ceiling}")


def _panel_html(i: int, panel: Panel, rows: list[dict], img: dict[str, str]) -> str:
    detail = f'<p class="note">{html.escape(panel.detail)}</p>' if panel.detail else ""
    runs = ""
    if panel.runs:
        mine = {str(r.path) for r in panel.runs}
        runs = (f"<h3>Runs</h3>\n{_runs_table([row for row in rows if row['path'] in mine], f'runs-{i + 1}')}\n"
                f"<h3>Training curves</h3>\n"
                f'<img alt="training curves" src="data:image/png;base64,{img[_png_name("curves", i)]}">')
    return f"""<section class="panel" id="panel-{i + 1}">
<h2>{html.escape(panel.title)}</h2>
{detail}
<figure><img alt="frontier: {html.escape(panel.title)}" src="data:image/png;base64,{img[_png_name("frontier", i)]}">
<figcaption class="note">{_caption(panel)}</figcaption></figure>
<h3>Configurations</h3>
{_points_table(panel)}
{runs}
</section>"""


def render_html(runs: list[RunInfo], rows: list[dict], images: dict[str, bytes],
                panels: list[Panel] | None = None) -> str:
    panels = make_panels(runs, []) if panels is None else panels
    img = {k: base64.b64encode(v).decode() for k, v in images.items()}
    rows = [{**row, "path": str(r.path)} for r, row in zip(runs, rows)]
    n_viol = sum(bool(r["violation"]) for r in rows)
    warn = (f'<p class="alert">{n_viol} run(s) have a measured attack above the proven bound: a bug to find.</p>'
            if n_viol else "")
    n_audit = sum(r.audit_mode for r in runs)
    if n_audit:
        warn += (f'<p class="alert">{n_audit} run(s) in {AUDIT_MODE}: trained with a fixed secret '
                 "(PRIVTUNE_SECRET_SEED), so whoever knows it can undo the mechanism; their bounds are nominal.</p>")
    n_sweeps = sum(p.source != "runs" for p in panels)
    what = f"{len(runs)} runs in {len(groups(runs))} configurations" if runs else "no runs"
    what += f" and {n_sweeps} sweep file(s)" if n_sweeps else ""
    index = ("<ul class=\"note\">" + "".join(f'<li><a href="#panel-{i + 1}">{html.escape(p.title)}</a></li>'
                                             for i, p in enumerate(panels)) + "</ul>") if len(panels) > 1 else ""
    body = "\n".join(_panel_html(i, p, rows, img) for i, p in enumerate(panels))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>privtune report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 1.5em 32px; max-width: 1280px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 1.05em; margin: 1.2em 0 0.4em; }}
.table-box {{ max-width: 100%; overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 0.8em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 5px; text-align: right; white-space: nowrap; }}
th {{ background: #f2f2f2; white-space: normal; vertical-align: bottom; min-width: 4em; }}
td.text, th.text, td:first-child, table.runs td:nth-child(-n+3), table.runs th:nth-child(-n+3) {{ text-align: left; }}
td.text, td[data-key="method"], td[data-key="guarantee"], td[data-key="threat_model"] {{ white-space: normal; }}
td[data-key="method"] {{ min-width: 8.5em; }}  /* wraps only long labels */
tr.violation td {{ background: #fdd; }} tr.audit-mode td {{ background: #ffd; }}
tr.floor td, tr.ceiling td {{ background: #f7f7f7; }}
.alert {{ color: #b00; font-weight: bold; }}
figure {{ margin: 0; }} img {{ max-width: 100%; height: auto; }}
.note {{ color: #555; font-size: 0.85em; max-width: 70em; }}
</style></head><body>
<h1>privtune: privacy–utility report</h1>
<p class="note">{what}, in {len(panels)} frontier(s): one per task and model, since accuracies on different eval sets
or models are not comparable. The MIA posterior bound is the proven largest success probability of a
membership-inference attacker facing a fair coin; the measured posterior is the best audit attack's cross-fitted
balanced accuracy (privtune audit). Empirical ε is the one-run canary audit's lower bound (Steinke, Nasr &amp;
Jagielski 2023), where the run has canaries.</p>
{index}
{warn}
{body}
</body></html>
"""


def _png_name(kind: str, i: int) -> str:
    return f"{kind}.png" if i == 0 else f"{kind}-{i + 1}.png"


def write_report(run_dirs, out) -> Path:
    """Run dirs and sweep files (*.json) → out/report.html, one frontier-N.png (and curves-N.png) per panel,
    runs.json."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise PrivtuneError("report: give at least one run directory or frontier sweep file")
    sweeps = [load_sweep(p) for p in paths if p.suffix.lower() == ".json"]
    runs = [load_run(p) for p in paths if p.suffix.lower() != ".json"]
    panels = make_panels(runs, sweeps)
    by_run = {path: g for p in panels for g in p.points for path in g["runs"]}
    rows = [run_row(r, by_run[str(r.path)]) for r in runs]
    images = {}
    for i, panel in enumerate(panels):
        images[_png_name("frontier", i)] = frontier_png(panel)
        if panel.runs:
            images[_png_name("curves", i)] = curves_png(panel.runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "runs.json", {
        "panels": [{"task": p.task, "model": p.model, "detail": p.detail, "source": p.source,
                    "frontier_png": _png_name("frontier", i), "curves_png": _png_name("curves", i) if p.runs else None,
                    "floor": p.floor, "points": p.points} for i, p in enumerate(panels)],
        "groups": [g for p in panels if p.source == "runs" for g in p.points], "runs": rows})
    path = out / "report.html"
    atomic_write_text(path, render_html(runs, rows, images, panels))
    return path
