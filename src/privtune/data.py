"""Tasks, prompt templates, verbalizers, pools and seeded batches.

A task is two lists of `Example`s (train, eval) and a prompt template, of one of three types (`TASK_TYPES`):
- classification: a template with one `{text}` slot and a verbalizer, one word per label, scored by the model at the
  end of the prompt;
- multiple_choice: each example holds 2..5 answer options (`choices`) and the index of the right one (`label`);
- generation: each example holds one or more gold answers (`answers`); the first is the one trained on.
Templates of the last two may name any column as `{name}` (`render_example`). Built-in tasks (`TASKS`) read the
shared data dir (`data_dir()`); a custom task names its own .tsv/.csv/.jsonl/.parquet files or
`datasets.save_to_disk` folders (multiple choice needs a format that holds lists: not .tsv/.csv).

Privacy hygiene: error messages name the file, the row and the column, never a row's text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .paths import data_dir

EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet")
DATA_EXTRA = "pip install 'privtune[data]'"  # pyarrow + datasets: .parquet files and save_to_disk folders
_INT = re.compile(r"[+-]?[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = 40  # longest label value / column name an error message quotes; longer ones may be training text


def __getattr__(name: str) -> Any:  # `data.DATA_DIR` is evaluated on access, so PRIVTUNE_DATA set later still counts
    if name == "DATA_DIR":
        return data_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TASK_TYPES = ("classification", "multiple_choice", "generation")
CHOICE_SCORES = ("sum", "mean")  # a choice's score: the sum, or the per-token mean, of its tokens' log-probs
# A multiple-choice task's choice score when neither the config nor the built-in sets one. The per-token mean: on the
# dev splits each wins once (ARC-Challenge mean 28.8 vs 23.1, ARC-Easy sum 52.3 vs 47.9), so each ARC TaskSpec keeps
# its dev winner, and a task without a dev split takes the length-normalised score harnesses use for small models.
# OpenBookQA's test split (mean 30.0 vs sum 17.2, benchmarks/results/mc_choice_score.json) was seen before this was
# set, so its mean-score numbers are not a held-out choice.
DEFAULT_CHOICE_SCORE = "mean"
MIN_CHOICES, MAX_CHOICES = 2, 5
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # a template's `{name}` slots


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # classification: the class; multiple_choice: index into choices; generation: 0
    choices: tuple[str, ...] = ()  # multiple_choice: 2..5 answer options (non-empty strings)
    answers: tuple[str, ...] = ()  # generation: >= 1 gold answers (non-empty strings); answers[0] is trained on
    fields: tuple[tuple[str, str], ...] = ()  # other template fields by column name, e.g. (("context", ...),)


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: files relative to `data_dir()`, how labels are written there, default prompt."""

    train: str | None  # None: an eval-only task (no train split)
    eval: str
    template: str
    n_labels: int = 0  # classification: the number of labels; other types: 0 (the rows say)
    label_names: tuple[str, ...] | None = None  # None: the files hold integer labels 0..n_labels-1
    verbalizer: tuple[str, ...] = ()  # () for non-classification tasks
    type: str = "classification"
    text_column: str = "text"
    dev: str | None = None  # a validation split for tuning presets (benchmarks only), where the source has one
    choice_score: str | None = None  # multiple_choice: the default score (chosen on `dev`); None: DEFAULT_CHOICE_SCORE


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        train="sst2/train.tsv",
        eval="sst2/dev.tsv",
        n_labels=2,
        label_names=None,  # 0 negative, 1 positive
        template="Review: {text}\nSentiment:",
        verbalizer=(" negative", " positive"),
    ),
    "agnews": TaskSpec(
        train="agnews/train.tsv",
        eval="agnews/test.tsv",
        n_labels=4,
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        template="Article: {text}\nTopic:",
        verbalizer=(" world", " sports", " business", " science"),
    ),
    "squad": TaskSpec(  # generation; template: MeZO's SQuAD prompt
        train="squad/train.jsonl",
        eval="squad/dev.jsonl",
        template="Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:",
        type="generation",
        text_column="question",
    ),
    **{name: TaskSpec(  # ARC reports on its test split (the papers do); dev is for tuning presets only
        train=f"{name}/train.jsonl",
        eval=f"{name}/test.jsonl",
        template="Question: {question}\nAnswer:",
        type="multiple_choice",
        text_column="question",
        dev=f"{name}/dev.jsonl",
        choice_score=score,  # the better on dev, zero-shot: ARC-Easy sum 52.3 / mean 47.9, ARC-Challenge 23.1 / 28.8
    ) for name, score in (("arc_easy", "sum"), ("arc_challenge", "mean"))},
    "openbookqa": TaskSpec(  # only the test split is shipped: eval only
        train=None,
        eval="openbookqa/test.jsonl",
        template="Question: {question}\nAnswer:",
        type="multiple_choice",
        text_column="question",
    ),
}


