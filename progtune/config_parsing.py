"""Config input to typed knob values: CLI `KEY=VALUE` words, YAML files, loose values coerced."""

from __future__ import annotations

import math
import numbers
import re
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from progtune.errors import ConfigError


def parse_value_text(key: str, text: str) -> Any:
    """A CLI value: YAML scalars and flow lists ("3e-3", "true", "[1,2,4]"), or "1-2-4"."""
    import yaml  # lazy: config must import fast

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(
            f"{key}={text!r} is not a valid value; quote lists like {key}=[1,2]"
        ) from None


def _number(text: str) -> Any:
    """ "1e-3", "1_000_000", "2e6" -> a number (YAML would read "1e-3" as a string)."""
    for convert in (int, float):
        try:
            return convert(text.strip())
        except ValueError:
            pass
    return text


def coerce_value(key: str, tp: Any, value: Any) -> Any:
    """Check and convert one value to the knob's type; errors name the key and the fix."""
    if typing.get_origin(tp) is tuple:
        return _to_tuple(key, tp, value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # numpy scalars (np.float64, np.bool_) from pandas rows
    if tp is bool:
        return _to_bool(key, value)
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float)):
        value = value.item() if hasattr(value, "item") else value
    if tp is int:
        return _to_int(key, value)
    if tp is float:
        return _to_float(key, value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug, not input


def _to_tuple(key: str, tp: Any, value: Any) -> tuple:
    (elem, _ellipsis) = typing.get_args(tp)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(-\d+)+", text):  # the readable Parquet form "1-3-6-12"
            value = [int(p) for p in text.split("-")]
        elif text in ("", "[]", "()"):
            value = []
        else:
            value = parse_value_text(key, text if text.startswith("[") else f"[{text}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list like [1, 2], got {value!r}")
    return tuple(coerce_value(f"{key}[{i}]", elem, v) for i, v in enumerate(value))


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**62:
        return int(value)
    if isinstance(value, str):
        value = _number(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**62:
            value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, str):
        value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def flatten_sections(data: Mapping, knobs: Collection[str], prefix: str = "") -> dict[str, Any]:
    """Nested YAML sections -> dotted keys; dotted keys may also be used directly.

    A mapping under a name in `knobs` stays whole, so the knob's type check names it.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in knobs:
            out.update(flatten_sections(value, knobs, f"{name}."))
        else:
            out[name] = value
    return out


def read_yaml_mapping(path: str | Path) -> Mapping[str, Any]:
    """A YAML config file's top-level mapping ({} for an empty file); bad files say the fix."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing --config FILE")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML ({first}); fix its syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def parse_assignments(items: list[str]) -> dict[str, str]:
    """CLI `KEY=VALUE` words -> {key: raw text}; a word without '=' is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}; e.g. lr.peak=1e-3")
        out[key.strip()] = value
    return out
