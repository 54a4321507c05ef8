"""The run commands (cli/train.py): train's help, refusals and summary line, resume's label, eval on a user's file
(writing only with --out) and export."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_cfg
from privtune.cli import app
from privtune.methods import build_config
from privtune.run.loop import train

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # rich wraps help at the terminal width


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def one_error(r, *words):
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), (r.stdout, r.stderr)
    assert all(w in err for w in words), err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny MeZO run (its eval set: the first 40 SST-2 dev examples)."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = build_config(tiny_cfg(tmp, **{"train.steps": 4}))
    train(cfg)
    return Path(cfg.out_dir)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------------ train
def test_train_help_shows_the_override_syntax():
    r = invoke("train", "--help", env=WIDE)
    assert r.exit_code == 0
    assert "KEY=VALUE" in r.stdout and "method.lr=3e-3 train.steps=200" in r.stdout, r.stdout
    assert "privtune config show" in r.stdout
    quiet = next(line for line in r.stdout.splitlines() if "--quiet" in line)
    assert "no progress bars" in quiet


def test_train_without_config_or_overrides_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error(invoke("train"), "--config", "privtune config show")
    one_error(invoke("train", "-q"), "--config")
    assert list(tmp_path.iterdir()) == []  # the default out_dir (runs/run) was not started


def test_a_config_file_given_as_an_override_is_told_to_use_c(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error(invoke("train", "configs/tiny_mezo.yaml"), "configs/tiny_mezo.yaml", "-c/--config")
    assert list(tmp_path.iterdir()) == []


def test_overrides_with_resume_are_refused(tmp_path):
    r = invoke("train", "--resume", f"out_dir={tmp_path / 'run'}", "method.lr=0.1", "train.steps=3")
    one_error(r, "--resume", "method.lr, train.steps", "config.yaml")
    assert not (tmp_path / "run").exists()


def test_summary_line_on_stderr_and_the_json_on_stdout(tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "-c", REPO / "configs" / "tiny_dpzero.yaml", "train.steps=2", "task.eval_limit=8",
               "task.pool_size=32", "method.batch_size=8", f"out_dir={out}")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)  # stdout: the one JSON line scripts parse, nothing else
    line = r.stderr.strip().splitlines()[-1]
    acc = f"accuracy {result['initial_accuracy']:.1%} → {result['accuracy']:.1%}"
    assert line.startswith(f"{acc} · (ε=2, δ=1e-05)-DP, MIA posterior ≤ 0.881 · {out} · "), line
    assert line.endswith(" s")
    quiet = invoke("train", "-q", "-c", REPO / "configs" / "tiny_mezo.yaml", "train.steps=2",
                   "task.eval_limit=8", f"out_dir={tmp_path / 'quiet'}")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_resume_shows_the_runs_own_method_and_step(tmp_path, stop_after):
    cfg = build_config(tiny_cfg(tmp_path, **{"method.name": "dpzero", "method.epsilon": 2.0, "method.clip": 5.0,
                                            "train.steps": 4, "train.checkpoint_every": 2}))
    assert train(cfg, callback=stop_after(2)) == {"stopped_at": 2}
    r = invoke("train", "--resume", f"out_dir={cfg.out_dir}")  # no config: the defaults would say mezo
    assert r.exit_code == 0, r.stderr
    assert f"resuming {cfg.out_dir} from step 2 of 4" in r.stderr
    assert "dpzero:" in r.stderr and "mezo" not in r.stderr, r.stderr
    assert "(ε=2, δ=1e-05)-DP" in r.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------------- eval
def _user_file(tmp_path) -> Path:
    """A user's file in a custom task's format, label names as in SST-2 (0 negative, 1 positive) but as words."""
    rows = [("a warm , funny and moving film", 1), ("dull and lifeless", 0), ("a great performance", 1),
            ("the worst script of the year", 0), ("charming", 1), ("tedious", 0)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def test_eval_run_on_a_users_file_prints_and_writes_nothing(finished, tmp_path):
    mine = _user_file(tmp_path)
    before = _files(finished)
    r = invoke("eval", finished, "--data", mine)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["total"] == 6 and res["split"] == "data" and res["data"] == str(mine)  # not the run's 40 dev rows
    r = invoke("eval", finished, "--split", "dev")
    assert r.exit_code == 0 and json.loads(r.stdout)["total"] == 40
    assert _files(finished) == before  # eval wrote nothing into the run dir
    r = invoke("eval", finished, "--data", mine, "--out", finished / "eval_mine.json")
    assert r.exit_code == 0 and json.loads((finished / "eval_mine.json").read_text()) == res
    (finished / "eval_mine.json").unlink()


def test_eval_base_model_on_a_users_file_with_named_labels(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("text,label\nmy card was charged twice,billing\nthe app crashes,bug\nrefund please,billing\n")
    r = invoke("eval", "--model", "tiny", "--data", path, "--template", "Ticket: {text} Topic:",
               "--verbalizer", " billing, bug", "--label-names", "billing,bug")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["total"] == 3 and res["task"] == "custom" and res["verbalizer"] == [" billing", " bug"]


def test_eval_base_model_multiple_choice_score(tmp_path):
    """--choice-score sets a multiple-choice task's scoring for a zero-shot eval, and says which it used."""
    for flag, want in (([], "sum"), (["--choice-score", "mean"], "mean")):
        r = invoke("eval", "--model", "tiny", "--task", "arc_easy", "--limit", "4", *flag)
        assert r.exit_code == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["choice_score"] == want and res["type"] == "multiple_choice" and res["total"] == 4


