"""privtune.data: real shared files, every bad-input error, PRIVTUNE_DATA, balanced pools, seeded batches."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from privtune import data
from privtune.data import Example, balanced_pool, data_dir, load_examples, load_task, render, sample_batch
from privtune.errors import DataError

from conftest import SECRET, config_error
from conftest import data_error as expect_data_error

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def data_error(path: Path, *args, **kwargs) -> str:
    """Load `path`, expect a DataError naming it on one line and quoting no row text; return the message."""
    return expect_data_error(load_examples, path, path, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Real data


def test_data_dir_is_shared_data():
    assert data_dir() == (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    assert data.DATA_DIR == data_dir()


def test_sst2_dev():
    examples = load_examples(data_dir() / "sst2" / "dev.tsv", n_labels=2)
    assert len(examples) == 872
    assert Counter(e.label for e in examples) == {0: 428, 1: 444}
    assert examples[0] == Example("it 's a charming and often affecting journey .", 1)  # trailing space stripped
    assert all(e.text == e.text.strip() and e.text for e in examples)


def test_agnews_test():
    task_spec = data.TASKS["agnews"]
    examples = load_examples(data_dir() / task_spec.eval, label_names=task_spec.label_names)
    assert len(examples) == 7600
    assert Counter(e.label for e in examples) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert examples[0].label == 2  # Business


def test_load_task_builtin_with_eval_limit():
    task = load_task("agnews", eval_limit=50)
    assert task.name == "agnews" and task.n_labels == 4
    assert task.verbalizer == [" world", " sports", " business", " science"]
    assert len(task.eval) == 50 and len(task.train) > 1000
    full = load_examples(data_dir() / "agnews" / "test.tsv", label_names=data.TASKS["agnews"].label_names)
    assert task.eval == full[:50]
    assert render(task.template, task.eval[0].text).endswith("\nTopic:")


def test_privtune_data_override(tmp_path, monkeypatch):
    (tmp_path / "sst2").mkdir()
    write(tmp_path / "sst2", "train.tsv", "text\tlabel\ngood\t1\nbad\t0\n")
    write(tmp_path / "sst2", "dev.tsv", "text\tlabel\nfine\t1\n")
    monkeypatch.setenv("PRIVTUNE_DATA", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    assert data.DATA_DIR == tmp_path.resolve()
    task = load_task("sst2")
    assert task.train == [Example("good", 1), Example("bad", 0)]
    assert task.eval == [Example("fine", 1)]
    with pytest.raises(DataError, match="PRIVTUNE_DATA"):  # agnews files are absent here
        load_task("agnews")


# ---------------------------------------------------------------------------------------------------------------
# Formats


def test_formats_and_labels(tmp_path):
    tsv = write(tmp_path, "a.tsv", 'text\tlabel\nsays "hi" {x}  \t1\nit \'s\t 0 \n\n')
    assert load_examples(tsv) == [Example('says "hi" {x}', 1), Example("it 's", 0)]
    csv_ = write(tmp_path, "a.csv", 'id,sentence,y\n7,"comma, and ""quotes""",pos\n8,plain,neg\n')
    assert load_examples(csv_, text_column="sentence", label_column="y", label_names=["neg", "pos"]) == [
        Example('comma, and "quotes"', 1), Example("plain", 0)]
    jsonl = write(tmp_path, "a.jsonl", '{"text": "x", "label": 1}\n\n{"text": "y", "label": "0", "extra": 3}\n')
    assert load_examples(jsonl, n_labels=2) == [Example("x", 1), Example("y", 0)]
    bom = write(tmp_path, "bom.csv", "\ufefftext,label\nz,0\n".encode("utf-8"))
    assert load_examples(bom) == [Example("z", 0)]


def test_render_keeps_braces():
    assert render("Review: {text}\nSentiment:", "a {b} {text} {} c  ") == "Review: a {b} {text} {} c\nSentiment:"


# ---------------------------------------------------------------------------------------------------------------
# Bad files: DataError naming the file (and row), one line, no row text


def test_missing_file_and_directory(tmp_path):
    assert "not found" in data_error(tmp_path / "nope.tsv")
    folder = tmp_path / "folder.tsv"
    folder.mkdir()
    assert "directory" in data_error(folder)


def test_unsupported_extension(tmp_path):
    assert "'.txt'" in data_error(write(tmp_path, "a.txt", "text\tlabel\nx\t0\n"))


def test_not_utf8(tmp_path):
    assert "UTF-8" in data_error(write(tmp_path, "a.tsv", "text\tlabel\ncaf\xe9\t0\n".encode("latin-1")))


