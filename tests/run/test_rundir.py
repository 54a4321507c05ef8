"""run/rundir.py is the one owner of the run directory: the only module that names its files, the one place that
says "not a privtune run directory", and the atomic creation of a run dir."""

import ast
from pathlib import Path

import pytest

from privtune.errors import ConfigError, PrivtuneError
from privtune.run import rundir as R
from privtune.run.rundir import RunDir

PKG = Path(__file__).resolve().parents[2] / "src" / "privtune"
NAMES = (R.CONFIG, R.METRICS, R.TRANSCRIPT, R.PRIVACY, R.EVAL, R.ENGINE, R.CANARIES, R.AUDIT, R.WEIGHTS)


def code_strings(path: Path):
    """(line, text) of every string in the code of `path`, docstrings left out (they may describe the layout)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def names_a_file(text: str) -> bool:
    """A string that is a run-dir path or a piece of one (prose that mentions a file, with spaces, is not)."""
    return not any(c.isspace() for c in text) and (any(n in text for n in NAMES) or text in ("eval_", "state")
                                                   or text.startswith("trainable-"))


def test_run_dir_file_names_appear_only_in_rundir():
    others = [p for p in sorted(PKG.rglob("*.py")) if p != PKG / "run" / "rundir.py"]
    found = [f"{p.relative_to(PKG)}:{line} {text!r}" for p in others for line, text in code_strings(p)
             if names_a_file(text)]
    assert found == []
    says = [f"{p.relative_to(PKG)}:{line}" for p in others for line, text in code_strings(p)
            if "not a privtune run directory" in text]
    assert says == []  # RunDir.open and RunDir.check_out_dir say it, for every command


def test_open_names_the_folder_and_the_missing_file(tmp_path):
    with pytest.raises(PrivtuneError, match=rf"^{tmp_path}: not a privtune run directory \(no config.yaml\)$"):
        RunDir.open(tmp_path)
    (tmp_path / R.CONFIG).write_text("{}")
    assert RunDir.open(tmp_path).path == tmp_path
    with pytest.raises(PrivtuneError, match=r"\(no privacy.json\)$"):
        RunDir.open(tmp_path, need=R.PRIVACY)
    with pytest.raises(PrivtuneError, match=r"model/trainable.safetensors: missing; the run has not finished"):
        RunDir(tmp_path).final_weights()


def test_out_dir_checks(tmp_path):
    RunDir.check_out_dir(tmp_path / "new", resume=False)
    (tmp_path / "empty").mkdir()
    RunDir.check_out_dir(tmp_path / "empty", resume=False)
    (tmp_path / "empty" / "x").write_text("")
    with pytest.raises(ConfigError, match="^out_dir: .* already exists; pass --resume"):
        RunDir.check_out_dir(tmp_path / "empty", resume=False)
    with pytest.raises(ConfigError, match=r"^out_dir: .* is not a privtune run directory \(no config.yaml\); cannot"):
        RunDir.check_out_dir(tmp_path / "empty", resume=True)


class Boom(Exception):
    pass


def test_create_is_atomic(tmp_path):
    run = RunDir(tmp_path / "runs" / "a")
    with pytest.raises(Boom):
        with run.create(config_text="x: 1\n", engine={"z_kernel": "torch"}) as new:
            assert new.config.read_text() == "x: 1\n" and new.path != run.path
            raise Boom()  # e.g. the ledger cannot be written
    assert list((tmp_path / "runs").iterdir()) == []  # no run dir, no temp dir
    with run.create(config_text="x: 1\n", engine={"z_kernel": "torch"}, canaries={"texts": []}) as new:
        pass
    assert sorted(p.name for p in run.path.iterdir()) == sorted([R.CONFIG, R.ENGINE, R.CANARIES, R.METRICS,
                                                                 R.TRANSCRIPT])
    assert run.recorded_z_kernel() == "torch" and list((tmp_path / "runs").iterdir()) == [run.path]


def test_checkpoints_keep_one_weights_file_and_the_pointer_last(tmp_path):
    import torch

    run = RunDir(tmp_path)
    assert run.checkpoint_step() == 0 and run.load_checkpoint(lambda t: pytest.fail("no checkpoint yet")) == 0
    for step in (5, 10):
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))})
    assert run.checkpoint_step() == 10
    assert [p.name for p in run.state_dir.glob("trainable-*")] == ["trainable-00000010.safetensors"]
    got = {}
    assert run.load_checkpoint(got.update) == 10 and torch.equal(got["w"], torch.full((2,), 10.0))
    run.state.write_text("{torn")
    with pytest.raises(PrivtuneError, match="state.json: unreadable resume state"):
        run.checkpoint_step()
