"""Node parameters, each with its description, and config dataclasses declared field by field.

Every parameter a node declares goes through :func:`declare`, so ``ros2 param describe`` always
says what it does. :func:`declare_config` makes one parameter per field of a config dataclass
(default and description from the field), so the dataclass stays the one list of its settings,
and checks the values with the package's strict loader (:func:`~nerf_descriptor_ros.config.load_dataclass`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException

from nerf_descriptor_ros.config import ConfigError, load_dataclass

_SCALARS = (bool, int, float, str)


def declare(node, name: str, default, description: str, *, dynamic_typing: bool = False):
    """Declare ``name`` with its description; its value (the override, else ``default``)."""
    if not description:
        raise ValueError(f"parameter {name} has no description")
    descriptor = ParameterDescriptor(description=description, dynamic_typing=dynamic_typing)
    try:
        return node.declare_parameter(name, default, descriptor).value
    except InvalidParameterTypeException as exc:
        raise ConfigError(f"parameter {name}: {exc}") from exc


def declare_parameters(node, specs: Iterable[tuple[str, object, str]]) -> dict:
    """Declare every ``(name, default, description)`` of ``specs``; {name: value}."""
    return {name: declare(node, name, default, description) for name, default, description in specs}


def declare_config_values(
    node,
    config_cls,
    prefix: str = "",
    *,
    names: Mapping[str, str] | None = None,
    defaults: Mapping[str, object] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict:
    """Declare one parameter per field of the dataclass ``config_cls``; {field name: value}.

    A field's parameter is ``names[field]`` (else ``prefix + field``), with the default
    ``defaults[field]`` (else the field's) and the description ``descriptions[field]`` (else the
    field's ``metadata["description"]``). Tuples of floats are ROS arrays (integers are taken);
    an optional one is None as an empty array.
    """
    names, defaults, descriptions = names or {}, defaults or {}, descriptions or {}
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        default = defaults[f.name] if f.name in defaults else _field_default(f)
        description = descriptions.get(f.name, f.metadata.get("description", ""))
        values[f.name] = _declare_field(node, names.get(f.name, prefix + f.name), hints[f.name], default, description)
    return values


def declare_config(node, config_cls, prefix: str = "", **overrides):
    """A checked ``config_cls`` from its parameters (see :func:`declare_config_values`)."""
    values = declare_config_values(node, config_cls, prefix, **overrides)
    return load_dataclass(config_cls, values, f"{node.get_name()} parameters")


def _field_default(f: dataclasses.Field):
    if f.default is dataclasses.MISSING:
        raise TypeError(f"config field {f.name} has no plain default: it cannot be a parameter")
    return f.default


def _declare_field(node, name: str, hint, default, description: str):
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple and all(a is float for a in typing.get_args(hint)):
        items = [] if default is None else list(default)
        value = declare(node, name, items, description, dynamic_typing=True)
        return _floats(name, value, len(typing.get_args(hint)), optional)
    if hint in _SCALARS and not optional:
        return declare(node, name, default, description)
    raise TypeError(f"parameter {name}: type {hint} has no ROS parameter form")


def _floats(name: str, value, count: int, optional: bool) -> tuple[float, ...] | None:
    """``count`` floats from a ROS array (integers taken); None for an empty one when ``optional``."""
    if optional and (value is None or (not isinstance(value, str) and len(value) == 0)):
        return None
    if (
        value is None
        or isinstance(value, (str, bytes))
        or len(value) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"parameter {name} needs {count} numbers{' or []' if optional else ''}, got {value!r}")
    return tuple(float(v) for v in value)