@dataclass
class Task:
    name: str
    template: str
    verbalizer: list[str]  # verbalizer[label]: the word the model puts after the prompt; [] unless classification
    train: list[Example]
    eval: list[Example]
    label_names: list[str] | None = None  # label_names[label] as written in the files; None: integer labels
    type: str = "classification"
    choice_score: str = DEFAULT_CHOICE_SCORE  # multiple_choice: "sum" or "mean" (per token) of a choice's log-probs
    max_new_tokens: int = 32  # generation: greedy decoding stops after this many tokens ...
    stop: str = "\n"  # ... or at this string; training appends it to answers[0]
    min_new_tokens: int = 1  # generation: ... but never before this many (an empty answer is always wrong)
    text_column: str = "text"  # the column Example.text came from (a template may name it as {column} too)

    @property
    def n_labels(self) -> int:
        """Classification: the verbalizer's size; multiple choice: the most choices of any example; generation: 1."""
        if self.type == "multiple_choice":
            return max((len(ex.choices) for ex in (*self.train, *self.eval)), default=0)
        if self.type == "generation":
            return 1
        return len(self.verbalizer)


def render(template: str, text: str) -> str:
    """The prompt for one text. Plain replace, not str.format: texts contain braces."""
    return template.replace("{text}", text.rstrip())


def render_example(template: str, ex: Example) -> str:
    """The prompt for one example of any type: `{text}` is ex.text (right-stripped, as in `render`), `{name}` the
    value of field `name`. Plain replacement, never str.format: texts hold braces. All slots are replaced in one
    pass, so a value that itself holds "{context}" is left as written rather than filled in."""
    values = {"{text}": ex.text.rstrip(), **{"{" + name + "}": value for name, value in ex.fields}}
    slots = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
    return slots.sub(lambda m: values[m.group(0)], template)


def template_fields(template: str) -> list[str]:
    """The `{name}` slots of a template other than `{text}`, each once, in order of first appearance."""
    return list(dict.fromkeys(n for n in _FIELD.findall(template) if n != "text"))


# ---------------------------------------------------------------------------------------------------------------
# Loading files


def _shown(value: object) -> str:
    """A value for an error message: quoted if short, else only its length (it may be a row's text)."""
    s = str(value)
    if len(s) > _SHOWN or "\n" in s:
        return f"<a {len(s)}-character value>"
    return repr(s)


def _columns(names: Sequence[str]) -> str:
    return ", ".join(_shown(n) for n in names)


def _missing_column(path: Path, column: str, found: Sequence[str], hint: str = "") -> DataError:
    return DataError(f"{path}: missing column {column!r} (columns found: {_columns(found)}){hint}")


Record = Iterator[tuple[int, int | None, dict[str, Any]]]  # (row, line or None, {column: value})


def _records_delimited(path: Path, content: str, delimiter: str, quoting: int, columns: Sequence[str]) -> Record:
    """(row, line, {column: value}) for each data row of a .tsv/.csv file; row 1 is the first line after the header."""
    reader = csv.reader(io.StringIO(content), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty (expected a header line naming the columns)")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(f"{path}: duplicate column name(s) in the header: {_columns(dupes)}")
        for col in columns:
            if col not in header:
                raise _missing_column(path, col, header, "; does the file start with a header line?")
        at = {col: header.index(col) for col in columns}
        row = 0
        for fields in reader:
            if not fields:  # blank line
                continue
            row += 1
            if len(fields) != len(header):
                raise DataError(f"{path}: row {row} (line {reader.line_num}) has {len(fields)} fields, "
                                f"expected {len(header)} like the header")
            yield row, reader.line_num, {col: fields[i] for col, i in at.items()}
    except csv.Error as e:
        raise DataError(f"{path}: malformed {path.suffix} near line {reader.line_num}: {e}") from None


def _records_jsonl(path: Path, content: str, columns: Sequence[str], *, quote: Callable[[str], str] = _shown,
                   expected: str | None = None) -> Record:
    """(row, line, {column: value}) for each JSON object in a .jsonl file; blank lines are skipped.

    `quote` writes a missing column's name and `expected` what a line should be an object with (default: the
    list of columns): the classification loader passes its own, older wording so its messages stay as they were."""
    row = 0
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:  # e.msg describes the syntax error without quoting the line
            raise DataError(f"{path}: line {line_no} is not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{path}: line {line_no} is JSON nested too deeply") from None
        except ValueError:  # an integer over Python's 4300-digit limit
            raise DataError(f"{path}: line {line_no} holds a JSON number too long to read") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {line_no} is a JSON {type(obj).__name__}, expected an object "
                            f"{expected or f'with fields {_columns(columns)}'}")
        for col in columns:
            if col not in obj:
                raise DataError(f"{path}: row {row} (line {line_no}) has no {quote(col)} field "
                                f"(fields found: {_columns(list(obj))})")
        yield row, line_no, {col: obj[col] for col in columns}


