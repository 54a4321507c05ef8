"""privtune.data, task types (issue #20): multiple-choice and generation tasks, their built-ins, custom files and
every bad-input error, render_example, draw_pool and QA canaries."""

import json
from pathlib import Path

import pytest

from privtune.data import (DEFAULT_CHOICE_SCORE, TASKS, Example, Task, balanced_pool, draw_pool, load_qa_examples, load_task,
                           make_canaries, make_qa_canaries, render, render_example, template_fields)
from privtune.errors import DataError
from privtune.run.setup import add_canaries, build_task

from conftest import SECRET, config_error, data_error

MC_TEMPLATE = "Question: {question}\nAnswer:"


def jsonl(tmp_path: Path, name: str, rows: list) -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def mc_row(**over):
    return {"question": SECRET, "choices": ["red " + SECRET, "blue", "green"], "label": 1, **over}


def gen_row(**over):
    return {"question": SECRET, "context": "ctx " + SECRET, "answers": [SECRET + " answer"], **over}


def load_mc(path: Path, **kw):
    return load_qa_examples(path, "multiple_choice", fields=["question"], text_column="question", **kw)


def load_gen(path: Path, fields=("context", "question"), **kw):
    return load_qa_examples(path, "generation", fields=list(fields), text_column="question", **kw)


# ---------------------------------------------------------------------------------------------------------------
# Built-in tasks (counts from the shared data README)


def test_squad_loads_with_deduplicated_answers():
    task = load_task("squad")
    assert task.type == "generation" and task.verbalizer == [] and task.n_labels == 1
    assert (len(task.train), len(task.eval)) == (4961, 5609)
    ex = task.train[0]
    assert ex.label == 0 and ex.answers == ("Denver Broncos",)  # the file lists it three times
    assert [name for name, _ in ex.fields] == ["title", "context", "question"]
    assert dict(ex.fields)["question"] == ex.text
    prompt = render_example(task.template, ex)
    assert prompt.startswith("Title: Super_Bowl_50\nContext: Super Bowl 50 was")
    assert prompt.endswith(f"\nQuestion: {ex.text}\nAnswer:")
    assert all(ex.answers and len(set(ex.answers)) == len(ex.answers) for ex in task.train + task.eval)


@pytest.mark.parametrize("name, n_train, n_test", [("arc_easy", 2251, 2376), ("arc_challenge", 1119, 1172)])
def test_arc_loads_with_three_to_five_choices(name, n_train, n_test):
    task = load_task(name)
    assert task.type == "multiple_choice" and task.verbalizer == []
    assert (len(task.train), len(task.eval)) == (n_train, n_test)
    sizes = {len(ex.choices) for ex in task.train + task.eval}
    assert sizes == {3, 4, 5} and task.n_labels == 5
    assert all(0 <= ex.label < len(ex.choices) for ex in task.train + task.eval)
    three = next(ex for ex in task.eval if len(ex.choices) == 3)
    five = next(ex for ex in task.eval if len(ex.choices) == 5)
    assert render_example(task.template, three) == f"Question: {three.text}\nAnswer:"
    assert all(c and c == c.strip() for c in three.choices + five.choices)


def test_arc_dev_split_for_tuning():
    assert len(load_task("arc_easy", eval_split="dev").eval) == 570
    assert len(load_task("arc_challenge", eval_split="dev").eval) == 299
    config_error("eval_split", load_task, "squad", eval_split="dev")
    config_error("eval_split", load_task, "arc_easy", eval_split="test")


def test_openbookqa_is_eval_only():
    task = load_task("openbookqa")
    assert task.type == "multiple_choice" and task.train == [] and len(task.eval) == 500
    msg = config_error("task.name", draw_pool, task, 10, 0)
    assert msg == ("task.name: openbookqa has no train split (eval only); set task.train_path to train on your "
                   "own file")


def test_openbookqa_trains_on_a_given_train_path(tmp_path):
    train = jsonl(tmp_path, "t.jsonl", [mc_row(), mc_row(label=0)])
    task = load_task("openbookqa", train_path=train)
    assert len(task.train) == 2 and draw_pool(task, 2, 0) == [0, 1]


