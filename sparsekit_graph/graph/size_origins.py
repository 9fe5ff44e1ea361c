"""The origin of a tracked size: the one attribute it was computed from, that attribute's value,
and the size as a function of it (``size_values``); ``identity`` says whether that function
leaves every count pruning can leave as it is (``n * 1``, ``n + 0``, ``n // 1``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .size_tests import Site

__all__ = ["Origin", "identity"]

Origin = tuple[Site, int, Callable[[int], Any]]  # one attribute, its value, and this value as a function of it


def identity(origin: Origin | None) -> bool:
    """Is ``origin``'s value its attribute's own at every count pruning can leave (``n * 1``,
    ``n + 0``, ``n // 1``)? Then it is a read of the attribute, not a number computed from it."""
    if origin is None:
        return False
    _, value, fn = origin
    counts = range(1, value + 1) if value <= 64 else sorted({*range(1, 33), *range(value - 31, value + 1), value // 2})
    try:
        return all(fn(v) == v and type(fn(v)) is int for v in counts)
    except Exception:  # noqa: BLE001 - a count it cannot take: not the attribute's value
        return False
