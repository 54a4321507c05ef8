"""The config reference, generated from the pydantic schema: every key, its type, default and meaning.

`python -m privtune.schema_doc > docs/config.md` writes the Markdown reference; `render_text(method)` is the plain
text a `privtune config show [--method M]` can print. Keys, types and defaults come from `methods.run_model()` (the
method section from each registered method's Config), so a new field appears here without a docs edit. A meaning is
the field's `Field(description=...)`, else an entry of MEANINGS below, else the comment on (or just above) the
field's line in its class's source; tests/test_schema_doc.py fails when a field has none, or when docs/config.md
is not what this module renders.
"""

from __future__ import annotations

import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import lru_cache

import annotated_types as at
from pydantic import BaseModel

from . import config as C
from .errors import ConfigError

# Meanings for fields whose source gives none, or too terse a one; an entry wins over the source comment. "method.K"
# applies to every method that has K (so a method whose K means something else needs its own "method.M.K"), and
# "method.M.K" to method M only.
MEANINGS = {
    "model.name": "smollm2-135m, tiny (a random Llama-style model, for tests) or the path of a local HF folder",
    "model.device": "auto (CUDA when present) | cpu | cuda | cuda:N",
    "model.dtype": "floating-point type the model's weights are loaded and trained in",
    "task.name": "sst2 | agnews (classification) | squad (generation) | arc_easy | arc_challenge | openbookqa "
                 "(multiple_choice; openbookqa is eval only) | custom (docs/tasks.md)",
    "task.type": "classification (a label word after the prompt) | multiple_choice (pick one of 2-5 choices) | "
                 "generation (write the answer); null: the built-in task's type, classification for custom",
    "task.train_path": "task custom: the training file (TSV, CSV, JSONL, Parquet or a `datasets` save_to_disk "
                       "folder; multiple_choice: not TSV/CSV); relative paths are taken from the working directory",
    "task.eval_path": "task custom: the evaluation file (same formats as train_path)",
    "task.text_column": "column holding the input text (the question, for multiple_choice and generation); a "
                        "built-in task left at text reads its own column (squad, ARC, OpenBookQA: question)",
    "task.label_column": "column holding the label: an integer 0..n-1 or a name listed in label_names; "
                         "multiple_choice: the index of the right choice in that row's choices",
    "task.choices_column": "multiple_choice: column holding each row's answer options, a list of 2-5 non-empty "
                           "strings",
    "task.answers_column": "generation: column holding each row's gold answers, a list of non-empty strings or one "
                           "string; the first is trained on, all count at eval",
    "task.label_names": "classification: label names as written in the files, in label order (verbalizer[i] is "
                        "the word for label_names[i]); default per built-in task",
    "task.template": "prompt (default per task). Classification: must contain {text} once; the model scores the "
                     "next token after it (SST-2: \"Review: {text}\\nSentiment:\"). Multiple choice and "
                     "generation: {text} and any {column} of the rows, at least one; the choice or answer follows "
                     "after a space (squad: \"Title: {title}\\nContext: {context}\\nQuestion: {question}\\n"
                     "Answer:\")",
    "task.verbalizer": "classification only: one single-token word per label, in label order (usually with a "
                       "leading space); default per task (SST-2: [\" negative\", \" positive\"])",
    "task.choice_score": "multiple_choice: a choice's score is the sum (sum) or the per-token mean (mean, length-"
                         "normalised) of its tokens' log-probabilities after the prompt; the highest wins. null: "
                         "the task's (arc_easy sum, chosen on its dev split; every other task mean)",
    "task.max_new_tokens": "generation: eval decodes greedily up to this many new tokens",
    "task.min_new_tokens": "generation: eval decoding cannot stop before this many new tokens (0 to "
                           "task.max_new_tokens): a gold answer is never empty, so an empty one always scores 0",
    "task.stop": "generation: eval decoding stops at this string, and training appends it to the gold answer "
                 "(non-empty)",
    "task.pool_size": "seeded training pool: label-balanced for classification, a uniform sample for "
                      "multiple_choice and generation (PACZero paper: N = 1000)",
    "task.canaries": "audit mode: n PII canaries, each in the pool w.p. ½ (privtune audit); multiple_choice and "
                     "generation tasks get them in QA form (a faker person's phone number as the answer)",
    "trainable.kind": "which parameters train: lora | full | norms | final_norm | head (the verbalizer's LM-head "
                      "rows as their own parameter; the tied embedding stays frozen) | head+final_norm | top_layers:K",
    "trainable.lora.r": "LoRA rank (at most the model's hidden size)",
    "trainable.lora.alpha": "LoRA scale numerator (the update is scaled by alpha / r)",
    "trainable.lora.target_modules": "module names that get adapters",
    "trainable.lora.layers": "adapters only in the last K blocks (null: all blocks); enables the frozen-prefix cache "
                             "below them",
    "method.name": "which method this section configures",
    "method.lr": "learning rate",
    "method.eps": "ZO perturbation scale ε: losses are taken at θ ± εz",
    "method.weight_decay": "weight decay λ (matrices only, not norms or biases)",
    "method.batch_size": "examples per step",
    "method.directions": "K: random directions per step, each a two-sided perturbation ±εz",
    "method.lr_power": "exponent of the polynomial learning-rate decay (lr_schedule polynomial)",
    "method.lr_schedule": "learning-rate schedule over train.steps",
    "method.delta": "δ of the (ε, δ)-DP guarantee",
    "method.epsilon": "target ε for the whole run: σ is calibrated by dp_accounting for exactly train.steps (give "
                      "this or noise_multiplier)",
    "method.noise_multiplier": "σ given directly; ε is computed (give this or epsilon)",
    "method.lr_epsilon": "the ε the lr was tuned at: at a smaller epsilon the step is lr·epsilon/lr_epsilon (more "
                         "noise, smaller steps); null: lr at every ε",
    "method.accountant": "dp_accounting accountant that relates σ, the sampling rate and the steps to ε: rdp | pld",
    "method.dpzo.accountant": "dp_accounting accountant that relates σ, the sampling rate and the steps to ε: rdp | "
                              "pld (sub-sampled Laplace is accounted with pld only)",
    "method.sampling": "how a step's batch is drawn from the pool with the secret key: poisson (each example "
                       "with probability q) or fixed (a batch of exactly batch_size)",
    "method.paczero.mode": "zpl (I = 0: release the secret subset's sign only when all M subsets agree, else a "
                           "public coin) or mi (noisy sign within an MI budget)",
    "method.paczero.subsets": "M: number of candidate subsets of the pool, one of them secretly trained on (even)",
    "method.paczero.allocation": "how the MI budget is spread over steps (mode mi): adaptive or uniform",
    "method.dpzero.batch_size": "examples per step; with sampling poisson the expected batch size (q = batch_size / "
                                "pool_size)",
    "method.dpzo.batch_size": "examples per step; with sampling poisson the expected batch size (q = batch_size / "
                              "pool_size)",
    "method.dpsgd.batch_size": "examples per step; with sampling poisson the expected batch size (q = batch_size / "
                               "pool_size)",
    "method.dpzo.mechanism": "noise added to the clipped sum: gaussian or laplace",
    "method.dpsgd.optimizer": "optimizer applied to the privatized gradient: adam or sgd",
    "method.bboxer.delta": "the reported generalization bound holds with probability ≥ 1 − delta",
    "method.bboxer.optimizer": "nevergrad optimizer searching x",
    "method.bboxer.comparison": "what is released per step: incumbent (one bit: did the candidate beat the "
                                "incumbent?) or ranking (the order of `population` candidates)",
    "train.steps": "number of steps (updates)",
    "train.log_every": "write a metrics.jsonl row every this many steps",
    "train.checkpoint_every": "save resume state every this many steps",
    "train.eval_every": "evaluate on the eval split every this many steps (0 = only at the end)",
    "train.initial_eval": "evaluate before the first step too (eval.json's initial_accuracy / initial_f1, the "
                          "zero-shot number); false saves one eval pass (a generation task's decoding is the "
                          "costly one)",
    "train.micro_batch": "examples per forward pass (memory vs speed)",
    "train.prefix_cache": "cache the frozen lower blocks' output once per example (used when only top blocks "
                          "train)",
    "train.z_kernel": "where z comes from: torch (torch.randn per tensor) or triton (fused kernels, CUDA); auto = "
                      "triton on CUDA when it imports",
    "train.tensorboard": "also write metrics.jsonl's rows as TensorBoard scalars under out_dir/tb/ (needs "
                         "privtune[tensorboard])",
    "out_dir": "run directory; must not exist (or pass --resume)",
}