def test_builtin_classification_unchanged():
    assert TASKS["sst2"].type == "classification" and TASKS["sst2"].text_column == "text"
    task = load_task("sst2", eval_limit=3)
    assert task.type == "classification" and task.n_labels == 2 and task.verbalizer == [" negative", " positive"]
    assert all(ex.choices == () and ex.answers == () and ex.fields == () for ex in task.eval)


def test_type_must_match_the_builtin():
    msg = config_error("task.type", load_task, "squad", task_type="classification")
    assert "squad is a generation task" in msg
    config_error("task.type", load_task, "custom", task_type="regression")


def test_build_task_passes_the_new_keys(tmp_path):
    from privtune.methods import load_config

    train = jsonl(tmp_path, "t.jsonl", [gen_row(), gen_row(answers="one string")])
    cfg = load_config(None, ["task.name=custom", "task.type=generation", f"task.train_path={train}",
                             f"task.eval_path={train}", "task.text_column=question", "task.max_new_tokens=7",
                             "task.min_new_tokens=2",
                             "task.template=\"Context: {context}\\nQ: {text}\\nA:\""])
    task = build_task(cfg)
    assert task.type == "generation" and task.max_new_tokens == 7 and task.stop == "\n" and task.min_new_tokens == 2
    assert build_task(load_config(None, ["task.name=squad"])).min_new_tokens == 1  # an answer is never empty
    assert task.train[1].answers == ("one string",)
    assert render_example(task.template, task.train[0]) == f"Context: ctx {SECRET}\nQ: {SECRET}\nA:"
    cfg = load_config(None, ["task.name=arc_easy", "task.choice_score=mean", "task.eval_limit=4"])
    task = build_task(cfg)  # the config's text_column default "text" reads ARC's own "question" column
    assert task.choice_score == "mean" and len(task.eval) == 4 and task.text_column == "question"


def test_the_choice_score_default_is_the_tasks(tmp_path):
    """Unset, a multiple-choice task scores as its TaskSpec says (ARC-Easy sums, chosen on its dev split) and every
    other one, built-in or custom, takes the per-token mean; a config's choice_score overrides either."""
    from privtune.methods import load_config

    for name, want in (("arc_easy", "sum"), ("arc_challenge", "mean"), ("openbookqa", "mean")):
        assert build_task(load_config(None, [f"task.name={name}", "task.eval_limit=2"])).choice_score == want
        assert load_task(name, eval_limit=2, choice_score="sum").choice_score == "sum"
    path = jsonl(tmp_path, "mc.jsonl", [mc_row()])
    custom = dict(task_type="multiple_choice", train_path=path, eval_path=path, template=MC_TEMPLATE,
                  text_column="question")
    assert load_task("custom", **custom).choice_score == DEFAULT_CHOICE_SCORE == "mean"
    assert load_task("custom", choice_score="sum", **custom).choice_score == "sum"


# ---------------------------------------------------------------------------------------------------------------
# render_example


def test_render_example_fills_text_and_fields_without_format():
    ex = Example("what is {x}?  \n", 0, answers=("y",), fields=(("context", "a {b} c"), ("title", "T")))
    assert render_example("{title}|{context}|{text}|{unknown}", ex) == "T|a {b} c|what is {x}?|{unknown}"


def test_render_example_is_one_pass():
    ex = Example("q", 0, answers=("a",), fields=(("title", "{context}"), ("context", "C")))
    assert render_example("{title} {context}", ex) == "{context} C"  # a value's own braces are never filled in


def test_render_example_agrees_with_render_for_classification():
    ex = Example("great film ", 1)
    assert render_example("Review: {text}\nSentiment:", ex) == render("Review: {text}\nSentiment:", ex.text)


def test_template_fields():
    assert template_fields("Title: {title}\n{text} {context} {title} {not a field} {}") == ["title", "context"]