def _optional(module: str, path: Path, what: str):
    """Import an optional dependency (the `data` extra), or a DataError naming the file and the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {what} needs {module.split('.')[0]}; install it with: {DATA_EXTRA}") from None


def _records_parquet(path: Path, columns: Sequence[str]) -> Record:
    """(row, None, {column: value}) for each row of a .parquet file: rows count from 1 and there are no lines."""
    pq = _optional("pyarrow.parquet", path, ".parquet files")
    try:  # the footer only: its errors (bad magic bytes, truncated file) hold no row values
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises its own ArrowInvalid / ArrowIOError / OSError mix
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:160]})") from None
    for col in columns:
        if col not in names:
            raise _missing_column(path, col, names)
    try:
        table = pq.read_table(path, columns=list(columns))
    except Exception as e:  # a damaged data page; the message may describe values, so only its type is shown
        raise DataError(f"{path}: cannot read the Parquet data ({type(e).__name__})") from None
    return ((row, None, rec) for row, rec in enumerate(table.to_pylist(), start=1))


def _saved_dataset_kind(path: Path) -> str | None:
    """'dataset' or 'dict' for a folder written by datasets' save_to_disk, else None."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def _records_saved_dataset(path: Path, columns: Sequence[str], class_column: str | None = None) -> Record:
    """(row, None, {column: value}) for each row of a save_to_disk folder. A ClassLabel `class_column` (the
    classification label, when the task has label_names) is read as its names rather than its indices."""
    if _saved_dataset_kind(path) == "dict":  # one config path is one split: say which folders are splits
        try:
            splits = [str(s) for s in json.loads((path / "dataset_dict.json").read_text())["splits"]]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        example = f" such as {path / splits[0]}" if splits else ""
        raise DataError(f"{path}: is a DatasetDict folder (splits: {_columns(splits) or '?'}); point the path at one "
                        f"split's folder{example}")
    ds_lib = _optional("datasets", path, "a save_to_disk folder")
    try:
        ds = ds_lib.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors for a damaged folder
        raise DataError(f"{path}: cannot load this datasets folder ({type(e).__name__})") from None
    for col in columns:
        if col not in ds.column_names:
            raise _missing_column(path, col, ds.column_names)
    values = {col: list(ds[col]) for col in columns}
    feature = ds.features[class_column] if class_column is not None else None
    if isinstance(feature, ds_lib.ClassLabel):
        # A ClassLabel stores indices into its own names; task.label_names may order the labels differently, so
        # match by name. Indices outside the ClassLabel stay as they are and fail the range check with their row.
        values[class_column] = [feature.names[v] if isinstance(v, int) and 0 <= v < len(feature.names) else v
                                for v in values[class_column]]
    return ((row, None, {col: values[col][row - 1] for col in columns}) for row in range(1, len(ds) + 1))


def _records(path: Path, columns: Sequence[str], task_type: str, class_column: str | None = None) -> Record:
    """(row, line, {column: value}) for every row of a task's file: .tsv/.csv/.jsonl/.parquet or a save_to_disk
    folder. A classification task reads columns [text, label]; `class_column` as in `_records_saved_dataset`."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if path.is_dir():
        if _saved_dataset_kind(path) is None:
            raise DataError(f"{path}: is a directory, expected a {', '.join(EXTENSIONS)} file or a folder written "
                            "by datasets' save_to_disk")
        return _records_saved_dataset(path, columns, class_column)
    if suffix not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r} "
                        f"(use {', '.join(EXTENSIONS)} or a datasets save_to_disk folder)")
    if suffix in (".tsv", ".csv") and task_type == "multiple_choice":
        raise DataError(f"{path}: a {suffix} file cannot hold a list of choices per row; use .jsonl (one JSON "
                        "object per line, choices as a JSON list)")
    if suffix == ".parquet":
        return _records_parquet(path, columns)
    content = _read_text(path)
    if suffix == ".jsonl":
        if task_type == "classification":  # its wording predates the other types'; kept as users and tests know it
            text_column, label_column = columns
            return _records_jsonl(path, content, columns, quote=repr,
                                  expected=f"with {text_column!r} and {label_column!r} fields")
        return _records_jsonl(path, content, columns)
    if suffix == ".tsv":  # SST-2 text holds bare quotes: no quoting at all
        return _records_delimited(path, content, "\t", csv.QUOTE_NONE, columns)
    return _records_delimited(path, content, ",", csv.QUOTE_MINIMAL, columns)


def _parse_label(value: Any, names: dict[str, int] | None, n_labels: int | None,
                 where: Callable[[str], str]) -> int:
    """The integer label of one row. `where(subject)` gives "<path>: <subject> at row R (line L)" for errors."""
    if names is not None and isinstance(value, str) and value.strip() in names:
        return names[value.strip()]
    if isinstance(value, int) and not isinstance(value, bool):
        label = value
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        try:
            label = int(value.strip())
        except ValueError:  # over Python's 4300-digit limit: out of any label range
            raise DataError(f"{where(f'label {_shown(value)}')} is out of range (an integer of "
                            f"{len(value.strip())} digits)") from None
    elif names is not None:
        raise DataError(f"{where(f'label {_shown(value)}')} is not one of the verbalizer's labels "
                        f"({_columns(list(names))})")
    else:
        raise DataError(f"{where(f'label {_shown(value)}')} is not an integer "
                        "(pass label_names to map label names to integers)")
    if label < 0 or (n_labels is not None and label >= n_labels):
        bound = f"[0, {n_labels})" if n_labels is not None else ">= 0"
        raise DataError(f"{where(f'label {label}')} is out of range {bound}")
    return label


def _read_text(path: Path) -> str:
    """The whole of a UTF-8 text file (a byte-order mark tolerated); DataError if unreadable or empty."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: tolerate a byte-order mark
            content = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); re-save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not content.strip():
        raise DataError(f"{path}: file is empty")
    return content


def _where(path: Path, row: int, line: int | None) -> Callable[[str], str]:
    """`where(subject)` for one row's errors: "<path>: <subject> at row R (line L)"; columnar files have no lines."""
    return lambda subject: f"{path}: {subject} at row {row}" + (f" (line {line})" if line is not None else "")