def test_eval_out_keeps_per_question_scores_of_a_generation_eval_split_only(tmp_path):
    """--out holds each question's F1 / exact match (what benchmarks/qa_paired.py pairs) for a generation task's eval
    split; stdout stays one summary line, and a train split (private examples) never gets them."""
    out = tmp_path / "zs.json"
    r = invoke("eval", "--model", "tiny", "--task", "squad", "--limit", "5", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "per_question" not in json.loads(r.stdout)
    res = json.loads(out.read_text())
    pq = res["per_question"]
    assert len(pq["f1"]) == len(pq["exact_match"]) == res["total"] == 5
    assert sum(pq["f1"]) / 5 == pytest.approx(res["f1"]) and sum(pq["exact_match"]) / 5 == pytest.approx(
        res["exact_match"])
    assert all(0.0 <= f <= 1.0 for f in pq["f1"]) and set(pq["exact_match"]) <= {0.0, 1.0}
    assert (res["max_new_tokens"], res["min_new_tokens"], res["stop"]) == (32, 1, "\n")  # qa_paired pairs equal ones
    r = invoke("eval", "--model", "tiny", "--task", "squad", "--limit", "5", "--max-new-tokens", "2")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["max_new_tokens"] == 2
    train = tmp_path / "train.json"
    r = invoke("eval", "--model", "tiny", "--task", "squad", "--split", "train", "--limit", "3", "--out", train)
    assert r.exit_code == 0, r.stderr
    assert "per_question" not in json.loads(train.read_text())


def test_eval_bad_flags_are_one_line_errors(finished, tmp_path):
    mine = _user_file(tmp_path)
    one_error(invoke("eval", finished, "--data", mine, "--split", "dev"), "--split")
    one_error(invoke("eval", finished, "--template", "x {text}"), "--template", "RUN_DIR")
    one_error(invoke("eval", "--model", "tiny", "--data", mine), "--template")
    one_error(invoke("eval", finished, "--data", tmp_path / "missing.tsv"), "missing.tsv")
    one_error(invoke("eval", finished, "--choice-score", "mean"), "--choice-score", "RUN_DIR")
    one_error(invoke("eval", "--model", "tiny", "--limit", "4", "--choice-score", "mean"), "--choice-score")
    one_error(invoke("eval", "--model", "tiny", "--task", "arc_easy", "--choice-score", "median"), "choice_score")
    one_error(invoke("eval", finished, "--max-new-tokens", "3"), "--max-new-tokens", "RUN_DIR")
    one_error(invoke("eval", "--model", "tiny", "--task", "arc_easy", "--max-new-tokens", "3"), "--max-new-tokens")
    one_error(invoke("eval", "--model", "tiny", "--task", "squad", "--max-new-tokens", "0"), "max_new_tokens")


# ----------------------------------------------------------------------------------------------------- export
def test_export_cli(finished, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    r = invoke("export", finished, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert str(out) in r.stdout and "model.safetensors" in r.stdout
    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    one_error(invoke("export", finished, "--out", out), str(out), "already exists")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished, unfinished)
    shutil.rmtree(unfinished / "model")
    one_error(invoke("export", unfinished, "--out", tmp_path / "x"), "the run has not finished")
    assert not (tmp_path / "x").exists()