# ---------------------------------------------------------------------------------------------------------------
# Custom files: loading


def test_custom_multiple_choice_jsonl(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(), "", mc_row(label="2", choices=[" a ", "b"], question=" q ")])
    with pytest.raises(DataError):  # "2" is out of range for 2 choices: checked per row
        load_mc(path)
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(), "", mc_row(label="0", choices=[" a ", "b"], question=" q ")])
    a, b = load_mc(path)
    assert a == Example(SECRET, 1, choices=("red " + SECRET, "blue", "green"), fields=(("question", SECRET),))
    assert b == Example("q", 0, choices=("a", "b"), fields=(("question", "q"),))


def test_custom_generation_tsv_and_parquet(tmp_path):
    path = tmp_path / "g.tsv"
    path.write_text("question\tcontext\tanswers\nq1\tc1\ta1\n", encoding="utf-8")
    assert load_gen(path) == [Example("q1", 0, answers=("a1",), fields=(("context", "c1"), ("question", "q1")))]

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mc.parquet"
    pq.write_table(pa.table({"question": ["q"], "choices": [["x", "y"]], "label": [1]}), path)
    assert load_mc(path) == [Example("q", 1, choices=("x", "y"), fields=(("question", "q"),))]


def test_custom_multiple_choice_save_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["q"], "choices": [["x", "y", "z"]], "label": [2]}).save_to_disk(
        str(tmp_path / "ds"))
    assert load_mc(tmp_path / "ds") == [Example("q", 2, choices=("x", "y", "z"), fields=(("question", "q"),))]


def test_custom_task_needs_no_verbalizer(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(), mc_row(choices=["a", "b", "c", "d", "e"], label=4)])
    task = load_task("custom", task_type="multiple_choice", train_path=path, eval_path=path, template=MC_TEMPLATE,
                     text_column="question")
    assert task.verbalizer == [] and task.n_labels == 5 and task.label_names is None


# ---------------------------------------------------------------------------------------------------------------
# Custom files: errors (each names the file, the row and the column or field; none quotes a row's text)


def test_error_missing_field(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(), {"question": SECRET, "label": 0}])
    msg = data_error(load_mc, path, path)
    assert "row 2 (line 2) has no 'choices' field" in msg


def test_error_missing_column_in_tsv(tmp_path):
    path = tmp_path / "g.tsv"
    path.write_text(f"question\tanswers\n{SECRET}\t{SECRET}\n", encoding="utf-8")
    msg = data_error(load_gen, path, path)
    assert "missing column 'context'" in msg


def test_error_template_field_the_row_lacks(tmp_path):
    path = jsonl(tmp_path, "g.jsonl", [gen_row(), {"question": SECRET, "answers": ["a"]}])
    msg = data_error(load_task, path, "custom", task_type="generation", train_path=path, eval_path=path,
                     text_column="question", template="Context: {context}\nQuestion: {question}\nAnswer:")
    assert "row 2 (line 2) has no 'context' field" in msg


def test_error_template_field_not_a_string(tmp_path):
    path = jsonl(tmp_path, "g.jsonl", [gen_row(context=["a list"])])
    msg = data_error(load_gen, path, path)
    assert "template field 'context' at row 1 (line 1) is a list, expected a string" in msg


@pytest.mark.parametrize("choices, expected", [
    (SECRET, "column 'choices' at row 1 (line 1) is a str, expected a list of 2 to 5 answer options"),
    ([SECRET], "column 'choices' at row 1 (line 1) has 1 choices, expected 2 to 5"),
    ([SECRET, "b", "c", "d", "e", "f"], "column 'choices' at row 1 (line 1) has 6 choices, expected 2 to 5"),
    ([SECRET, "  "], "choice 1 in column 'choices' at row 1 (line 1) is empty"),
    ([SECRET, 7], "choice 1 in column 'choices' at row 1 (line 1) is a int, expected a string"),
    ([SECRET, None], "choice 1 in column 'choices' at row 1 (line 1) is missing (null)"),
])
def test_error_bad_choices(tmp_path, choices, expected):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(choices=choices, label=0)])
    assert expected in data_error(load_mc, path, path)


