"""report: runs that differ only in seed form one frontier point (mean ± std); the table shows each run."""

import json

import numpy as np
import pytest

from privtune import config as C
from privtune import rundir as R
from privtune.report import group_rows, load_run, write_report


def fake_run(path, seed, acc, method=None, privacy=None):
    cfg = C.build({"method": method or {"name": "mezo"}, "train": {"seed": seed}, "out_dir": str(path)})
    path.mkdir()
    R.atomic_write_text(path / R.CONFIG, C.dump(cfg))
    R.atomic_write_json(path / R.EVAL, {"accuracy": acc, "steps": 10, "wall_time_s": 2.0})
    R.atomic_write_json(path / R.PRIVACY, privacy or {"guarantee": "none", "mia_posterior_bound": None})
    (path / R.METRICS).write_text(json.dumps({"step": 5, "eval_accuracy": acc - 0.1, "train_loss": 0.5}) + "\n")
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
    from privtune.errors import PrivtuneError

    with pytest.raises(PrivtuneError, match="not a privtune run directory"):
        write_report([tmp_path], tmp_path / "out")


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
