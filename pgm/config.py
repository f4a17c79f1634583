"""Config dataclasses to and from JSON-able dicts; unknown keys are rejected, never dropped."""

from __future__ import annotations

import dataclasses
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
        values[key] = value
    return cls(**values)
