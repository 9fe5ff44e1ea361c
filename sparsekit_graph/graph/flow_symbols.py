"""The abstract values of ``size_flow``'s bytecode walk, and the way it gives up.

The walk runs the model's bytecode on a stack of symbols instead of values: ``T`` is the size
read being followed (or a string or tuple made from it), ``S`` a string made without it, ``U``
anything else, ``NULL`` the marker a call's stack layout puts beside a callable. Other symbols
are tuples naming where a value came from: ``("C", constant)``, ``("L", local)``, ``("G",
global)``, ``("A", base, attribute)``, ``("CALLEE", attr)`` / ``("SELF", base)`` of a method
load. ``Fail`` ends a walk that met something it cannot prove harmless.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NULL", "S", "T", "U", "Fail", "Recorded", "Sym"]

Sym = tuple[Any, ...]  # an abstract stack value
T: Sym = ("T",)  # the read, or a string / tuple made from it
S: Sym = ("S",)  # a string made without the read
U: Sym = ("U",)  # anything else
NULL: Sym = ("NULL",)


class Fail(Exception):
    """The walk met something it cannot prove harmless."""


class Recorded:
    """A number the model's code was handed in place of an int or a float (a tracked read):
    it records its own uses, and compares as its value does."""
