"""`privtune tune` on the command line (cli/tune.py): the JSON record on stdout, a one-line summary, refusals as one
line with exit 2 and nothing written."""

import json

import yaml
from typer.testing import CliRunner

from conftest import tiny_cfg
from privtune.cli import app
from privtune.paths import data_dir


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _files(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"method": {"name": "dpzero", "epsilon": 2.0, "lr": 1e-3, "eps": 1e-3,
                                           "batch_size": 16},
                                "train.steps": 2, "task.eval_limit": 10, "train.checkpoint_every": 100})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = (data_dir() / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    val = tmp_path / "val.tsv"
    val.write_text("\n".join([rows[0], *rows[-100:]]) + "\n", encoding="utf-8")
    return path, val, tmp_path / "run"


def test_tune_prints_the_record_and_a_summary(tmp_path):
    path, val, out = _files(tmp_path)
    r = invoke("tune", "-c", path, "--grid", "method.lr=1e-3,2e-3", "--val", val, "--runs", "1", "--score-std", "0.2")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["chosen"]["method.lr"] in ("1e-3", "2e-3") and (out / "tune.json").is_file()
    summary = r.stderr.strip().splitlines()[-1]
    assert summary.startswith("tune: chose method.lr=") and "for the whole selection" in summary
    assert f"ε={rec['epsilon']:.3g}" in summary


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    path, val, out = _files(tmp_path)
    for args, words in [(["--grid", "method.lr"], "--grid"),
                        (["--grid", "train.steps=2,3"], "--grid train.steps"),
                        (["--grid", "method.lr=1e-3,2e-3", "--epsilon", "-1"], "--epsilon"),
                        (["--grid", "method.lr=1e-3,2e-3", "--runs", "0"], "--runs")]:
        r = invoke("tune", "-c", path, "--val", val, *args)
        err = r.stderr.strip()
        assert r.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith("error: " + words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "val.tsv"] and not out.exists()