def _no_examples(path: Path) -> DataError:
    shape = "has a header but no rows" if path.suffix.lower() in (".tsv", ".csv") and not path.is_dir() else \
        "has no rows"
    return DataError(f"{path}: no examples (the file {shape})")


def load_examples(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                  label_names: Sequence[str] | None = None, n_labels: int | None = None) -> list[Example]:
    """Examples from a .tsv (tab-separated, no quoting), .csv, .jsonl or .parquet file, or a folder written by
    `datasets.Dataset.save_to_disk`, with a text and a label column. Parquet and datasets folders need the `data`
    extra (pyarrow, datasets); a ClassLabel column is matched to `label_names` by its names.

    Labels are integers (or integer strings), or names mapped through `label_names` (name → its index). With
    `n_labels` (default: len(label_names) if given) every label must lie in [0, n_labels). Texts are stripped of
    surrounding whitespace. Raises DataError (message names the file and row) or ConfigError (bad arguments).
    """
    if not isinstance(text_column, str) or not text_column:
        raise ConfigError(f"task.text_column: must be a non-empty column name, got {text_column!r}")
    if not isinstance(label_column, str) or not label_column:
        raise ConfigError(f"task.label_column: must be a non-empty column name, got {label_column!r}")
    if text_column == label_column:
        raise ConfigError(f"task.label_column: must differ from task.text_column (both are {text_column!r})")
    names = None
    if label_names is not None:
        if isinstance(label_names, str) or not all(isinstance(n, str) and n.strip() for n in label_names):
            raise ConfigError("task.label_names: must be a list of non-empty strings")
        label_names = [n.strip() for n in label_names]
        if len(set(label_names)) != len(label_names) or not label_names:
            raise ConfigError(f"task.label_names: must be distinct and non-empty, got {label_names}")
        names = {n: i for i, n in enumerate(label_names)}
        if n_labels is None:
            n_labels = len(label_names)
        elif n_labels != len(label_names):
            raise ConfigError(f"task.label_names: {len(label_names)} names for {n_labels} labels")
    if n_labels is not None and (isinstance(n_labels, bool) or not isinstance(n_labels, int) or n_labels < 1):
        raise ConfigError(f"task.n_labels: must be a positive integer, got {n_labels!r}")

    path = Path(path)
    rows = _records(path, [text_column, label_column], "classification",
                    class_column=label_column if label_names is not None else None)
    examples = []
    for row, line, rec in rows:
        where = _where(path, row, line)
        text, label = rec[text_column], rec[label_column]
        if text is None:  # a null cell of a Parquet or datasets column
            raise DataError(where(f"text in column {text_column!r}") + " is missing (null)")
        if not isinstance(text, str):
            raise DataError(where(repr(text_column)) + f" is a {type(text).__name__}, expected a string")
        text = text.strip()
        if not text:
            raise DataError(where(f"text in column {text_column!r}") + " is empty")
        if not text.isascii() and _SURROGATE.search(text):  # only a JSON \ud800-style escape can make one
            raise DataError(where(f"text in column {text_column!r}") + " holds a lone surrogate (not valid Unicode)")
        examples.append(Example(text, _parse_label(label, names, n_labels, where)))
    if not examples:
        raise _no_examples(path)
    return examples


# ---------------------------------------------------------------------------------------------------------------
# Loading multiple-choice and generation files (through the same `_records` readers as classification)


def _string(value: Any, what: str, where: Callable[[str], str], *, empty_ok: bool = False) -> str:
    """A row's string value, stripped; DataError naming `what` (a column, an entry) otherwise, never the value."""
    if value is None:
        raise DataError(where(what) + " is missing (null)")
    if not isinstance(value, str):
        raise DataError(where(what) + f" is a {type(value).__name__}, expected a string")
    value = value.strip()
    if not value and not empty_ok:
        raise DataError(where(what) + " is empty")
    if not value.isascii() and _SURROGATE.search(value):  # only a JSON \ud800-style escape can make one
        raise DataError(where(what) + " holds a lone surrogate (not valid Unicode)")
    return value


def _choices(value: Any, column: str, where: Callable[[str], str]) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise DataError(where(f"column {column!r}") + f" is a {type(value).__name__}, expected a list of "
                        f"{MIN_CHOICES} to {MAX_CHOICES} answer options")
    if not MIN_CHOICES <= len(value) <= MAX_CHOICES:
        raise DataError(where(f"column {column!r}") + f" has {len(value)} choices, expected "
                        f"{MIN_CHOICES} to {MAX_CHOICES}")
    return tuple(_string(c, f"choice {i} in column {column!r}", where) for i, c in enumerate(value))


