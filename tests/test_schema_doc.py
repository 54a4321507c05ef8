"""docs/config.md is generated from the schema (privtune.schema_doc) and complete: every key, type, default, meaning."""

from pathlib import Path

import pytest

from privtune import config as C
from privtune import schema_doc as S
from privtune.errors import ConfigError
from privtune.methods import config_classes

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _schema_keys() -> set[tuple[str, str]]:
    """(section, dotted key) of every leaf field, walked here independently of schema_doc."""
    keys = set()

    def walk(model, prefix, section):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, C.BaseModel):
                walk(field.annotation, f"{prefix}{name}.", section)
            else:
                keys.add((section, f"{prefix}{name}"))

    for name in ("model", "task", "trainable", "train"):
        walk(C.RunCfg.model_fields[name].annotation, f"{name}.", name)
    for cls in config_classes():
        walk(cls, "method.", f"method: {cls.model_fields['name'].default}")
    keys.add(("top level", "out_dir"))
    return keys


def test_docs_config_md_is_current():
    """Regenerate with: python -m privtune.schema_doc > docs/config.md"""
    assert DOC.read_text(encoding="utf-8") == S.render_markdown()


def test_every_key_is_documented_with_a_meaning():
    rows = {(sec.title, r.key): r for sec in S.sections() for r in sec.rows}
    assert set(rows) == _schema_keys()
    assert not [k for k, r in rows.items() if not r.meaning.strip()]
    assert not [k for k, r in rows.items() if not r.type or not r.default]


def test_every_meanings_entry_names_a_real_key():
    """A renamed or removed field must not leave its meaning behind."""
    keys = {k for _, k in _schema_keys()}
    per_method = {f"method.{sec.split(': ')[1]}.{k.split('.', 1)[1]}" for sec, k in _schema_keys()
                  if sec.startswith("method: ")}
    assert not [k for k in S.MEANINGS if k not in keys | per_method]


def test_types_defaults_and_source_comments():
    rows = {r.key: r for sec in S.sections("dpzero") for r in sec.rows}
    assert rows["task.pool_size"].type == "int > 0" and rows["task.pool_size"].default == "1000"
    assert rows["model.seed"].type == "int ≥ 0, < 2^63"
    assert rows["method.accountant"].type == "rdp | pld"
    assert rows["method.epsilon"].type == "float > 0 or null" and rows["method.epsilon"].default == "null"
    assert rows["trainable.lora.target_modules"].default == "[q_proj, v_proj]"
    assert rows["method.delta"].default == "1e-05"
    # meanings from a trailing comment, a description, and a comment on the line above the field
    assert rows["method.clip"].meaning.startswith("C: each per-example projected gradient")
    assert {r.key: r for sec in S.sections("paczero") for r in sec.rows}["method.budget"].meaning == \
        "total MI budget in nats (mode mi)"
    assert {r.key: r for sec in S.sections("bboxer") for r in sec.rows}["method.granularity"].meaning.startswith(
        "one x per entry")


def test_render_text_for_one_method():
    text = S.render_text("dpsgd")
    assert "[method: dpsgd]" in text and "[method: paczero]" not in text
    assert "method.optimizer = adam  (sgd | adam)" in text and "model.name = tiny  (str)" in text
    assert "[method: paczero]" in S.render_text()
    with pytest.raises(ConfigError, match="method: unknown method 'sgd'"):
        S.render_text("sgd")


def test_markdown_escapes_bars_inside_cells():
    md = S.render_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| `model.dtype`"))
    assert "float32 \\| bfloat16" in row and row.replace("\\|", "").count("|") == 5  # 4 cells