def test_empty_and_header_only(tmp_path):
    assert "empty" in data_error(write(tmp_path, "empty.tsv", ""))
    assert "empty" in data_error(write(tmp_path, "blank.jsonl", "\n\n"))
    assert "no examples" in data_error(write(tmp_path, "header.tsv", "text\tlabel\n"))
    assert "no examples" in data_error(write(tmp_path, "header.csv", "text,label\n"))


def test_missing_column(tmp_path):
    msg = data_error(write(tmp_path, "a.tsv", "sentence\tlabel\nx\t0\n"))
    assert "'text'" in msg and "'sentence'" in msg and "'label'" in msg
    msg = data_error(write(tmp_path, "b.jsonl", '{"text": "x", "label": 0}\n{"text": "y"}\n'))
    assert "'label'" in msg and "row 2" in msg


def test_headerless_file_does_not_leak_text(tmp_path):
    long_secret = SECRET + " that goes on for a while and would be quoted as a column name"
    msg = data_error(write(tmp_path, "a.tsv", f"{long_secret}\t1\nother\t0\n"))
    assert "missing column 'text'" in msg and "header" in msg


def test_duplicate_header(tmp_path):
    assert "duplicate" in data_error(write(tmp_path, "a.csv", "text,label,text\nx,0,y\n"))


def test_wrong_field_count(tmp_path):
    msg = data_error(write(tmp_path, "a.tsv", f"text\tlabel\nok\t0\n{SECRET}\twith tab\t1\n"))
    assert "row 2 (line 3)" in msg and "3 fields" in msg


def test_invalid_json(tmp_path):
    msg = data_error(write(tmp_path, "a.jsonl", f'{{"text": "x", "label": 0}}\n{{"text": "{SECRET}", label: 1}}\n'))
    assert "line 2" in msg and "JSON" in msg
    assert "object" in data_error(write(tmp_path, "b.jsonl", f'["{SECRET}", 1]\n'))


def test_bad_labels(tmp_path):
    assert "row 2" in data_error(write(tmp_path, "a.tsv", "text\tlabel\nx\t0\ny\tmaybe\n"))
    assert "'1.5'" in data_error(write(tmp_path, "b.tsv", "text\tlabel\nx\t1.5\n"))
    assert "out of range [0, 2)" in data_error(write(tmp_path, "c.tsv", "text\tlabel\nx\t2\n"), n_labels=2)
    assert "out of range" in data_error(write(tmp_path, "d.tsv", "text\tlabel\nx\t-1\n"))
    msg = data_error(write(tmp_path, "e.tsv", "text\tlabel\na\tneg\nb\tpos\nc\tneg\nd\tneg\nx\tmeh\n"),
                     label_names=["neg", "pos"])
    assert "label 'meh' at row 5 (line 6) is not one of the verbalizer's labels" in msg
    assert "row 1" in data_error(write(tmp_path, "f.jsonl", '{"text": "x", "label": true}\n'))
    # label column pointed at the text by mistake: the text is not quoted back
    msg = data_error(write(tmp_path, "g.tsv", f"text\tnote\n{SECRET} and more words to be long\t{SECRET}"
                                              " and more words to be long\n"), label_column="note")
    assert "character value" in msg


def test_empty_text(tmp_path):
    assert "row 2" in data_error(write(tmp_path, "a.tsv", "text\tlabel\nx\t0\n   \t1\n"))
    assert "string" in data_error(write(tmp_path, "b.jsonl", '{"text": 5, "label": 0}\n'))


def test_malformed_csv_quoting(tmp_path):
    assert "line" in data_error(write(tmp_path, "a.csv", 'text,label\n"unterminated,0\n'))


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments: ConfigError starting with the field name


def test_load_examples_bad_arguments(tmp_path):
    path = write(tmp_path, "a.tsv", "text\tlabel\nx\t0\n")
    config_error("task.label_column", load_examples, path, label_column="text")
    config_error("task.label_names", load_examples, path, label_names=["a", "a"])
    config_error("task.label_names", load_examples, path, label_names=["a", "b"], n_labels=3)


