"""privtune offsite build | tune | eval on the tiny model, and bad input → exit 2 naming the option."""

import json

from typer.testing import CliRunner

from privtune.cli import app

runner = CliRunner()


def test_build_tune_eval_end_to_end(tmp_path):
    emu, ad = tmp_path / "emu", tmp_path / "ad"
    r = runner.invoke(app, ["offsite", "build", "--model", "tiny", "--method", "gradot", "--adapters", "1",
                            "--calib", "8", "--out", str(emu), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["params"]["middle_ratio_kept"] <= 0.51
    assert (emu / "manifest.json").is_file() and (emu / "emulator.safetensors").is_file()
    r = runner.invoke(app, ["offsite", "tune", "--emulator", str(emu), "--out", str(ad), "--examples", "8",
                            "--batch-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["offsite", "eval", "--model", "tiny", "--adapters", str(ad), "--limit", "8"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["total"] == 8


def _fails(args, needle, tmp_path):
    r = runner.invoke(app, ["offsite", *args])
    assert r.exit_code == 2, r.output
    assert f"error: {needle}" in r.output
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_bad_inputs_exit_2(tmp_path):
    out = str(tmp_path / "emu")
    _fails(["build", "--model", "no-such-model", "--method", "gradot", "--out", out], "model.name", tmp_path)
    _fails(["build", "--model", "tiny", "--method", "gradot", "--adapters", "1", "--ratio", "1.5", "--out", out],
           "--ratio", tmp_path)
    _fails(["build", "--model", "tiny", "--method", "prune", "--out", out], "--method", tmp_path)
    _fails(["tune", "--emulator", str(tmp_path / "missing"), "--out", str(tmp_path / "ad")], str(tmp_path / "missing"),
           tmp_path)
    _fails(["eval", "--model", "tiny", "--limit", "0"], "--limit", tmp_path)


def test_multiple_choice_build_tune_eval(tmp_path):
    """ARC-Easy end to end (GradOT calibrated on its train split); OpenBookQA: eval works, tuning exits 2."""
    emu, ad = tmp_path / "emu", tmp_path / "ad"
    r = runner.invoke(app, ["offsite", "build", "--model", "tiny", "--method", "gradot", "--adapters", "1",
                            "--task", "arc_easy", "--calib", "6", "--out", str(emu), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["offsite", "tune", "--emulator", str(emu), "--out", str(ad), "--task", "arc_easy",
                            "--examples", "8", "--batch-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2
    for task in ("arc_easy", "openbookqa"):
        r = runner.invoke(app, ["offsite", "eval", "--model", "tiny", "--adapters", str(ad), "--task", task,
                                "--limit", "6"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["total"] == 6 and out["task"] == task and 0 <= out["correct"] <= 6
    r = runner.invoke(app, ["offsite", "tune", "--emulator", str(emu), "--out", str(tmp_path / "obqa"), "--task",
                            "openbookqa", "-q"])
    assert r.exit_code == 2, r.output
    assert "error: --task: openbookqa has no train split" in r.output
    assert not (tmp_path / "obqa").exists()