def test_error_label_out_of_range_for_the_rows_choices(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(label=2), mc_row(choices=[SECRET, "b"], label=2)])
    msg = data_error(load_mc, path, path)
    assert "label 2 in column 'label' at row 2 (line 2) is out of range for that row's 2 choices [0, 2)" in msg


@pytest.mark.parametrize("label", [SECRET, 1.0, True, None, -1])
def test_error_label_not_an_index(tmp_path, label):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(label=label)])
    msg = data_error(load_mc, path, path)
    assert "column 'label' at row 1 (line 1)" in msg


@pytest.mark.parametrize("answers, expected", [
    ([], "column 'answers' at row 1 (line 1) has no answers"),
    ({"text": SECRET}, "column 'answers' at row 1 (line 1) is a dict, expected a list of answer strings"),
    ([SECRET, 3], "answer 1 in column 'answers' at row 1 (line 1) is a int, expected a string"),
    ([SECRET, " "], "answer 1 in column 'answers' at row 1 (line 1) is empty"),
    ("", "answer 0 in column 'answers' at row 1 (line 1) is empty"),
])
def test_error_bad_answers(tmp_path, answers, expected):
    path = jsonl(tmp_path, "g.jsonl", [gen_row(answers=answers)])
    assert expected in data_error(load_gen, path, path)


def test_error_empty_question(tmp_path):
    path = jsonl(tmp_path, "g.jsonl", [gen_row(question="  ")])
    assert "text in column 'question' at row 1 (line 1) is empty" in data_error(load_gen, path, path)


def test_error_tsv_for_multiple_choice(tmp_path):
    path = tmp_path / "mc.tsv"
    path.write_text(f"question\tchoices\tlabel\n{SECRET}\ta\t0\n", encoding="utf-8")
    msg = data_error(load_mc, path, path)
    assert "cannot hold a list of choices per row; use .jsonl" in msg
    csv = tmp_path / "mc.csv"
    csv.write_text("question,choices,label\n", encoding="utf-8")
    assert "use .jsonl" in data_error(load_mc, csv, csv)


def test_error_invalid_json_line(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row(), '{"question": "' + SECRET])
    assert "line 2 is not valid JSON" in data_error(load_mc, path, path)


def test_error_verbalizer_for_a_non_classification_task(tmp_path):
    msg = config_error("task.verbalizer", load_task, "squad", verbalizer=[" yes", " no"])
    assert msg.startswith("task.verbalizer: only classification tasks have label words")
    config_error("task.label_names", load_task, "arc_easy", label_names=["a", "b"])


def test_error_template_without_fields():
    msg = config_error("task.template", load_task, "arc_easy", template="Answer:")
    assert "at least one" in msg
    assert load_task("arc_easy", template="{text} ->", eval_limit=1).eval[0]  # {text} alone is a field


def test_error_custom_qa_task_needs_template(tmp_path):
    path = jsonl(tmp_path, "mc.jsonl", [mc_row()])
    config_error("task.template", load_task, "custom", task_type="multiple_choice", train_path=path,
                 eval_path=path)
    config_error("task.verbalizer", load_task, "custom", train_path=path, eval_path=path, template="{text}")


@pytest.mark.parametrize("key, value", [("choice_score", "max"), ("max_new_tokens", 0), ("stop", ""),
                                        ("max_new_tokens", True), ("min_new_tokens", -1), ("min_new_tokens", 33),
                                        ("min_new_tokens", 1.0)])
def test_error_bad_decoding_arguments(key, value):
    config_error(f"task.{key}", load_task, "squad", **{key: value})


# ---------------------------------------------------------------------------------------------------------------
# draw_pool


def _qa_task(n: int) -> Task:
    return Task("t", "{text}", [], [Example(f"q{i}", 0, answers=("a",)) for i in range(n)], [], type="generation")