def _answers(value: Any, column: str, where: Callable[[str], str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(where(f"column {column!r}") + f" is a {type(value).__name__}, expected a list of answer "
                        "strings or one string")
    if not value:
        raise DataError(where(f"column {column!r}") + " has no answers (expected at least one)")
    answers = [_string(a, f"answer {i} in column {column!r}", where) for i, a in enumerate(value)]
    return tuple(dict.fromkeys(answers))  # duplicates dropped, first-seen order kept: answers[0] stays first


def _choice_label(value: Any, column: str, n_choices: int, where: Callable[[str], str]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        label = value
    elif isinstance(value, str) and _INT.fullmatch(value.strip()) and len(value.strip()) < 20:
        label = int(value.strip())
    else:
        raise DataError(where(f"label in column {column!r}") + " is not an integer (the index of the right choice)")
    if not 0 <= label < n_choices:
        raise DataError(where(f"label {label} in column {column!r}") + f" is out of range for that row's "
                        f"{n_choices} choices [0, {n_choices})")
    return label


def load_qa_examples(path: str | os.PathLike, task_type: str, fields: Sequence[str] = (),
                     text_column: str = "text", label_column: str = "label", choices_column: str = "choices",
                     answers_column: str = "answers") -> list[Example]:
    """Examples of a multiple_choice or generation task from a .jsonl, .parquet (or, for generation, .tsv/.csv)
    file or a `datasets.save_to_disk` folder.

    multiple_choice rows hold `text_column`, `choices_column` (a list of 2..5 non-empty strings) and `label_column`
    (the index of the right choice); generation rows hold `text_column` and `answers_column` (a list of non-empty
    strings, or one string; duplicates are dropped, order kept; label is 0). Every name in `fields` (the template's
    other `{name}` slots) must be a string column of every row; the text column may be one of them. Strings are
    stripped. Raises DataError naming the file, row and column, never a row's text.
    """
    if task_type not in ("multiple_choice", "generation"):
        raise ConfigError(f"task.type: load_qa_examples reads multiple_choice or generation, got {task_type!r}")
    for key, col in (("text_column", text_column), ("label_column", label_column),
                     ("choices_column", choices_column), ("answers_column", answers_column)):
        if not isinstance(col, str) or not col:
            raise ConfigError(f"task.{key}: must be a non-empty column name, got {col!r}")
    own = [text_column, *((choices_column, label_column) if task_type == "multiple_choice" else (answers_column,))]
    if len(set(own)) != len(own):
        raise ConfigError(f"task.text_column: the text, {'choices and label' if len(own) == 3 else 'answers'} "
                          f"columns must differ, got {own}")
    path = Path(path)
    columns = list(dict.fromkeys([*own, *fields]))
    examples = []
    for row, line, rec in _records(path, columns, task_type):
        where = _where(path, row, line)
        text = _string(rec[text_column], f"text in column {text_column!r}", where)
        values = tuple((name, text if name == text_column else
                        _string(rec[name], f"template field {_shown(name)}", where, empty_ok=True))
                       for name in fields)
        if task_type == "multiple_choice":
            choices = _choices(rec[choices_column], choices_column, where)
            label = _choice_label(rec[label_column], label_column, len(choices), where)
            examples.append(Example(text, label, choices=choices, fields=values))
        else:
            examples.append(Example(text, 0, answers=_answers(rec[answers_column], answers_column, where),
                                    fields=values))
    if not examples:
        raise _no_examples(path)
    return examples


# ---------------------------------------------------------------------------------------------------------------
# Tasks


def _check_template(template: Any) -> str:
    if not isinstance(template, str):
        raise ConfigError(f"task.template: must be a string, got {type(template).__name__}")
    count = template.count("{text}")
    if count != 1:
        raise ConfigError(f"task.template: must contain {{text}} exactly once, found it {count} times")
    return template


def _check_verbalizer(verbalizer: Any) -> list[str]:
    if isinstance(verbalizer, str) or not isinstance(verbalizer, (list, tuple)):
        raise ConfigError("task.verbalizer: must be a list of label words, one per label")
    if not all(isinstance(w, str) and w.strip() for w in verbalizer):
        raise ConfigError("task.verbalizer: every entry must be a non-empty string")
    if len(verbalizer) < 2:
        raise ConfigError(f"task.verbalizer: needs at least 2 label words, got {len(verbalizer)}")
    if len(set(verbalizer)) != len(verbalizer):
        raise ConfigError(f"task.verbalizer: entries must be distinct, got {list(verbalizer)}")
    return list(verbalizer)


def _check_qa_template(template: Any) -> str:
    if not isinstance(template, str):
        raise ConfigError(f"task.template: must be a string, got {type(template).__name__}")
    if not _FIELD.search(template):
        raise ConfigError("task.template: must name at least one column as {column} (e.g. {question}); it holds "
                          "no field")
    return template


def task_type_of(name: str, task_type: str | None = None) -> str:
    """Task `name`'s type: `task_type` if given, else the built-in's (classification for "custom"). An unknown name is
    a ConfigError."""
    if name != "custom" and name not in TASKS:
        raise ConfigError(f"task.name: unknown task {name!r} (choose from {', '.join([*TASKS, 'custom'])})")
    if task_type is not None:
        return task_type
    return TASKS[name].type if name in TASKS else "classification"


def load_task(name: str, *, train_path: str | os.PathLike | None = None,
              eval_path: str | os.PathLike | None = None, text_column: str | None = None,
              label_column: str = "label", label_names: Sequence[str] | None = None, template: str | None = None,
              verbalizer: Sequence[str] | None = None, eval_limit: int | None = None, task_type: str | None = None,
              choices_column: str = "choices", answers_column: str = "answers", choice_score: str | None = None,
              max_new_tokens: int = 32, stop: str = "\n", eval_split: str = "eval", min_new_tokens: int = 1) -> Task:
    """A built-in task (see TASKS; any argument overrides the default) or "custom" (paths and template required,
    and a verbalizer for classification). `task_type` defaults to the built-in's type, classification for custom.

    Classification: labels index the verbalizer, so every label must be < len(verbalizer). Multiple choice and
    generation: see `load_qa_examples`; an eval-only built-in (openbookqa) has train = [] unless train_path is
    given. `text_column` None (or "text", the config's default) reads the built-in's own text column. With
    eval_limit, eval keeps the first eval_limit examples in file order. eval_split="dev" evaluates on the
    built-in's dev split instead (ARC: for tuning presets without touching the test split). `choice_score` None:
    the built-in's (TaskSpec.choice_score), else DEFAULT_CHOICE_SCORE."""
    task_type = task_type_of(name, task_type)
    spec = TASKS.get(name)
    if task_type not in TASK_TYPES:
        raise ConfigError(f"task.type: must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    if spec is not None and task_type != spec.type:
        raise ConfigError(f"task.type: {name} is a {spec.type} task, not {task_type}; leave task.type unset or use "
                          "task.name custom")
    if spec is None:
        required = ("train_path", "eval_path", "template") + (("verbalizer",) if task_type == "classification" else ())
        given = dict(train_path=train_path, eval_path=eval_path, template=template, verbalizer=verbalizer)
        for field in required:
            if given[field] is None:
                raise ConfigError(f"task.{field}: required for a custom task")
    if text_column is None or (spec is not None and text_column == "text"):
        text_column = spec.text_column if spec is not None else "text"
    if eval_split not in ("eval", "dev"):
        raise ConfigError(f"eval_split: must be 'eval' or 'dev', got {eval_split!r}")
    eval_default = spec and spec.eval
    if eval_split == "dev":
        if spec is None or spec.dev is None:
            raise ConfigError(f"eval_split: task {name!r} has no dev split")
        eval_default = spec.dev
    if eval_limit is not None and (isinstance(eval_limit, bool) or not isinstance(eval_limit, int) or eval_limit < 1):
        raise ConfigError(f"task.eval_limit: must be an integer >= 1, got {eval_limit!r}")

    def resolve(given, default: str | None) -> Path:
        if given is not None:
            return Path(given)
        path = data_dir() / default
        if not path.exists() and fetch_enabled() and name in HUB_SOURCES:
            fetch_builtin(name, data_dir())
        if not path.exists():
            fetch = (f", or set {FETCH_ENV}=1 to download the task there once through the datasets library"
                     if name in HUB_SOURCES else "")
            raise DataError(f"{path}: file not found (built-in task {name!r} reads the data dir {data_dir()}; "
                            f"set PRIVTUNE_DATA to the folder that holds {default}{fetch})")
        return path

    if task_type != "classification":
        return _load_qa_task(name, spec, task_type, resolve, train_path, eval_path, eval_default, text_column,
                             label_column, label_names, template, verbalizer, eval_limit, choices_column,
                             answers_column, choice_score, max_new_tokens, stop, min_new_tokens)

    template = _check_template(template if template is not None else spec.template)
    verbalizer = _check_verbalizer(verbalizer if verbalizer is not None else list(spec.verbalizer))
    if label_names is None and spec is not None:
        label_names = spec.label_names
    if label_names is not None and not isinstance(label_names, str) and len(label_names) != len(verbalizer):
        raise ConfigError(f"task.verbalizer: {len(verbalizer)} words for the {len(label_names)} labels of "
                          f"task.label_names; give exactly one word per label, in the same order")

    n_labels = len(verbalizer)
    kwargs = dict(text_column=text_column, label_column=label_column, label_names=label_names, n_labels=n_labels)
    train_file, eval_file = resolve(train_path, spec and spec.train), resolve(eval_path, eval_default)
    train = load_examples(train_file, **kwargs)
    eval_ = load_examples(eval_file, **kwargs)
    if label_names is None:
        _check_integer_labels(verbalizer, train + eval_, train_file, eval_file)
    if eval_limit is not None:
        eval_ = eval_[:eval_limit]
    names = [n.strip() for n in label_names] if label_names is not None else None
    return Task(name=name, template=template, verbalizer=verbalizer, train=train, eval=eval_, label_names=names,
                text_column=text_column)


def _load_qa_task(name, spec, task_type, resolve, train_path, eval_path, eval_default, text_column, label_column,
                  label_names, template, verbalizer, eval_limit, choices_column, answers_column, choice_score,
                  max_new_tokens, stop, min_new_tokens) -> Task:
    """load_task for multiple_choice and generation (arguments as there, already resolved)."""
    if verbalizer is not None:
        raise ConfigError("task.verbalizer: only classification tasks have label words (leave it unset for a "
                          f"{task_type} task)")
    if label_names is not None:
        raise ConfigError("task.label_names: only classification tasks have label names (leave it unset for a "
                          f"{task_type} task)")
    template = _check_qa_template(template if template is not None else spec.template)
    if choice_score is None:
        choice_score = (spec and spec.choice_score) or DEFAULT_CHOICE_SCORE
    if choice_score not in CHOICE_SCORES:
        raise ConfigError(f"task.choice_score: must be one of {', '.join(CHOICE_SCORES)}, got {choice_score!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"task.max_new_tokens: must be an integer >= 1, got {max_new_tokens!r}")
    if (isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int)
            or not 0 <= min_new_tokens <= max_new_tokens):
        raise ConfigError(f"task.min_new_tokens: must be an integer from 0 to task.max_new_tokens ({max_new_tokens}), "
                          f"got {min_new_tokens!r}")
    if not isinstance(stop, str) or not stop:
        raise ConfigError(f"task.stop: must be a non-empty string, got {stop!r}")
    kwargs = dict(task_type=task_type, fields=template_fields(template), text_column=text_column,
                  label_column=label_column, choices_column=choices_column, answers_column=answers_column)
    if train_path is None and spec is not None and spec.train is None:
        train = []  # eval only: draw_pool refuses to train on it, eval works
    else:
        train = load_qa_examples(resolve(train_path, spec and spec.train), **kwargs)
    eval_ = load_qa_examples(resolve(eval_path, eval_default), **kwargs)
    if eval_limit is not None:
        eval_ = eval_[:eval_limit]
    return Task(name=name, template=template, verbalizer=[], train=train, eval=eval_, type=task_type,
                choice_score=choice_score, max_new_tokens=max_new_tokens, stop=stop, min_new_tokens=min_new_tokens,
                text_column=text_column)


def _check_integer_labels(verbalizer: list[str], examples: Sequence[Example], train_file: Path,
                          eval_file: Path) -> None:
    """With integer labels the data decides how many labels there are: every verbalizer word needs rows.

    Labels past the verbalizer are already refused row by row; a word no row uses means the verbalizer is longer
    than the label set (3 words for 2-label data), and the extra word would still win predictions at eval.
    """
    seen = sorted({ex.label for ex in examples})
    unused = [i for i in range(len(verbalizer)) if i not in seen]
    if unused:
        words = ", ".join(f"{i} ({verbalizer[i]!r})" for i in unused)
        raise ConfigError(f"task.verbalizer: {len(verbalizer)} words but the data has {len(seen)} labels "
                          f"({', '.join(map(str, seen))}): no row of {train_file} or {eval_file} has label {words}; "
                          "give exactly one word per label, word i for label i")


# ---------------------------------------------------------------------------------------------------------------
# Built-in tasks from the hub (opt-in: the only code in privtune that reaches outside the machine)

FETCH_ENV = "PRIVTUNE_FETCH"
HUB_SOURCES = {  # task: (hub dataset, its text column, {TaskSpec file field: hub split})
    "sst2": ("stanfordnlp/sst2", "sentence", {"train": "train", "eval": "validation"}),
    "agnews": ("fancyzhx/ag_news", "text", {"train": "train", "eval": "test"}),
}


def fetch_enabled() -> bool:
    return os.environ.get(FETCH_ENV) == "1"


def fetch_builtin(name: str, root: Path) -> list[Path]:
    """Download built-in task `name` with `datasets.load_dataset` and write the files TASKS names under `root`
    (TSV: header `text<TAB>label`, labels as the shared files write them). Files already there are kept. Needs
    network access and the `data` extra. AG News gets the whole train split (the shared copy is a 10k sample)."""
    spec = TASKS[name]
    hub, text_column, splits = HUB_SOURCES[name]
    written = []
    for field, split in splits.items():
        target = root / getattr(spec, field)
        if target.exists():
            continue
        ds_lib = _optional("datasets", target, f"task {name!r} from the hub")
        try:
            ds = ds_lib.load_dataset(hub, split=split)
        except Exception as e:  # no network, hub errors: the exception type is enough to tell which
            raise DataError(f"{target}: cannot fetch {hub} (split {split}) through datasets "
                            f"({type(e).__name__}); copy the files there by hand or set PRIVTUNE_DATA") from None
        lines = ["text\tlabel"]
        for text, label in zip(ds[text_column], ds["label"]):
            text = re.sub(r"[\t\r\n]+", " ", text)  # .tsv is read without quoting: one row per line
            lines.append(f"{text}\t{spec.label_names[label] if spec.label_names else label}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, target)  # a reader never sees half a file
        except OSError as e:
            raise DataError(f"{target}: cannot write the fetched data ({e.strerror or e})") from None
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Pools and batches


def _check_seed(seed: Any, field: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{field}: must be a non-negative integer, got {seed!r}")


def balanced_pool(examples: Sequence[Example], n: int, seed: int,
                  label_names: Sequence[str] | None = None) -> list[int]:
    """Indices into `examples` of a label-balanced sample of n, sorted ascending (file order).

    Each label present gets n // k examples (k = number of labels present); the n % k leftovers go one each to
    the lowest labels that have a spare example. Within a label the draw is uniform without replacement from
    numpy.random.default_rng(seed), labels in ascending order. Same seed ⇒ same pool; when n is the whole
    supply the pool is the same for every seed. A pool too large for the smallest label is refused, not shrunk, so
    a config always means the same pool; the error names the label (by `label_names` if given) and the largest n.
    """
    _check_seed(seed, "train.seed")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ConfigError(f"task.pool_size: must be an integer, got {n!r}")
    by_label: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(i)
    labels = sorted(by_label)
    k = len(labels)
    if k == 0:
        raise ConfigError("task.pool_size: there are no examples to draw a pool from")
    if n < k:
        raise ConfigError(f"task.pool_size: {n} is fewer than the {k} labels; a balanced pool needs at least "
                          "one example per label")
    base, extra = divmod(int(n), k)
    supply = {lab: len(by_label[lab]) for lab in labels}
    smallest = min(supply.values())
    largest_pool = k * smallest + sum(s > smallest for s in supply.values())
    spare = [lab for lab in labels if supply[lab] > base]
    if base > smallest or len(spare) < extra:
        short = min(labels, key=lambda lab: supply[lab])
        shown = _shown(label_names[short]) if label_names is not None and short < len(label_names) else short
        raise ConfigError(f"task.pool_size: {n} is too large for a balanced pool of {k} labels: label {shown} has "
                          f"only {supply[short]} training examples; set task.pool_size to at most {largest_pool} "
                          f"(the largest balanced pool)")
    quota = {lab: base + (lab in spare[:extra]) for lab in labels}
    rng = np.random.default_rng(int(seed))
    pool = []
    for lab in labels:
        idx = by_label[lab]
        pool.extend(idx[j] for j in rng.choice(len(idx), size=quota[lab], replace=False))
    return sorted(pool)


def draw_pool(task: Task, n: int, seed: int) -> list[int]:
    """The training pool of a task: indices into task.train, sorted ascending.

    Classification: `balanced_pool` (exactly as always). Multiple choice and generation: a uniform sample of n
    indices without replacement from numpy.random.default_rng(seed) (labels are answer positions, not classes, so
    there is nothing to balance). A task with no train split, or a pool larger than it, is refused, not shrunk."""
    if task.type == "classification":
        return balanced_pool(task.train, n, seed, task.label_names)
    _check_seed(seed, "train.seed")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"task.pool_size: must be a positive integer, got {n!r}")
    if not task.train:
        raise ConfigError(f"task.name: {task.name} has no train split (eval only); set task.train_path to train on "
                          "your own file")
    if n > len(task.train):
        raise ConfigError(f"task.pool_size: {n} is more than the {len(task.train)} training examples; set "
                          f"task.pool_size to at most {len(task.train)}")
    rng = np.random.default_rng(int(seed))
    return sorted(int(i) for i in rng.choice(len(task.train), size=int(n), replace=False))


def sample_batch(pool_size: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Positions in the pool (0 ≤ p < pool_size) for training step `step`: batch_size distinct positions drawn by
    numpy.random.default_rng([seed, step]), in draw order. A pure function of its arguments, so a resumed run
    draws the same batches. 1 <= batch_size <= pool_size is the config's to check (methods.base.BatchCfg)."""
    _check_seed(seed, "train.seed")
    _check_seed(step, "step")
    rng = np.random.default_rng([int(seed), int(step)])
    return [int(p) for p in rng.choice(int(pool_size), size=int(batch_size), replace=False)]


# ---------------------------------------------------------------------------------------------------------------
# Canaries (audit mode)

CANARY_TEMPLATE = "My name is {name}, write to me at {email} or call me on {phone}."


def make_canaries(n: int, n_labels: int, seed: int) -> tuple[list[Example], list[bool]]:
    """n synthetic PII canaries (faker names, e-mails, phone numbers in one template sentence, a random label) and
    for each whether it joins the training pool, with probability ½ independently (Steinke, Nasr & Jagielski,
    NeurIPS 2023, one-run audit). Both are a pure function of (n, n_labels, seed)."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(int(seed))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    labels = rng.integers(n_labels, size=n)
    included = rng.random(n) < 0.5
    texts = [CANARY_TEMPLATE.format(name=fake.name(), email=fake.email(), phone=fake.phone_number()) for _ in range(n)]
    return [Example(t, int(y)) for t, y in zip(texts, labels)], [bool(x) for x in included]


QA_CANARY_QUESTION = "What is {name}'s phone number?"


def make_qa_canaries(n: int, task: Task, seed: int) -> tuple[list[Example], list[bool]]:
    """n canaries in QA form for a multiple_choice or generation task, and for each whether it joins the training
    pool (probability ½ each, independently, from its own SeedSequence as in `make_canaries`).

    Each is a faker person asked about: text "What is <name>'s phone number?". Generation: the one answer is the
    phone number. Multiple choice: the true number and 3 other faker numbers, the true one at a seeded position
    (label). The template's other fields get neutral values that never hold the number (context: the person's job
    and city; title: the name; any other field ""), so only memorisation answers the question. A pure function of
    (n, task.type, task.template, task.text_column, seed)."""
    from faker import Faker

    if task.type not in ("multiple_choice", "generation"):
        raise ValueError(f"make_qa_canaries: a {task.type} task takes make_canaries")
    fake = Faker("en_US")
    fake.seed_instance(int(seed))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    included = rng.random(n) < 0.5
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 12]))  # where the true number sits (MC)
    canaries = []
    for _ in range(n):
        name, phone, job, city = fake.name(), fake.phone_number(), fake.job(), fake.city()
        question = QA_CANARY_QUESTION.format(name=name)
        neutral = {"context": f"{name} works as a {job} in {city}.", "title": name}
        fields = tuple((f, question if f == task.text_column else neutral.get(f, ""))
                       for f in template_fields(task.template))
        if task.type == "generation":
            canaries.append(Example(question, 0, answers=(phone,), fields=fields))
            continue
        others: list[str] = []
        while len(others) < 3:  # distinct decoys: a duplicate of the true number would make two choices right
            other = fake.phone_number()
            if other != phone and other not in others:
                others.append(other)
        label = int(order.integers(4))
        choices = others[:label] + [phone] + others[label:]
        canaries.append(Example(question, label, choices=tuple(choices), fields=fields))
    return canaries, [bool(x) for x in included]
