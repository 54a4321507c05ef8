"""report: runs that differ only in seed form one frontier point (mean ± std); the table shows each run; one frontier
per (task, model); sweep files; and the page checked in a headless browser at 1280 px."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from privtune import atomic as A
from privtune import methods as M
from privtune.cli import app
from privtune.errors import PrivtuneError
from privtune.report import (NOT_PRIVACY, frontier_figure, group_rows, load_run, load_sweep, make_panels,
                             write_report)
from privtune.run import rundir as R

NONE = {"guarantee": "none", "mia_posterior_bound": None}
BBOXER = {"guarantee": "generalization bound", "bits_released": 100, "mi_nats": 69.3147, "epsilon": None,
          "delta": None, "mia_posterior_bound": 1.0}  # as methods/bboxer.py's summary writes it


def dp(eps, bound):
    return {"guarantee": "dp", "epsilon": eps, "delta": 1e-5, "mia_posterior_bound": bound}


def fake_run(path, seed, acc, method=None, privacy=None, task=None, initial=None, audit=None):
    method = method or {"name": "mezo"}
    base = {"task": task or {}, "train": {"seed": seed}, "out_dir": str(path)}
    try:
        cfg = M.build_config({**base, "method": method}).model_dump(mode="json")
    except PrivtuneError:  # a method this version does not have (fo): its config as written
        cfg = {**M.build_config(base).model_dump(mode="json"), "method": method}
    path.mkdir()
    A.atomic_write_text(path / R.CONFIG, yaml.safe_dump(cfg, sort_keys=False))
    ev = {"accuracy": acc, "steps": 10, "wall_time_s": 2.0}
    A.atomic_write_json(path / R.EVAL, ev if initial is None else {**ev, "initial_accuracy": initial})
    A.atomic_write_json(path / R.PRIVACY, privacy or NONE)
    (path / R.METRICS).write_text(json.dumps({"step": 5, "eval_accuracy": acc - 0.1, "train_loss": 0.5}) + "\n")
    if audit:
        A.atomic_write_json(path / "audit.json", audit)
    return path


def test_seeds_group_into_one_point(tmp_path):
    a = fake_run(tmp_path / "a", 0, 0.8)
    b = fake_run(tmp_path / "b", 1, 0.7)
    c = fake_run(tmp_path / "c", 0, 0.6, {"name": "paczero", "mode": "zpl"},
                 {"guarantee": "pac-zpl", "mi_nats": 0.0, "mia_posterior_bound": 0.5, "unanimity_rate": 0.25})
    rows = group_rows([load_run(p) for p in (a, b, c)])
    by = {r["label"]: r for r in rows}
    assert by["mezo"]["seeds"] == 2 and by["mezo"]["accuracy"] == pytest.approx(0.75)
    assert by["mezo"]["accuracy_std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert by["mezo"]["bound"] == 1.0 and by["PACZero-ZPL"]["bound"] == 0.5
    page = write_report([a, b, c], tmp_path / "out").read_text()
    assert "PACZero-ZPL" in page and "0.2500" in page and "0.7500 ± 0.0707 (n=2)" in page


def test_not_a_run_dir(tmp_path):
    with pytest.raises(PrivtuneError, match="not a privtune run directory"):
        write_report([tmp_path], tmp_path / "out")


def test_one_frontier_per_task_and_model(tmp_path):
    """Runs of different tasks, or of one task with another prompt, never share a frontier (their accuracies are
    on different eval sets); each panel's heading names task and model, and says how same-named tasks differ."""
    paper = {"name": "sst2", "template": "{text} It was", "verbalizer": [" terrible", " great"]}
    runs = [fake_run(tmp_path / "sst2_a", 0, 0.80, initial=0.786),
            fake_run(tmp_path / "sst2_b", 1, 0.81, initial=0.786, task={"pool_size": 200}),  # pool: same eval
            fake_run(tmp_path / "agnews", 0, 0.82, task={"name": "agnews"}, initial=0.535),
            fake_run(tmp_path / "paper", 0, 0.70, task=paper, initial=0.52)]
    out = tmp_path / "out"
    page = write_report(runs, out).read_text()
    panels = json.loads((out / "runs.json").read_text())["panels"]
    assert [(p["task"], p["model"]) for p in panels] == [("agnews", "tiny"), ("sst2", "tiny"), ("sst2", "tiny")]
    by = {(p["task"], p["detail"]): p for p in panels}
    assert [len(p["points"]) for p in panels] == [1, 2, 1]  # sst2_a and sst2_b differ in pool_size: two points
    assert by[("agnews", "")]["floor"]["accuracy"] == 0.535 and by[("sst2", "")]["floor"]["accuracy"] == 0.786
    paper_panel = next(p for p in panels if p["detail"])
    assert "It was" in paper_panel["detail"] and paper_panel["points"][0]["runs"] == [str(runs[3])]
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Task agnews · model tiny", "Task sst2 · model tiny",
                                                   "Task sst2 · model tiny"]
    assert {p.name for p in out.iterdir()} >= {"frontier.png", "frontier-2.png", "frontier-3.png", "curves.png"}


