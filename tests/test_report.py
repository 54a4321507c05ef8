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
