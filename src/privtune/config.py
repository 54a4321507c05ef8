"""Run configuration: a pydantic schema, YAML files and dotted `key=value` overrides.

Every validation problem becomes a one-line `ConfigError` that starts with the dotted field name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

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
    name: str = "sst2"  # sst2 | agnews | custom
    train_path: str | None = None
    eval_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    template: str | None = None  # default per task; must contain {text}
    verbalizer: list[str] | None = None  # one single-token word per label
    pool_size: PosInt = 1000  # balanced, seeded training pool (PACZero paper: N = 1000)
    eval_limit: PosInt | None = None  # evaluate on the first K eval examples only
    canaries: Annotated[int, Field(ge=0)] = 0  # audit mode: n PII canaries, each in the pool w.p. ½ (privtune audit)


class LoraCfg(Strict):
    r: PosInt = 8
    alpha: PosFloat = 16.0
    target_modules: list[str] = ["q_proj", "v_proj"]
    layers: PosInt | None = None  # adapters only in the last `layers` blocks (frozen-prefix cache below them)


class TrainableCfg(Strict):
    kind: str = "lora"  # lora | full | norms | top_layers:K
    lora: LoraCfg = LoraCfg()


MAX_STEP_SCALE = 1e4  # cap on method.lr, eps, weight_decay: far above any useful value, below float16's max 65504


class ZOCfg(Strict):
    """Fields every zeroth-order method shares."""

    lr: PosFloat = 1e-6
    eps: PosFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    batch_size: PosInt = 16
    directions: PosInt = 1  # K directions per step
    lr_schedule: Literal["constant", "linear", "polynomial"] = "constant"
    lr_power: PosFloat = 2.0  # for polynomial decay

    @model_validator(mode="after")
    def _fits_the_model(self):
        for key in ("lr", "eps", "weight_decay"):  # scalar factors on θ: each must fit the model's dtype
            if getattr(self, key) > MAX_STEP_SCALE:
                raise ValueError(f"method.{key}: {getattr(self, key):g} is above {MAX_STEP_SCALE:g} (it would "
                                 "overflow the model's floats)")
        return self


class MezoCfg(ZOCfg):
    name: Literal["mezo"] = "mezo"


def _method_union():
    from .methods import config_classes

    classes = tuple(config_classes())
    return Annotated[Union[classes], Field(discriminator="name")] if len(classes) > 1 else classes[0]


class TrainCfg(Strict):
    steps: PosInt = 100
    seed: int = 0  # public seed: pool, batches, directions
    log_every: PosInt = 10
    eval_every: Annotated[int, Field(ge=0)] = 0  # 0 = only at the end
    checkpoint_every: PosInt = 50
    micro_batch: PosInt = 64
    prefix_cache: bool = True
    z_kernel: Literal["auto", "torch", "triton"] = "auto"  # z backend (zo.kernels); auto = triton on CUDA
    tensorboard: bool = False  # mirror metrics.jsonl to out_dir/tb/ (the tensorboard extra)


class RunCfg(Strict):
    model: ModelCfg = ModelCfg()
    task: TaskCfg = TaskCfg()
    trainable: TrainableCfg = TrainableCfg()
    method: Any = None  # replaced by the discriminated union in build()
    train: TrainCfg = TrainCfg()
    out_dir: str = "runs/run"


_RUN_MODEL: type[BaseModel] | None = None


def run_model() -> type[BaseModel]:
    """RunCfg with `method` typed as the union of every registered method's config."""
    global _RUN_MODEL
    if _RUN_MODEL is None:
        from pydantic import create_model

        _RUN_MODEL = create_model("RunConfig", __base__=RunCfg, method=(_method_union(), MezoCfg()))
    return _RUN_MODEL


def _fmt(err: ValidationError) -> str:
    e = err.errors()[0]
    parts = list(e["loc"])
    if len(parts) > 1 and parts[0] == "method" and parts[1] in _method_names():
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
        msg = "unknown key"
    elif e["type"] == "union_tag_invalid":
        names = sorted(_method_names())
        msg = f"unknown method {e.get('input', {}).get('name') if isinstance(e.get('input'), dict) else ''!r}; known: {names}"
    elif "input" in e and not isinstance(e["input"], (dict, list)):
        msg = f"{msg} (got {e['input']!r})"
    return f"{loc or 'config'}: {msg}"


def _method_names() -> set[str]:
    from .methods import config_classes

    return {cls.model_fields["name"].default for cls in config_classes()}


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


def build(data: dict):
    try:
        return run_model().model_validate(data)
    except ValidationError as e:
        raise ConfigError(_fmt(e)) from None


def load(path: str | Path | None, overrides: list[str] = ()):
    data = load_yaml(path) if path else {}
    return build(apply_overrides(data, list(overrides)))


def dump(cfg) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