def _data_lines(ax) -> dict:
    return {c.get_label(): c.lines[0] for c in ax.containers}


def test_points_at_exact_bounds_with_floor_ceiling_and_direction(tmp_path):
    """No visual offset: every point is drawn at its own bound (points sharing x = 1.0 used to be spread to
    ≈ 1.005); the zero-shot floor and the fo ceiling are horizontal lines; the plot says which way is better."""
    import matplotlib.pyplot as plt

    runs = [fake_run(tmp_path / f"mezo{s}", s, a, initial=0.786) for s, a in enumerate((0.80, 0.81))]
    runs += [fake_run(tmp_path / "bbox", 0, 0.79, {"name": "bboxer"}, BBOXER, initial=0.786),
             fake_run(tmp_path / "fo", 0, 0.85, {"name": "fo", "lr": 1e-3}, NONE, initial=0.786)]
    runs += [fake_run(tmp_path / f"dp{e}", 0, 0.79 + e / 100, {"name": "dpzero", "epsilon": e}, dp(e, b),
                      initial=0.786) for e, b in ((0.5, 0.6225), (2.0, 0.8808))]
    (panel,) = make_panels([load_run(p) for p in runs], [])
    fig = frontier_figure(panel)
    ax = fig.axes[0]
    lines = _data_lines(ax)
    assert list(lines["DPZero (n=1)"].get_xdata()) == [0.6225, 0.8808]  # one line through both levels
    assert list(lines["MeZO (n=2, no guarantee)"].get_xdata()) == [1.0]
    assert list(lines["BBoxER (n=1, generalization bound only)"].get_xdata()) == [1.0]
    assert not any("fo" in k for k in lines)  # fo is the ceiling, not a point
    hlines = {ln.get_label(): ln.get_ydata() for ln in ax.lines if ln.get_label().startswith(("zero-shot", "fo"))}
    assert list(hlines["zero-shot floor 78.6%"]) == [0.786, 0.786]
    (ceiling,) = [v for k, v in hlines.items() if k.startswith("fo ceiling")]
    assert list(ceiling) == [0.85, 0.85]
    assert "better is up-left" in ax.get_title() and "lower is more private" in ax.get_xlabel()
    plt.close(fig)
    page = write_report(runs, tmp_path / "out").read_text()
    assert "no point is shifted" in page and "Better is up and to the left" in page
    assert "zero-shot floor, 78.60%" in page and "the fo ceiling" in page


def _tables(page: str) -> list[list[str]]:
    """Per table: header texts, then each row's cell texts."""
    out = []
    for table in re.findall(r"<table.*?</table>", page, re.S):
        heads = [re.sub(r"<.*?>", "", h) for h in re.findall(r"<th.*?</th>", table, re.S)]
        rows = [[re.sub(r"<.*?>", "", c) for c in re.findall(r"<td.*?</td>", tr, re.S)]
                for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S) if "<td" in tr]
        out.append((heads, rows))
    return out


def test_bboxer_shows_a_generalization_bound_and_accuracy_is_not_repeated(tmp_path):
    bb = fake_run(tmp_path / "bbox", 0, 0.79, {"name": "bboxer"}, BBOXER)
    solo = fake_run(tmp_path / "solo", 0, 0.8123)
    out = tmp_path / "out"
    page = write_report([bb, solo], out).read_text()
    assert "69.3" not in page  # b·ln 2 nats is not shown as MI
    rows = {r["run"]: r for r in json.loads((out / "runs.json").read_text())["runs"]}
    assert rows["bbox"]["mi_nats"] is None and rows["bbox"]["epsilon"] is None
    tables = _tables(page)
    assert len(tables) == 2  # configurations, runs
    for heads, body in tables:
        assert sum("accuracy" in h for h in heads) == 1, heads
        bbox_row = next(r for r in body if r[0] in ("bbox", "bboxer"))
        assert NOT_PRIVACY in bbox_row and not any("∞" in c for c in bbox_row)  # nor as ε = ∞
        solo_row = next(r for r in body if r[0] in ("solo", "mezo"))
        assert sum("0.8123" in c for c in solo_row) == 1, solo_row


