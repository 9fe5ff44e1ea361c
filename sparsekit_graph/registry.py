"""Tiny helpers shared by the rule, resizer and MAC-counter registries."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["RESIZERS", "by_type", "registrar"]

V = TypeVar("V")

# Layer type -> how it updates its own attributes after its parameters were sliced.
RESIZERS: dict[type, Callable[[Any], None]] = {}


def registrar(table: dict[Any, V]) -> Callable[..., Callable[[V], V]]:
    """A decorator factory: ``@register(key1, key2)`` stores the decorated value under each key."""

    def register(*keys: Hashable) -> Callable[[V], V]:
        def deco(value: V) -> V:
            for key in keys:
                table[key] = value
            return value

        return deco

    return register


def by_type(table: dict[type, V], obj: object) -> V | None:
    """The entry for ``type(obj)`` or its nearest base class along the MRO, or None."""
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    return None
