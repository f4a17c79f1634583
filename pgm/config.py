"""Config dataclasses to and from JSON-able dicts; unknown keys are rejected, never dropped."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    """A dataclass instance as a plain dict (tuples become lists when written as JSON)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict, *, what: str | None = None) -> T:
    """Build ``cls`` from ``data``; unknown keys raise ValueError naming them and the known ones.

    Lists are turned back into tuples for fields annotated as tuples, so a config read from
    JSON compares equal to the one that was written.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {what or cls.__name__} option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if isinstance(value, list) and "tuple" in str(hints.get(key, "")):
            value = tuple(value)
        if not _fits(value, hints.get(key)):
            raise ValueError(f"{what or cls.__name__} field {key!r} should be "
                             f"{_name(hints[key])}, got {value!r:.60}")
        values[key] = value
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{what or cls.__name__} lacks field(s) {', '.join(missing)}")
    return cls(**values)


def _fits(value, hint) -> bool:
    """Whether ``value`` (read from JSON) is of the annotated type ``hint``: int, float, str,
    bool, None, tuples of those and unions are checked; anything else passes (the dataclass
    checks it, if it does)."""
    if hint is None or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value) \
            if len(args) == 1 else isinstance(value, tuple)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
