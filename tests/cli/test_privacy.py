"""`privtune privacy convert`: one attacker bound shown three ways; bad input → one line on stderr, exit 2."""

import json
import math

import pytest
from typer.testing import CliRunner

from privtune.cli import app


def convert(*args):
    return CliRunner().invoke(app, ["privacy", "convert", *args])


def test_epsilon_two_table():
    r = convert("--epsilon", "2")
    assert r.exit_code == 0, r.stderr
    rows = [line.split() for line in r.stdout.strip().splitlines()]
    assert rows[0][-1] == "0.8808" and rows[1][-1] == "0.3278" and rows[2][-1] == "2.0000"
    assert "posterior" in r.stdout and "MI" in r.stdout and "epsilon" in r.stdout
    assert len({line.rindex(" ") for line in r.stdout.strip().splitlines()}) == 1  # values aligned


def test_epsilon_two_json_with_delta():
    r = convert("--epsilon", "2", "--delta", "1e-5", "--json")
    assert r.exit_code == 0, r.stderr
    v = json.loads(r.stdout)
    assert set(v) == {"posterior", "mi_nats", "epsilon", "delta"}
    assert v["posterior"] == pytest.approx(0.8808, abs=5e-5) and v["mi_nats"] == pytest.approx(0.3278, abs=5e-5)
    assert v["epsilon"] == 2.0 and v["delta"] == 1e-5


def test_round_trips_through_mi_and_posterior():
    p = json.loads(convert("--epsilon", "2", "--json").stdout)
    back = json.loads(convert("--mi", repr(p["mi_nats"]), "--json").stdout)
    assert back["posterior"] == pytest.approx(p["posterior"], rel=1e-9)
    assert back["epsilon"] == pytest.approx(2.0, rel=1e-6)
    via_p = json.loads(convert("--posterior", repr(p["posterior"]), "--json").stdout)
    assert via_p["mi_nats"] == pytest.approx(p["mi_nats"], rel=1e-9) and via_p["epsilon"] == pytest.approx(2.0)


def test_unbounded_attacker_is_written_inf():
    v = json.loads(convert("--posterior", "1", "--json").stdout)
    assert v["epsilon"] == "inf" and v["mi_nats"] == pytest.approx(math.log(2))
    assert convert("--posterior", "1").stdout.split()[-1] == "inf"


@pytest.mark.parametrize("args,flag", [
    ([], "--mi, --epsilon, --posterior"),
    (["--mi", "0.1", "--epsilon", "1"], "--mi, --epsilon, --posterior"),
    (["--epsilon", "abc"], "--epsilon"),
    (["--epsilon", "-1"], "--epsilon"),
    (["--mi", "-0.5"], "--mi"),
    (["--mi", "nan"], "--mi"),
    (["--posterior", "0.3"], "--posterior"),
    (["--posterior", "1.2"], "--posterior"),
    (["--epsilon", "2", "--delta", "1"], "--delta"),
    (["--epsilon", "2", "--delta", "-0.1"], "--delta"),
])
def test_bad_input_is_one_line_and_exit_2(args, flag):
    r = convert(*args)
    err = r.stderr.strip()
    assert r.exit_code == 2 and r.stdout == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and flag in err, err
