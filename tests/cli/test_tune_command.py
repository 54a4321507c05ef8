"""`privtune tune` on the command line (cli/tune.py): the JSON record on stdout, a one-line summary, refusals as one
line with exit 2 and nothing written."""

import json

from typer.testing import CliRunner

from conftest import tune_files
from privtune.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _files(tmp_path):
    return tune_files(tmp_path, steps=2, eval_limit=10, n_val=100)


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


def test_an_interrupt_says_nothing_was_released(tmp_path, monkeypatch):
    from privtune.run import tune as T

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "tune", interrupted)
    path, val, _ = _files(tmp_path)
    r = invoke("tune", "-c", path, "--val", val, "--grid", "method.lr=1e-3,2e-3")
    assert r.exit_code == 130 and "nothing was released" in r.stderr and "--resume" not in r.stderr
