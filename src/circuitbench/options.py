"""One path from a config section to the code that uses it.

A config section (``edge_pruning:``, ``flap:``, ...) is validated by the workflow's schema, reaches
its step as one JSON argument (``--options '{"edge_pruning": {...}}'``) and becomes that section's
frozen dataclass through :func:`from_options`. The dataclass and the schema are the only places a
default lives (a test holds them equal); see ``docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


class OptionsError(ValueError):
    """A config section that does not fit its dataclass (unknown key, wrong type)."""


def _convert(kind: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the annotated field type ``kind``."""
    origin = typing.get_origin(kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
        return from_options(kind, value, where)  # type: ignore[arg-type]
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError as err:
            choices = ", ".join(str(member.value) for member in kind)
            raise OptionsError(f"{where}: {value!r} is not one of {choices}") from err
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in value)
        return tuple(_convert(a, item, where) for a, item in zip(args, value, strict=False))
    return value


def from_options(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """``cls`` (a frozen dataclass) from a section's keys; unknown keys are an error naming
    ``where.key``. Enum, nested-dataclass and tuple fields are converted from their JSON form."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise OptionsError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    converted = {
        key: _convert(hints[key], value, f"{where}.{key}") for key, value in values.items()
    }
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:
        raise OptionsError(f"{where}: {err}") from err


def record(obj: Any) -> Any:
    """A dataclass (or nested values) as plain JSON values: enums by value, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: record(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, list | tuple):
        return [record(item) for item in obj]
    if isinstance(obj, Mapping):
        return {key: record(value) for key, value in obj.items()}
    return obj


def defaults(cls: type) -> dict[str, Any]:
    """The JSON form of every field default of ``cls`` (what the schema must also say)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = record(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = record(f.default_factory())
    return out


def sections_arg(text: str) -> dict[str, dict[str, Any]]:
    """argparse type of ``--options``: a JSON object of config sections (objects)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError("--options must be a JSON object of section objects")
    return value


def json_arg(text: str) -> Any:
    """argparse type: any JSON value."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