SWEEP_ROWS = [
    {"method": "zero-shot", "mia_posterior_bound": 0.5, "epsilon": 0.0, "mi_nats": 0.0, "accuracy_mean": 0.535,
     "accuracy_std": 0.0, "seeds": 1, "cpu_s": 40.0},
    {"method": "fo", "mia_posterior_bound": None, "epsilon": None, "mi_nats": None, "accuracy_mean": 0.88,
     "accuracy_std": 0.004, "seeds": 3, "cpu_s": 300.0},
    {"method": "mezo", "mia_posterior_bound": None, "epsilon": None, "mi_nats": None, "accuracy_mean": 0.819,
     "accuracy_std": 0.006, "seeds": 3, "cpu_s": 200.0},
    {"method": "paczero-zpl", "mia_posterior_bound": 0.5, "epsilon": None, "mi_nats": 0.0, "accuracy_mean": 0.684,
     "accuracy_std": 0.01, "seeds": 3, "cpu_s": 210.0},
] + [{"method": m, "mia_posterior_bound": p, "epsilon": e if m == "dpzero" else None,
      "mi_nats": None if m == "dpzero" else e / 6, "accuracy_mean": a, "accuracy_std": 0.01, "seeds": 3,
      "cpu_s": 250.0}
     for m in ("dpzero", "paczero-mi") for p, e, a in ((0.55, 0.2, 0.60), (0.88, 2.0, 0.69), (0.95, 2.9, 0.70))]


def test_sweep_file_one_line_per_mechanism(tmp_path):
    f = tmp_path / "frontier_agnews.json"
    f.write_text(json.dumps({"rows": SWEEP_ROWS}))  # no task key: taken from the file name
    run = fake_run(tmp_path / "run", 0, 0.8)
    (runs_panel, panel) = make_panels([load_run(run)], [load_sweep(f)])
    assert panel.title == "Task agnews · model model not recorded in the file · sweep frontier_agnews.json"
    assert panel.floor["accuracy"] == 0.535 and [p["accuracy"] for p in panel.ceiling] == [0.88]
    ax = frontier_figure(panel).axes[0]
    lines = _data_lines(ax)
    assert list(lines["DPZero (n=3)"].get_xdata()) == [0.55, 0.88, 0.95]
    assert list(lines["PACZero-MI (n=3)"].get_ydata()) == [0.60, 0.69, 0.70]
    assert list(lines["PACZero-ZPL (n=3)"].get_xdata()) == [0.5] and "MeZO (n=3, no guarantee)" in lines
    page = write_report([run, f], tmp_path / "out").read_text()
    assert "0.6900 ± 0.0100 (n=3)" in page and "+15.5 points" in page and "CPU time (s)" in page


