"""privtune.config: an unknown key's one-line error suggests the closest key of its section (difflib)."""

import pytest

from privtune.errors import ConfigError
from privtune.methods import load_config

CASES = {
    "method.lrr=0.1": "method.lrr: unknown key; did you mean method.lr?",
    "trian.steps=5": "trian: unknown key; did you mean train?",
    "train.step=5": "train.step: unknown key; did you mean train.steps?",
    "trainable.lora.rr=4": "trainable.lora.rr: unknown key; did you mean trainable.lora.r?",
    "foo.bar=1": "foo: unknown key",  # nothing close: no guess
}


@pytest.mark.parametrize("override", sorted(CASES))
def test_unknown_key_suggests_the_closest(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == CASES[override]


def test_suggestion_looks_in_the_chosen_methods_section():
    with pytest.raises(ConfigError, match=r"^method.budgt: unknown key; did you mean method.budget\?$"):
        load_config(None, ["method.name=paczero", "method.budgt=0.3"])
    with pytest.raises(ConfigError, match=r"^method.budget: unknown key$"):  # mezo has no budget, nor anything close
        load_config(None, ["method.budget=0.3"])


def test_method_keys_without_a_name_override_the_default_method():
    cfg = load_config(None, ["method.lr=0.5"])
    assert cfg.method.name == "mezo" and cfg.method.lr == 0.5


TASK_CASES = {  # the task-type keys (issue #20): each bad value is one line naming its key
    "task.type=regression": "task.type: Input should be 'classification', 'multiple_choice' or 'generation'",
    "task.choice_score=max": "task.choice_score: Input should be 'sum' or 'mean'",
    "task.max_new_tokens=0": "task.max_new_tokens: Input should be greater than 0",
    "task.stop=''": "task.stop: String should have at least 1 character",
    "task.tpye=generation": "task.tpye: unknown key; did you mean task.type?",
    "task.answer_column=a": "task.answer_column: unknown key; did you mean task.answers_column?",
}


@pytest.mark.parametrize("override", sorted(TASK_CASES))
def test_task_type_keys(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(TASK_CASES[override])
    assert "\n" not in str(e.value)


def test_task_type_defaults_to_the_builtin():
    cfg = load_config(None, ["task.name=squad"])
    assert cfg.task.type is None and cfg.task.stop == "\n" and cfg.task.max_new_tokens == 32
