"""Run configuration: a pydantic schema, YAML files and dotted `key=value` overrides.

Schema only: the `method` section is one of the registered methods' configs, which this module does not know; whoever
builds a run config passes them in (privtune.methods.build_config / load_config pass the registry's). Every
validation problem becomes a one-line `ConfigError` that starts with the dotted field name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ModelCfg(Strict):
    name: str = "tiny"  # smollm2-135m | tiny | path to a local HF folder
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0  # tiny model's init seed (within torch.manual_seed's range)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N


class TaskCfg(Strict):
    name: str = "sst2"  # sst2 | agnews | squad | arc_easy | arc_challenge | openbookqa | custom
    type: Literal["classification", "multiple_choice", "generation"] | None = None  # null: the built-in's type
    train_path: str | None = None
    eval_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    choices_column: str = "choices"  # multiple_choice: column holding the list of answer options
    answers_column: str = "answers"  # generation: column holding the gold answers (a list of strings, or one)
    label_names: list[str] | None = None
    template: str | None = None  # default per task; must contain {text}
    verbalizer: list[str] | None = None  # one single-token word per label
    choice_score: Literal["sum", "mean"] | None = None  # multiple_choice: sum or per-token mean; null: the task's
    max_new_tokens: PosInt = 32  # generation: greedy decoding at eval stops after this many new tokens
    stop: Annotated[str, Field(min_length=1)] = "\n"  # generation: decoding stops at it; training appends it
    min_new_tokens: Annotated[int, Field(ge=0)] = 1  # generation: ... but not before this many new tokens
    pool_size: PosInt = 1000  # balanced, seeded training pool (PACZero paper: N = 1000)
    eval_limit: PosInt | None = None  # evaluate on the first K eval examples only
    canaries: Annotated[int, Field(ge=0)] = 0  # audit mode: n PII canaries, each in the pool w.p. ½ (privtune audit)


class LoraCfg(Strict):
    r: PosInt = 8
    alpha: PosFloat = 16.0
    target_modules: list[str] = ["q_proj", "v_proj"]
    layers: PosInt | None = None  # adapters only in the last `layers` blocks (frozen-prefix cache below them)


class TrainableCfg(Strict):
    kind: str = "lora"  # lora | full | norms | final_norm | head | head+final_norm | top_layers:K
    lora: LoraCfg = LoraCfg()


class MethodCfg(Strict):
    """Base of every method's config section; each method declares its own fields (privtune.methods)."""

    name: str
    # Keys an older schema gave this method although it never used them (e.g. BBoxER's lr): still accepted, so
    # configs and run dirs written before each method owned its fields keep loading, and dropped.
    unused: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _drop_unused(cls, data):
        if isinstance(data, dict) and cls.unused:
            data = {k: v for k, v in data.items() if k not in cls.unused}
        return data

    def check_task(self, task: TaskCfg) -> None:
        """Constraints that tie this method's fields to the task section; raise ValueError naming the field."""


class TrainCfg(Strict):
    steps: PosInt = 100
    seed: int = 0  # public seed: pool, batches, directions
    log_every: PosInt = 10
    eval_every: Annotated[int, Field(ge=0)] = 0  # 0 = only at the end
    initial_eval: bool = True  # evaluate before the first step (eval.json's initial_* = zero-shot)
    checkpoint_every: PosInt = 50
    micro_batch: PosInt = 64
    prefix_cache: bool = True
    z_kernel: Literal["auto", "torch", "triton"] = "auto"  # z backend (zo.kernels); auto = triton on CUDA
    tensorboard: bool = False  # mirror metrics.jsonl to out_dir/tb/ (the tensorboard extra)


class RunCfg(Strict):
    model: ModelCfg = ModelCfg()
    task: TaskCfg = TaskCfg()
    trainable: TrainableCfg = TrainableCfg()
    method: Any = None  # replaced by the discriminated union of the methods' configs in run_model()
    train: TrainCfg = TrainCfg()
    out_dir: str = "runs/run"

    @model_validator(mode="after")
    def _method_fits_task(self):
        if isinstance(self.method, MethodCfg):
            self.method.check_task(self.task)
        return self


_RUN_MODELS: dict[tuple[type[MethodCfg], ...], type[BaseModel]] = {}