def test_draw_pool_uniform_sorted_deterministic():
    task = _qa_task(50)
    pool = draw_pool(task, 20, 3)
    assert pool == sorted(pool) and len(set(pool)) == 20 and all(0 <= i < 50 for i in pool)
    assert draw_pool(task, 20, 3) == pool and draw_pool(task, 20, 4) != pool
    assert draw_pool(task, 50, 9) == list(range(50))


def test_draw_pool_refuses_too_large():
    msg = config_error("task.pool_size", draw_pool, _qa_task(50), 51, 0)
    assert "set task.pool_size to at most 50" in msg
    config_error("train.seed", draw_pool, _qa_task(5), 2, -1)


def test_draw_pool_classification_is_balanced_pool():
    task = load_task("agnews")
    assert draw_pool(task, 40, 7) == balanced_pool(task.train, 40, 7, task.label_names)


# ---------------------------------------------------------------------------------------------------------------
# QA canaries


def _builtin_like(name: str) -> Task:
    spec = TASKS[name]
    return Task(name, spec.template, [], [], [], type=spec.type, text_column=spec.text_column)


def test_qa_canaries_generation():
    task = _builtin_like("squad")
    canaries, included = make_qa_canaries(20, task, 5)
    again = make_qa_canaries(20, task, 5)
    assert (canaries, included) == again and (canaries, included) != make_qa_canaries(20, task, 6)
    assert 0 < sum(included) < 20
    for c in canaries:
        phone, = c.answers
        fields = dict(c.fields)
        assert c.text.startswith("What is ") and c.text.endswith("'s phone number?") and fields["question"] == c.text
        name = c.text[len("What is "):-len("'s phone number?")]
        assert fields["title"] == name and fields["context"].startswith(f"{name} works as a ")
        assert phone not in render_example(task.template, c)  # only memorisation can answer


def test_qa_canaries_multiple_choice():
    task = _builtin_like("arc_easy")
    canaries, _ = make_qa_canaries(30, task, 5)
    assert make_qa_canaries(30, task, 5)[0] == canaries
    assert {c.label for c in canaries} == {0, 1, 2, 3}  # the true number's position is drawn, not fixed
    gen, _ = make_qa_canaries(30, _builtin_like("squad"), 5)
    for c, g in zip(canaries, gen):
        assert len(c.choices) == 4 == len(set(c.choices)) and c.fields == (("question", c.text),)
        assert c.choices[c.label] not in render_example(task.template, c)
    assert canaries[0].choices[canaries[0].label] == gen[0].answers[0]  # same faker stream: same first person


def test_qa_canaries_other_template_fields_are_blank():
    task = Task("c", "{note} {text} {context}", [], [], [], type="generation", text_column="question")
    c = make_qa_canaries(1, task, 0)[0][0]
    assert dict(c.fields)["note"] == "" and c.answers[0] not in dict(c.fields)["context"]


def test_add_canaries_records_what_the_audit_needs():
    task = load_task("arc_easy")
    pool = draw_pool(task, 10, 0)
    record = add_canaries(task, pool, 8, 2)
    canaries, included = make_qa_canaries(8, task, 2)
    assert task.train[-8:] == canaries and len(pool) == 10 + sum(included)
    assert record["included"] == included and record["labels"] == [c.label for c in canaries]
    assert record["choices"] == [list(c.choices) for c in canaries] and record["prompt_template"] == task.template
    rebuilt = [Example(t, y, choices=tuple(ch), fields=tuple(map(tuple, f))) for t, y, ch, f in
               zip(record["texts"], record["labels"], record["choices"], record["fields"])]
    assert rebuilt == canaries
    json.dumps(record)  # written to the run dir as canaries.json


def test_add_canaries_classification_unchanged():
    task = load_task("sst2", eval_limit=2)
    pool = draw_pool(task, 10, 0)
    record = add_canaries(task, pool, 6, 1)
    canaries, included = make_canaries(6, 2, 1)
    assert set(record) == {"template", "seed", "texts", "labels", "included"}
    assert record["texts"] == [c.text for c in canaries] and record["included"] == included
