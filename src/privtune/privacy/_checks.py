"""Argument checks shared by the privacy math: a bad value raises ConfigError naming the argument."""

from __future__ import annotations

import math

from privtune.errors import ConfigError


def number(name: str, value) -> float:
    """`value` as a float; anything that is not a number (or is NaN) is a ConfigError naming `name`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be a number, got {value!r}") from None
    if math.isnan(value):
        raise ConfigError(f"{name}: must be a number, got nan")
    return value