@dataclass
class Row:
    key: str  # dotted key as written in an override, e.g. "method.clip"
    type: str
    default: str
    meaning: str


@dataclass
class Section:
    title: str  # "model", "method: dpzero", ...
    note: str  # a line under the title (empty for most)
    rows: list[Row]


def sections(method: str | None = None) -> list[Section]:
    """The schema as sections of rows, in the order of the run config; `method` keeps only that method's section."""
    from .methods import run_model  # the registry: importing it registers every method

    run = run_model()
    out, top = [], []
    for name, field in run.model_fields.items():
        if name == "method":
            classes = _method_classes(field.annotation)
            names = [_method_name(c) for c in classes]
            if method is not None and method not in names:
                raise ConfigError(f"method: unknown method {method!r}; known: {sorted(names)}")
            for cls in classes:
                if method is None or _method_name(cls) == method:
                    out.append(Section(f"method: {_method_name(cls)}", _method_note(cls), _rows(cls, "method",
                                                                                              _method_name(cls))))
        elif _is_model(field.annotation):
            out.append(Section(name, "", _rows(field.annotation, name)))
        else:
            top.append(_row(run, name, field, name, None))
    return out + ([Section("top level", "", top)] if top else [])


def render_markdown() -> str:
    """docs/config.md."""
    lines = ["# Config reference", "",
             "Generated from the pydantic schema by `python -m privtune.schema_doc > docs/config.md`; do not edit "
             "by hand (tests/test_schema_doc.py checks that it is current).",
             "",
             "A config is a YAML file with the sections below; every key can also be given on the command line "
             "as `section.key=value` (e.g. `method.lr=3e-3 train.steps=200`). `method.name` picks one of the "
             "method sections; each method has its own keys and defaults. An unknown key, a wrong type or a value "
             "out of range ends with one line naming the key and exit code 2.", ""]
    for sec in sections():
        lines += [f"## {sec.title}", ""]
        if sec.note:
            lines += [sec.note, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{r.key}` | {_md(r.type)} | `{r.default}` | {_md(r.meaning)} |" for r in sec.rows]
        lines.append("")
    return "\n".join(lines)


def render_text(method: str | None = None, width: int = 100) -> str:
    """The reference as plain text for a terminal: one `key = default  (type)` line per key, its meaning below."""
    lines = []
    for sec in sections(method):
        lines.append(f"[{sec.title}]")
        lines += textwrap.wrap(sec.note, width, initial_indent="  ", subsequent_indent="  ")
        for r in sec.rows:
            lines.append(f"  {r.key} = {r.default}  ({r.type})")
            lines += textwrap.wrap(r.meaning, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the schema
def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _method_classes(annotation) -> list[type]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _method_name(cls) -> str:
    return cls.model_fields["name"].default


def _method_note(cls) -> str:
    """The first paragraph of the method module's docstring: what the method is, and its paper."""
    from .methods import method_class

    doc = inspect.getdoc(sys.modules[method_class(_method_name(cls)).__module__]) or ""
    note = " ".join(doc.split("\n\n")[0].split())
    if cls.unused:  # keys an older schema gave this method: still accepted, so say that they do nothing
        note += f" Accepted but unused (older configs may set them): {', '.join(cls.unused)}."
    return note


def _rows(model: type[BaseModel], prefix: str, method: str | None = None) -> list[Row]:
    rows = []
    items = list(model.model_fields.items())
    if method is not None:  # a method section starts with its name (a subclass lists inherited fields first)
        items.sort(key=lambda kv: kv[0] != "name")
    for name, field in items:
        key = f"{prefix}.{name}"
        if _is_model(field.annotation):
            rows += _rows(field.annotation, key)
        else:
            rows.append(_row(model, name, field, key, method))
    return rows


def _row(model, name: str, field, key: str, method: str | None) -> Row:
    default = field.get_default(call_default_factory=True)
    return Row(key, _type(field.annotation, field.metadata), _value(default), _meaning(model, name, field, key, method))


def _meaning(model, name: str, field, key: str, method: str | None) -> str:
    """The field's description, else MEANINGS (method-specific first), else the comment where the field is
    (re)defined, nearest class first."""
    if field.description:
        return field.description
    for k in ([f"method.{method}.{name}"] if method else []) + [key]:
        if k in MEANINGS:
            return MEANINGS[k]
    for cls in model.__mro__:
        if name in cls.__dict__.get("__annotations__", {}) and _source_comments(cls).get(name):
            return _source_comments(cls)[name]
    return ""


def _type(tp, metadata=()) -> str:
    """A type as a user writes it in YAML: `int > 0`, `a | b`, `list of str`, `... or null`."""
    bounds = [_bound(m) for m in metadata if _bound(m)]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type(args[0], [*args[1:], *metadata])
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in rest)
        return text + " or null" if len(rest) < len(args) else text
    if origin is list:
        return f"list of {_type(args[0])}"
    if hasattr(tp, "metadata"):  # a pydantic FieldInfo inside Annotated
        return ""
    text = getattr(tp, "__name__", str(tp))
    return f"{text} {', '.join(bounds)}" if bounds else text


def _bound(m) -> str:
    """A constraint from a field's metadata as text ("> 0", "< 2^63"); constraints nested in a FieldInfo too."""
    if hasattr(m, "metadata") and not isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)):
        return ", ".join(b for b in (_bound(x) for x in m.metadata) if b)
    for cls, op, attr in ((at.Gt, ">", "gt"), (at.Ge, "≥", "ge"), (at.Lt, "<", "lt"), (at.Le, "≤", "le")):
        if isinstance(m, cls):
            v = getattr(m, attr)
            if isinstance(v, int) and v >= 2**16 and v & (v - 1) == 0:  # 2^63, not 9223372036854775808
                return f"{op} 2^{v.bit_length() - 1}"
            return f"{op} {v:g}" if isinstance(v, float) else f"{op} {v}"
    return ""


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str) and not v.isprintable():  # task.stop's "\n": written as a YAML user would, not a line break
        return v.encode("unicode_escape").decode("ascii")
    return str(v)


def _md(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the table cell


@lru_cache(maxsize=None)
def _source_comments(cls) -> dict[str, str]:
    """{field: comment} from a class's source: the comment ending a field's line, else the comment line(s) just
    above it. The schema's meanings live there as comments today; reading them keeps config.py as it is."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    out, above, field, pending, body = {}, [], None, "", None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.INDENT and body is None:
            body = tok.end[1]  # the class body's indentation: fields start there
        elif tok.type == tokenize.COMMENT:
            if field is not None:
                out.setdefault(field, tok.string.lstrip("#").strip())
            else:
                above.append(tok.string.lstrip("#").strip())
        elif (tok.type == tokenize.NAME and field is None and tok.start[1] == body
              and tok.line[tok.end[1]:].lstrip().startswith(":")):  # `name: type = default`
            field, pending = tok.string, " ".join(above)
        elif tok.type == tokenize.NEWLINE:
            if field is not None and field not in out and pending:
                out[field] = pending
            field, above = None, []
        elif tok.type == tokenize.NL and not tok.line.strip():
            above = []  # a blank line detaches a comment from the field below it
    return out


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
