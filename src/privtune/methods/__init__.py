"""Methods: one file per mechanism, each a config class + a `Method` subclass that says what is different, made
known by one `register(Config, Method)` call at its end (base.py). Importing this package imports every method file,
so the registry is complete; the functions below build run configs whose `method` section is any registered one.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as C
from .base import (TIMING_RESIDUAL, Method, Release, config_classes, method_class, method_classes,  # noqa: F401
                   register)
from . import mezo, paczero, dpzero, dpzo, dpsgd, bboxer, fo  # noqa: F401,E402  (each registers itself; mezo first: the default)


def run_model():
    """The pydantic model of a run config, `method` being any registered method's config."""
    return C.run_model(config_classes())


def build_config(data: dict):
    """The validated run config of `data` (a ConfigError naming the field otherwise)."""
    return C.build(data, config_classes())


def load_config(path: str | Path | None, overrides: list[str] = ()):
    """The run config of a YAML file (or the defaults) with dotted `key=value` overrides applied."""
    return C.load(path, list(overrides), config_classes())


def find(name) -> type[Method] | None:
    """The registered Method class called `name`, or None (e.g. a run dir of a method no longer shipped)."""
    try:
        return method_class(name)
    except (KeyError, TypeError):
        return None