@pytest.fixture
def custom_files(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": "x", "label": 0}\n{"text": "y", "label": 1}\n')
    eval_ = write(tmp_path, "eval.jsonl", '{"text": "z", "label": 2}\n')
    return train, eval_


def test_custom_task(custom_files):
    train, eval_ = custom_files
    task = load_task("custom", train_path=train, eval_path=eval_, template="Q: {text}\nA:",
                     verbalizer=[" a", " b", " c"])
    assert task.train == [Example("x", 0), Example("y", 1)] and task.eval == [Example("z", 2)]
    assert task.n_labels == 3
    # the eval label 2 has no verbalizer word when there are only two
    msg = str(pytest.raises(DataError, load_task, "custom", train_path=train, eval_path=eval_,
                            template="{text}", verbalizer=[" a", " b"]).value)
    assert str(eval_) in msg and "out of range [0, 2)" in msg


def test_load_task_bad_arguments(custom_files):
    train, eval_ = custom_files
    ok = dict(train_path=train, eval_path=eval_, template="{text} ->", verbalizer=[" a", " b", " c"])
    config_error("task.name", load_task, "imdb")
    for field in ("train_path", "eval_path", "template", "verbalizer"):
        msg = config_error(f"task.{field}", load_task, "custom", **{**ok, field: None})
        assert "required for a custom task" in msg
    config_error("task.template", load_task, "custom", **{**ok, "template": "no slot"})
    config_error("task.template", load_task, "custom", **{**ok, "template": "{text} {text}"})
    config_error("task.verbalizer", load_task, "custom", **{**ok, "verbalizer": [" a"]})
    config_error("task.verbalizer", load_task, "custom", **{**ok, "verbalizer": [" a", " a", " c"]})
    config_error("task.verbalizer", load_task, "custom", **{**ok, "verbalizer": [" a", " ", " c"]})
    config_error("task.verbalizer", load_task, "custom", **{**ok, "verbalizer": " a b"})
    config_error("task.eval_limit", load_task, "custom", **{**ok, "eval_limit": 0})
    msg = config_error("task.verbalizer", load_task, "custom", **{**ok, "label_names": ["a", "b"]})
    assert "3 words for the 2 labels of task.label_names" in msg
    config_error("task.verbalizer", load_task, "sst2", verbalizer=[" bad"])


# ---------------------------------------------------------------------------------------------------------------
# Pools and batches


def make_examples(counts: dict[int, int]) -> list[Example]:
    out = [Example(f"t{label}-{i}", label) for label, n in counts.items() for i in range(n)]
    return [out[i] for i in range(0, len(out), 2)] + [out[i] for i in range(1, len(out), 2)]  # interleave labels


def test_balanced_pool_counts():
    examples = make_examples({0: 50, 1: 40, 2: 30})
    pool = balanced_pool(examples, 31, seed=0)
    assert pool == sorted(set(pool)) and len(pool) == 31
    assert Counter(examples[i].label for i in pool) == {0: 11, 1: 10, 2: 10}  # leftover to the lowest label
    assert Counter(examples[i].label for i in balanced_pool(examples, 90, seed=3)) == {0: 30, 1: 30, 2: 30}
    assert len(balanced_pool(examples, 3, seed=0)) == 3


def test_balanced_pool_leftovers_skip_exhausted_labels():
    examples = make_examples({0: 5, 1: 6, 2: 6})
    assert Counter(examples[i].label for i in balanced_pool(examples, 17, seed=0)) == {0: 5, 1: 6, 2: 6}
    assert Counter(examples[i].label for i in balanced_pool(examples, 16, seed=0)) == {0: 5, 1: 6, 2: 5}


def test_balanced_pool_determinism():
    examples = make_examples({0: 500, 1: 500})
    assert balanced_pool(examples, 64, seed=7) == balanced_pool(examples, 64, seed=7)
    assert balanced_pool(examples, 64, seed=7) != balanced_pool(examples, 64, seed=8)


def test_balanced_pool_errors():
    examples = make_examples({0: 5, 1: 8})
    config_error("task.pool_size", balanced_pool, examples, 1, seed=0)
    msg = config_error("task.pool_size", balanced_pool, examples, 12, seed=0)
    assert "label 0 has only 5 training examples; set task.pool_size to at most 11" in msg
    assert len(balanced_pool(examples, 11, seed=0)) == 11  # the size the message suggests works
    config_error("task.pool_size", balanced_pool, [], 4, seed=0)
    config_error("train.seed", balanced_pool, examples, 4, seed=-1)


def test_sample_batch():
    batch = sample_batch(100, 16, seed=3, step=41)
    assert batch == sample_batch(100, 16, seed=3, step=41)  # a resumed run draws the same batch
    assert len(set(batch)) == 16 and all(0 <= p < 100 for p in batch)
    assert all(type(p) is int for p in batch)
    assert batch != sample_batch(100, 16, seed=3, step=42)
    assert batch != sample_batch(100, 16, seed=4, step=41)
    assert sorted(sample_batch(8, 8, seed=0, step=0)) == list(range(8))
    config_error("step", sample_batch, 8, 2, seed=0, step=-1)


def test_pool_error_names_the_label_and_a_size_that_works():
    examples = make_examples({0: 40, 1: 9, 2: 30})
    msg = config_error("task.pool_size", balanced_pool, examples, 1000, seed=0,
                       label_names=["billing", "tech_support", "delivery"])
    assert "label 'tech_support' has only 9 training examples" in msg
    assert "set task.pool_size to at most 29" in msg  # 3 × 9, plus one spare each for the two larger labels
    assert len(balanced_pool(examples, 29, seed=0)) == 29
    config_error("task.pool_size", balanced_pool, examples, 30, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Custom data: the shipped example, verbalizer vs labels


EXAMPLE = REPO / "examples" / "data"
EXAMPLE_NAMES = ["billing", "tech_support", "delivery"]


def test_example_files_are_a_balanced_three_label_task():
    task = load_task("custom", train_path=EXAMPLE / "tickets_train.tsv", eval_path=EXAMPLE / "tickets_eval.tsv",
                     label_names=EXAMPLE_NAMES, template="{text}", verbalizer=[" billing", " technical", " shipping"])
    assert Counter(e.label for e in task.train) == {0: 10, 1: 10, 2: 10}
    assert Counter(e.label for e in task.eval) == {0: 4, 1: 4, 2: 4}
    assert task.label_names == EXAMPLE_NAMES
    assert not {e.text for e in task.train} & {e.text for e in task.eval}


def test_custom_example_config_runs(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", "configs/custom_example.yaml",
                        "train.steps=4", "train.checkpoint_every=2", f"out_dir={out}", "-q"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PRIVTUNE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["steps"] == 4 and result["total"] == 12 and result["task"] == "custom"


@pytest.fixture
def two_label_sst2(tmp_path, monkeypatch):
    (tmp_path / "sst2").mkdir()
    write(tmp_path / "sst2", "train.tsv", "text\tlabel\ngood\t1\nbad\t0\n")
    write(tmp_path / "sst2", "dev.tsv", "text\tlabel\nfine\t1\nawful\t0\n")
    monkeypatch.setenv("PRIVTUNE_DATA", str(tmp_path))
    return tmp_path


def test_more_verbalizer_words_than_labels_is_refused(two_label_sst2, custom_files):
    # was accepted: the third word had no rows but still won predictions (initial accuracy 0.5%)
    msg = config_error("task.verbalizer", load_task, "sst2", verbalizer=[" bad", " good", " meh"])
    assert "3 words but the data has 2 labels (0, 1)" in msg and "label 2 (' meh')" in msg
    assert str(two_label_sst2 / "sst2" / "train.tsv") in msg
    train, eval_ = custom_files  # labels 0, 1 in train and 2 in eval: every word has rows, so it loads
    assert load_task("custom", train_path=train, eval_path=eval_, template="{text}",
                     verbalizer=[" a", " b", " c"]).n_labels == 3
    msg = config_error("task.verbalizer", load_task, "custom", train_path=train, eval_path=eval_, template="{text}",
                       verbalizer=[" a", " b", " c", " d"])
    assert "label 3 (' d')" in msg


# ---------------------------------------------------------------------------------------------------------------
# Parquet files and datasets save_to_disk folders (the `data` extra)


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"id": [7, 8, 9], "text": [" hi ", "yo", "hey"],
                                                  "label": ["pos", "neg", "pos"]})
    assert load_examples(path, label_names=["neg", "pos"]) == [Example("hi", 1), Example("yo", 0), Example("hey", 1)]
    ints = write_parquet(tmp_path / "b.parquet", {"sentence": ["x", "y"], "y": [1, 0]})
    assert load_examples(ints, text_column="sentence", label_column="y", n_labels=2) == [Example("x", 1),
                                                                                         Example("y", 0)]


def test_parquet_errors(tmp_path):
    msg = data_error(write_parquet(tmp_path / "a.parquet", {"sentence": [SECRET], "label": [0]}))
    assert "missing column 'text'" in msg and "'sentence'" in msg
    msg = data_error(write_parquet(tmp_path / "b.parquet", {"text": ["ok", None], "label": [0, 1]}))
    assert "text in column 'text' at row 2 is missing (null)" in msg  # rows, no lines, in a columnar file
    msg = data_error(write_parquet(tmp_path / "c.parquet", {"text": [SECRET, SECRET], "label": [0, 5]}), n_labels=2)
    assert "label 5 at row 2 is out of range [0, 2)" in msg
    assert "no rows" in data_error(write_parquet(tmp_path / "d.parquet", {"text": [], "label": []}))
    assert "not a readable Parquet file" in data_error(write(tmp_path, "e.parquet", f"text\tlabel\n{SECRET}\t0\n"))


def test_missing_extra_is_named(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "a.parquet", {"text": ["x"], "label": [0]})
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    assert "pip install 'privtune[data]'" in data_error(path)


def save_dataset(folder: Path, texts, labels, names=None) -> Path:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names) if names else datasets.Value("int64")})
    datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features).save_to_disk(str(folder))
    return folder


