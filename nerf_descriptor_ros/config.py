"""The one loader of settings dataclasses, for every source: YAML files, ``--set``, node requests, checkpoints.

Values are checked by pydantic in strict JSON mode, so YAML lists fill tuple fields and strings
fill paths, but nothing else is converted: unknown keys, strings for numbers, bools for ints (and
ints for bools), 1.5 for an int, None outside Optional fields, NaN and infinity are refused; an
int is accepted for a float. YAML text is refused beyond MAX_YAML_VALUES values or MAX_YAML_DEPTH
levels before anything expands it. Ranges are each dataclass's own business (its ``__post_init__`` raises ConfigError,
which pydantic reports at that dataclass's key path). Every refusal is one line naming the source
and the key path, e.g. ``--set: fast.plane_resolutions[0]: expected an integer, got 'a'``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from nerf_descriptor_ros.errors import NerfDescriptorError

T = TypeVar("T")


def described(default: Any = dataclasses.MISSING, description: str = "", *, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a description: node parameters are declared from it (ros/parameters.py)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"description": description})


# Progress messages (TrainingStatus, TrainObject feedback) carry iteration counts as uint32.
MAX_ITERATIONS = 2**32 - 1
# Settings are small. A YAML document with more values, or nested deeper, is refused before it is
# expanded: an alias counts at each use, and a few hundred bytes of nested aliases (a "billion
# laughs") would otherwise take hours and all memory to check or to print.
MAX_YAML_VALUES = 10_000
MAX_YAML_DEPTH = 32
_SHOWN = reprlib.Repr()  # values in messages, shortened: a refusal stays one readable line
_SHOWN.maxstring = _SHOWN.maxother = 80

# What a refused value should have been, by pydantic error type.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dataclass_type": "a mapping",
}


class ConfigError(NerfDescriptorError, ValueError):
    """A setting that cannot be used; the loader's messages name the source and the key path.

    Range checks in a dataclass's ``__post_init__`` raise it as ``"key: what is wrong"``; being a
    ValueError, it reaches pydantic as a validation error, so the loader prefixes the source and
    that dataclass's key path.
    """


def load_dataclass(cls: type[T], values: Mapping, where: str, key_prefix: str = "") -> T:
    """A ``cls`` from plain data (missing keys take the defaults), strictly checked.

    ``where`` names the source in errors; ``key_prefix`` is where ``values`` sit inside it.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {key_prefix or 'settings'}: expected a mapping, got {_SHOWN.repr(values)}")
    non_finite = _first_non_finite(values)
    if non_finite is not None:  # pydantic takes NaN and infinity for a float
        loc, value = non_finite
        raise ConfigError(f"{where}: {_key_path(key_prefix, loc)}: expected a finite number, got {value}")
    try:
        data = to_json(values, inf_nan_mode="constants")
    except PydanticSerializationError as exc:
        raise ConfigError(f"{where}: {key_prefix or 'settings'}: not plain YAML data ({exc})") from exc
    try:
        return _adapter(cls).validate_json(data, strict=True, extra="forbid")
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc, where, key_prefix)) from None


def merged(base: T, overrides: Mapping, where: str, key_prefix: str = "") -> T:
    """A new ``base`` with ``overrides`` deep-merged in (mapping into mapping), then strictly checked."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: {key_prefix or 'settings'}: expected a mapping, got {_SHOWN.repr(overrides)}")
    return load_dataclass(type(base), _deep_merge(dataclasses.asdict(base), overrides), where, key_prefix)


def parse_yaml_mapping(text: str, what: str) -> dict:
    """The mapping in YAML ``text`` ({} for empty text); ``what`` names the source in errors."""
    try:
        values = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError:  # the parser recurses once per level
        raise _too_large(what) from None
    _check_size(values, what)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a YAML mapping of settings, got {_SHOWN.repr(values)}")
    return values


def _check_size(values: Any, what: str) -> None:
    """Refuse more than MAX_YAML_VALUES values (aliases counted at each use) or MAX_YAML_DEPTH levels."""
    pending, count = [(values, 0)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
            raise _too_large(what)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)


def _too_large(what: str) -> ConfigError:
    return ConfigError(
        f"{what} is too large: at most {MAX_YAML_VALUES} values nested at most {MAX_YAML_DEPTH} deep "
        "(an alias counts each time it is used)"
    )


def _first_non_finite(value: Any, loc: tuple = ()) -> tuple[tuple, float] | None:
    """(key path, value) of the first NaN or infinite number in plain data, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc, value
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, (*loc, key))
        if found is not None:
            return found
    return None


def load_yaml_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return parse_yaml_mapping(path.read_text(), str(path))


def require_at_least(settings: object, minimum: float, *names: str) -> None:
    """A range check for a ``__post_init__``: each named field must be >= ``minimum``."""
    for name in names:
        value = getattr(settings, name)
        if value < minimum:
            raise ConfigError(f"{name}: must be >= {minimum}, got {value!r}")


def require_iterations(settings: object, name: str = "iterations") -> None:
    """Iteration counts are 1..MAX_ITERATIONS."""
    value = getattr(settings, name)
    if not 1 <= value <= MAX_ITERATIONS:
        raise ConfigError(f"{name}: must be 1..{MAX_ITERATIONS}, got {value!r}")


def _deep_merge(plain: dict, overrides: Mapping) -> dict:
    out = dict(plain)
    for key, value in overrides.items():
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _describe(cls: type, exc: ValidationError, where: str, key_prefix: str) -> str:
    """The first problem as ``where: key.path[0]: what was wrong``."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    kind = error["type"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # "key: what is wrong", from the __post_init__ of the dataclass at loc
        loc, problem = (*loc, str(cause)), ""
    elif kind == "unexpected_keyword_argument":
        known = [f.name for f in dataclasses.fields(_type_at(cls, loc[:-1]))]
        problem = f"unknown key (known: {', '.join(known)})"
    elif kind == "missing":
        problem = "missing"
    elif kind in _EXPECTED:
        problem = f"expected {_EXPECTED[kind]}, got {_SHOWN.repr(error['input'])}"
    else:
        problem = f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_SHOWN.repr(error['input'])}"
    return ": ".join(text for text in (where, _key_path(key_prefix, loc), problem) if text)


def _key_path(key_prefix: str, loc: tuple) -> str:
    """``key_prefix`` and ``loc`` as a key path: ``nerf.fast.plane_resolutions[0]``."""
    path = key_prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _type_at(cls: Any, loc: tuple) -> Any:
    """The type found at key path ``loc`` inside ``cls``."""
    for part in loc:
        cls = _without_none(cls)
        if isinstance(part, str):
            cls = typing.get_type_hints(cls)[part]
        else:
            args = typing.get_args(cls)
            cls = args[0] if typing.get_origin(cls) is list else args[part]
    return _without_none(cls)


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
