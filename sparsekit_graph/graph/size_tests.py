"""A decision of the model's code on one size attribute while traced (``self.num_heads > 2``),
kept as a ``SizeTest``: the export probe (``plan/probe.py``) prunes to a count that flips it."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DUNDER_TESTS", "Site", "SizeTest"]

Site = tuple[str, str]  # (layer path, attribute)

_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "truth": lambda v, _: bool(v),
}  # fmt: skip
DUNDER_TESTS = {"__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}


@dataclass(frozen=True)
class SizeTest:
    """A decision of the model's code on one attribute: ``fn(site) op other`` (``op`` a
    comparison, or ``"truth"``), first made with the attribute at ``value``."""

    site: Site
    value: int
    fn: Callable[[int], Any]
    op: str
    other: Any = None

    def outcome(self, value: int) -> bool:
        """What the code decides with the attribute at ``value`` (False where it cannot say)."""
        try:
            return bool(_TESTS[self.op](self.fn(value), self.other))
        except Exception:  # noqa: BLE001 - a count the code's arithmetic rejects (``n // 0``)
            return False

    def flips(self, value: int) -> bool:
        """Does the code decide otherwise with the attribute at ``value``?"""
        return self.outcome(value) != self.outcome(self.value)

    def __str__(self) -> str:
        path, attr = self.site
        name = f"{path}.{attr}" if path else attr
        return f"a test of {name} = {self.value}" + (f" ({self.op} {self.other})" if self.op != "truth" else "")