def test_saved_dataset_folder(tmp_path):
    # a ClassLabel column stores indices into its own names; task.label_names orders them differently here
    folder = save_dataset(tmp_path / "ds", ["a", "b", "c"], [0, 1, 1], names=["spam", "ham"])
    assert load_examples(folder, label_names=["ham", "spam"]) == [Example("a", 1), Example("b", 0), Example("c", 0)]
    assert load_examples(folder) == [Example("a", 0), Example("b", 1), Example("c", 1)]  # indices as they are
    msg = data_error(save_dataset(tmp_path / "ints", ["a", SECRET], [0, 3]), n_labels=2)
    assert "label 3 at row 2 is out of range" in msg
    assert "missing column 'sentence'" in data_error(folder, text_column="sentence")


def test_saved_dataset_dict_names_its_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": ["x"], "label": [0]}) for s in ("train", "test")})
    dd.save_to_disk(str(tmp_path / "dd"))
    msg = data_error(tmp_path / "dd")
    assert "DatasetDict" in msg and "'train'" in msg and "'test'" in msg
    assert load_examples(tmp_path / "dd" / "train") == [Example("x", 0)]  # one split's folder loads


def test_custom_task_mixes_formats(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", {"text": ["x", "y"], "label": ["neg", "pos"]})
    eval_ = save_dataset(tmp_path / "eval", ["z"], [1], names=["neg", "pos"])
    task = load_task("custom", train_path=train, eval_path=eval_, template="{text} ->", verbalizer=[" no", " yes"],
                     label_names=["neg", "pos"])
    assert task.train == [Example("x", 0), Example("y", 1)] and task.eval == [Example("z", 1)]


# ---------------------------------------------------------------------------------------------------------------
# Built-in tasks whose files are missing: the error, and the opt-in fetch


def test_missing_builtin_files_name_the_path_and_the_ways_out(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "fetch_builtin", lambda *a: calls.append(a))
    monkeypatch.setenv("PRIVTUNE_DATA", str(tmp_path))
    monkeypatch.delenv("PRIVTUNE_FETCH", raising=False)
    with pytest.raises(DataError) as info:
        load_task("agnews")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path.resolve() / 'agnews' / 'train.tsv'}: file not found")
    assert "PRIVTUNE_DATA" in msg and "PRIVTUNE_FETCH=1" in msg
    assert calls == []  # nothing reaches the network without the opt-in


