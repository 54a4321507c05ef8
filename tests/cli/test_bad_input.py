"""Every kind of bad input: one line on stderr naming the field or file, exit code 2, no run dir left behind."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(tmp_path, *over, config_text=None):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text if config_text is not None else (REPO / "configs" / "tiny_mezo.yaml").read_text())
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", str(cfg), f"out_dir={out}", "-q", *over],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    return r, out


def bad_file(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


CASES = {
    "unknown_key": (["method.lrr=0.1"], "method.lrr"),
    "misspelt_key": (["train.step=5"], "train.step: unknown key; did you mean train.steps?"),
    "unknown_section": (["foo.bar=1"], "foo"),
    "wrong_type": (["train.steps=abc"], "train.steps"),
    "negative_lr": (["method.lr=-1"], "method.lr"),
    "negative_eps": (["method.eps=-0.001"], "method.eps"),
    "zero_steps": (["train.steps=0"], "train.steps"),
    "negative_steps": (["train.steps=-5"], "train.steps"),
    "unknown_model": (["model.name=no-such-model"], "model.name"),
    "unknown_method": (["method.name=sgdx"], "method"),
    "unknown_trainable": (["trainable.kind=top_layers:x"], "trainable.kind"),
    "too_many_layers": (["trainable.kind=top_layers:99"], "trainable.kind"),
    "unknown_task": (["task.name=imdbx"], "task.name"),
    "template_without_text": (["task.template=hello"], "task.template"),
    "batch_larger_than_pool": (["method.batch_size=100000"], "batch_size"),
    "bad_override_syntax": (["justakey"], "justakey"),
    "verbalizer_longer_than_labels": (["task.verbalizer=[' negative', ' positive', ' neutral']"], "task.verbalizer"),
    "multi_token_verbalizer": (["task.verbalizer=[' bad', ' very good']"], "task.verbalizer"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_values(tmp_path, name):
    over, field = CASES[name]
    r, out = run_cli(tmp_path, *over)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and field in err, err
    assert not out.exists()


def test_invalid_yaml(tmp_path):
    r, out = run_cli(tmp_path, config_text="model: [unclosed\n")
    assert r.returncode == 2 and "not valid YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_config_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", str(tmp_path / "nope.yaml")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope.yaml" in r.stderr


DATA_CASES = {
    "missing_file": (None, "missing.tsv"),
    "non_utf8": (b"text\tlabel\n\xff\xfe bad\t1\n", "bad.tsv"),
    "empty": (b"", "empty.tsv"),
    "header_only": (b"text\tlabel\n", "hdr.tsv"),
    "missing_column": (b"sentence\tlabel\nhello\t1\n", "col.tsv"),
    "label_not_in_verbalizer": (b"text\tlabel\nhello\t7\nbye\t0\n", "lab.tsv"),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bad_data_files(tmp_path, name):
    content, fname = DATA_CASES[name]
    path = str(tmp_path / fname) if content is None else bad_file(tmp_path, fname, content)
    good = bad_file(tmp_path, "good.tsv", b"text\tlabel\na good film\t1\na bad film\t0\n" * 10)
    r, out = run_cli(tmp_path, "task.name=custom", f"task.train_path={path}", f"task.eval_path={good}",
                     "task.template={text} It was", "task.verbalizer=[' bad', ' good']", "task.pool_size=4",
                     "method.batch_size=2")
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and fname in err, err
    assert not out.exists()


def test_verbalizer_errors_say_what_is_wrong(tmp_path):
    r, out = run_cli(tmp_path, "task.verbalizer=[' negative', ' positive', ' neutral']")
    assert "3 words but the data has 2 labels (0, 1)" in r.stderr and "label 2 (' neutral')" in r.stderr, r.stderr
    r, out = run_cli(tmp_path, "task.verbalizer=[' bad', ' very good']")
    assert "' very good' is 2 tokens ['very', 'good']" in r.stderr and "each word must be one token" in r.stderr


def test_pool_too_large_names_the_label_and_a_size(tmp_path):
    r, out = run_cli(tmp_path, "task.pool_size=1000",
                     config_text=(REPO / "configs" / "custom_example.yaml").read_text())
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "label 'billing' has only 10 training examples; set task.pool_size to at most 30" in r.stderr
    assert not out.exists()