def run_model(methods: Sequence[type[MethodCfg]]) -> type[BaseModel]:
    """RunCfg with `method` typed as the union of `methods` (the first is the default method)."""
    key = tuple(methods)
    if key not in _RUN_MODELS:
        from pydantic import create_model

        union = Annotated[Union[key], Field(discriminator="name")] if len(key) > 1 else key[0]
        _RUN_MODELS[key] = create_model("RunConfig", __base__=RunCfg, method=(union, key[0]()))
    return _RUN_MODELS[key]


def _did_you_mean(run: type[BaseModel], loc: tuple, methods: Sequence[type[MethodCfg]]) -> str:
    """"; did you mean method.lr?" for an unknown key at `loc` (pydantic's, the method tag included) close to a key
    its section has (difflib), else ""."""
    by_name = {cls.model_fields["name"].default: cls for cls in methods}
    node, shown = run, []
    *path, wrong = loc
    for part in path:
        if node is by_name and part in by_name:  # the discriminated union's tag: not a key the user wrote
            node = by_name[part]
            continue
        field = node.model_fields.get(part) if isinstance(node, type) else None
        if field is None:
            return ""
        shown.append(str(part))
        if node is run and part == "method":
            node = by_name if len(methods) > 1 else methods[0]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            node = field.annotation
        else:
            return ""
    if not isinstance(node, type):
        return ""
    close = difflib.get_close_matches(str(wrong), list(node.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join([*shown, close[0]])}?" if close else ""


def _fmt(err: ValidationError, methods: Sequence[type[MethodCfg]]) -> str:
    names = {cls.model_fields["name"].default for cls in methods}
    e = err.errors()[0]
    parts = list(e["loc"])
    if len(parts) > 1 and parts[0] == "method" and parts[1] in names:
        del parts[1]  # pydantic's discriminated-union tag, not a key the user wrote
    loc = ".".join(str(x) for x in parts)
    msg = e["msg"]
    if e["type"] == "value_error":
        text = msg.removeprefix("Value error, ")
        head = text.split(":", 1)[0]
        if "." in head and " " not in head:  # the validator already names the dotted field
            return text
        msg = text
    if e["type"] == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(run_model(methods), tuple(e["loc"]), methods)
    elif e["type"] == "union_tag_invalid":
        msg = f"unknown method {e.get('input', {}).get('name') if isinstance(e.get('input'), dict) else ''!r}; known: {sorted(names)}"
    elif "input" in e and not isinstance(e["input"], (dict, list)):
        msg = f"{msg} (got {e['input']!r})"
    return f"{loc or 'config'}: {msg}"


def parse_value(text: str, key: str = "override") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"{key}: value is nested too deeply") from None
    except ValueError as e:  # a YAML int over Python's 4300-digit limit, a date like 2020-13-45
        raise ConfigError(f"{key}: value cannot be read ({str(e).split(';')[0]})") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            if item.endswith((".yaml", ".yml")):  # `privtune train configs/x.yaml`: the file needs -c
                raise ConfigError(f"{item}: a config file is given with -c/--config (privtune train -c {item})")
            raise ConfigError(f"{item}: overrides must look like key.sub=value")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"{item}: empty key")
        set_dotted(data, ".".join(parts), parse_value(raw, ".".join(parts)))
    return data


def set_dotted(data: dict, key: str, value: Any) -> dict:
    """data["a"]["b"] = value for key "a.b", creating sections as needed."""
    *sections, last = key.split(".")
    node = data
    for p in sections:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"{key}: {p} is not a section")
        node = node.setdefault(p, {})
    node[last] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path}{where} is not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"config: {path} is nested too deeply") from None
    except ValueError as e:  # a YAML int over Python's 4300-digit limit, a date like 2020-13-45
        raise ConfigError(f"config: {path} holds a value that cannot be read ({str(e).split(';')[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data


def build(data: dict, methods: Sequence[type[MethodCfg]]):
    """The run config of `data`, its method section one of `methods` (privtune.methods.build_config passes all)."""
    try:
        return run_model(methods).model_validate(data)
    except ValidationError as e:
        raise ConfigError(_fmt(e, methods)) from None


def load(path: str | Path | None, overrides: list[str], methods: Sequence[type[MethodCfg]]):
    data = apply_overrides(load_yaml(path) if path else {}, list(overrides))
    method = data.get("method")
    if not path and isinstance(method, dict) and "name" not in method:
        # `method.lr=…` with no config file tunes the default method; a file's method section must name its method
        # (silently picking the non-private default for a nameless section would be the wrong kind of guess)
        data = {**data, "method": {"name": methods[0].model_fields["name"].default, **method}}
    return build(data, methods)


def dump(cfg) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