def test_fetch_opt_in_writes_the_expected_files(tmp_path, monkeypatch):
    import datasets

    hub = {("fancyzhx/ag_news", "train"): {"text": ["Stocks\tfell", "Team\nwins", "New chip", "Talks"],
                                           "label": [2, 1, 3, 0]},
           ("fancyzhx/ag_news", "test"): {"text": ["Vote today", "Goal!"], "label": [0, 1]}}
    asked = []

    def load_dataset(name, split):  # stands in for the hub: same call, a real Dataset back
        asked.append((name, split))
        return datasets.Dataset.from_dict(hub[(name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("PRIVTUNE_DATA", str(tmp_path))
    monkeypatch.setenv("PRIVTUNE_FETCH", "1")
    task = load_task("agnews")
    assert asked == [("fancyzhx/ag_news", "train"), ("fancyzhx/ag_news", "test")]
    assert (tmp_path / "agnews" / "train.tsv").read_text().splitlines()[:2] == ["text\tlabel", "Stocks fell\tBusiness"]
    assert [e.label for e in task.train] == [2, 1, 3, 0] and task.train[1].text == "Team wins"
    assert task.eval == [Example("Vote today", 0), Example("Goal!", 1)]
    load_task("agnews")  # the files are there now: no second download
    assert len(asked) == 2
