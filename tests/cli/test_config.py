"""`privtune config show [--method M]` and `privtune --version` (cli/config.py, cli/__init__.py)."""

from typer.testing import CliRunner

import privtune
from privtune.cli import app
from privtune.methods import method_classes
from privtune.schema_doc import render_text


def test_config_show_prints_the_schema_with_defaults():
    r = CliRunner().invoke(app, ["config", "show"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == render_text() + "\n"
    assert "  train.steps = 100  (int > 0)" in r.stdout and "[method: dpzero]" in r.stdout


def test_config_show_one_method():
    r = CliRunner().invoke(app, ["config", "show", "--method", "dpzero"])
    assert r.exit_code == 0 and r.stdout == render_text("dpzero") + "\n"
    assert "[method: dpzero]" in r.stdout and "[method: mezo]" not in r.stdout
    r = CliRunner().invoke(app, ["config", "show", "--method", "dpzeroo"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: method: unknown method 'dpzeroo'; known: {sorted(m.name for m in method_classes())}"]


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout == f"privtune {privtune.__version__}\n"