@pytest.mark.parametrize("content, message", [
    ("{", "not a readable frontier sweep file"),
    ('{"rows": []}', "rows: missing or empty"),
    ('{"rows": [{"method": "mezo", "accuracy_mean": 0.8}, {"method": "fo"}]}', r"rows\[1\]\.accuracy_mean: missing"),
    ('{"rows": [{"method": "dpzero", "accuracy_mean": 0.8, "mia_posterior_bound": 0.2}]}',
     r"rows\[0\]\.mia_posterior_bound: expected a number in \[0.5, 1\]"),
])
def test_bad_sweep_file_is_one_line_exit_2(tmp_path, content, message):
    f = tmp_path / "frontier_x.json"
    f.write_text(content)
    r = CliRunner().invoke(app, ["report", str(f), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert re.match(rf"error: {re.escape(str(f))}: {message}", r.stderr), r.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- the page in a real browser
MEASURE = """<script>
window.addEventListener("load", () => {
  const de = document.documentElement, box = el => el.getBoundingClientRect();
  const m = {inner: window.innerWidth, client: de.clientWidth, scroll: de.scrollWidth,
    boxes: [...document.querySelectorAll(".table-box")].map(b => ({left: box(b).left, right: box(b).right,
      width: b.clientWidth, table: b.querySelector("table").scrollWidth, overflow: getComputedStyle(b).overflowX})),
    images: [...document.images].map(i => ({left: box(i).left, right: box(i).right, natural: i.naturalWidth})),
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent)};
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(m);
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            break
    else:
        pytest.skip("no headless Chromium on this machine (scripts/setup.sh installs the Debian package "
                    "`chromium` where apt-get is available): the report's 1280-px check cannot run")
    try:
        v = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{path} does not start ({e}): the report's 1280-px check cannot run")
    if v.returncode != 0:  # e.g. Ubuntu's snap stub outside snapd
        pytest.skip(f"{path} --version failed ({(v.stderr or v.stdout).strip()[-200:]}): the 1280-px check cannot run")
    return path


def test_page_fits_1280_px_in_headless_chromium(tmp_path):
    """The page as a user opens it: rendered by Chromium at a 1280-px viewport, no horizontal page scroll; every
    table box and image inside the side margins; a table wider than its box scrolls inside it."""
    browser = _browser()
    aud = {"threat_model": "pool-vs-heldout", "mia_posterior_bound": 0.8808, "bound_applies": True,
           "violation": False, "attacks": {"loss": {"posterior_success": 0.51, "posterior_success_ci": [0.48, 0.54]}},
           "summary": {"auc": 0.52, "tpr_at_0.01_fpr": 0.02, "posterior_success": 0.51, "epsilon_lower_bound": 0.0}}
    runs = [fake_run(tmp_path / f"sst2_mezo_seed{s}", s, 0.80 + s / 100, initial=0.786) for s in range(2)]
    runs += [fake_run(tmp_path / "sst2_paczero_mi_budget0.33_seed0", 0, 0.797,
                      {"name": "paczero", "mode": "mi", "budget": 0.33},
                      {"guarantee": "pac-mi", "mi_nats": 0.33, "mia_posterior_bound": 0.8787,
                       "unanimity_rate": 0.61}, initial=0.786),
             fake_run(tmp_path / "sst2_dpzero_epsilon2_seed0", 0, 0.797, {"name": "dpzero", "epsilon": 2.0},
                      dp(2.0, 0.8808), initial=0.786, audit=aud),
             fake_run(tmp_path / "sst2_dpzero_epsilon2_fixed_secret", 1, 0.795, {"name": "dpzero", "epsilon": 2.0},
                      {**dp(2.0, 0.8808), "secret_source": "fixed"}, initial=0.786),  # longest labels
             fake_run(tmp_path / "sst2_bboxer_seed0", 0, 0.79, {"name": "bboxer"}, BBOXER, initial=0.786),
             fake_run(tmp_path / "agnews_mezo_seed0", 0, 0.82, task={"name": "agnews"}, initial=0.535)]
    sweep = tmp_path / "frontier_agnews.json"
    sweep.write_text(json.dumps({"task": "agnews", "model": "smollm2-135m", "rows": SWEEP_ROWS}))
    page = write_report(runs + [sweep], tmp_path / "out")
    check = page.with_name("check.html")  # the report itself carries no script; the probe goes in a copy
    check.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                        "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                       capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="measured">(.*?)</pre>', r.stdout, re.S)
    assert found, f"no measurement in Chromium's DOM (exit {r.returncode}): {r.stderr[-500:]}"
    m = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    margin = 16
    assert m["inner"] == 1280 and m["scroll"] <= m["client"], m  # no horizontal scroll of the page
    assert m["headings"] == ["Task agnews · model tiny", "Task sst2 · model tiny",
                             "Task agnews · model smollm2-135m · sweep frontier_agnews.json"]
    assert len(m["boxes"]) == 5  # configurations ×3, runs ×2
    for b in m["boxes"]:
        assert b["left"] >= margin and b["right"] <= m["client"] - margin, b
        assert b["table"] <= b["width"] or b["overflow"] in ("auto", "scroll"), b
    assert len(m["images"]) == 5  # frontier ×3, curves ×2
    for i in m["images"]:
        assert i["natural"] > 0 and i["left"] >= margin and i["right"] <= m["client"] - margin, i


def test_fixed_secret_runs_are_marked_audit_mode(tmp_path):
    dp = {"name": "dpzero", "epsilon": 2.0}
    nominal = {"guarantee": "dp", "epsilon": 2.0, "delta": 1e-5, "mia_posterior_bound": 0.8808}
    keyed = fake_run(tmp_path / "keyed", 0, 0.8, dp, {**nominal, "secret_source": "key"})
    fixed = fake_run(tmp_path / "fixed", 1, 0.7, dp, {**nominal, "secret_source": "fixed"})
    runs = [load_run(p) for p in (keyed, fixed)]
    labels = sorted(g["label"] for g in group_rows(runs))  # same config, other seed: still two points
    assert labels == ["dpzero ε=2", "dpzero ε=2 (audit mode — not private)"]
    page = write_report([keyed, fixed], tmp_path / "out").read_text()
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "runs.json").read_text())["runs"]}
    assert rows["fixed"]["guarantee"] == "dp (audit mode — not private)" and rows["keyed"]["guarantee"] == "dp"
    fixed_row = next(line for line in page.splitlines() if '<td data-key="run" data-value="&quot;fixed&quot;"' in line)
    assert 'class="audit-mode"' in fixed_row and "dp (audit mode — not private)" in fixed_row
    keyed_row = next(line for line in page.splitlines() if '<td data-key="run" data-value="&quot;keyed&quot;"' in line)
    assert "audit mode" not in keyed_row
