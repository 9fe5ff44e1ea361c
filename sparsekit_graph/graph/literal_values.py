"""Whole numbers a torch.export graph holds as values: each may be an axis length.

``torch.export`` writes a length the model's code used as a value (``h.sum(1) / h.shape[1]``,
``h.new_full((), h.shape[1])``, ``torch.ones(h.shape).sum(1)``) as a literal, so nothing links
it to its axis. ``build._lengths_as_numbers`` takes every such number to be a length of any
axis that long (zero-invariance lost, conservatively). A literal is a value where an op takes
it as an operand (``VALUE_ARGS``) or makes a tensor's contents from it (``made_from``: the
sizes of a fresh ``ones``, the end of an ``arange``, the data of a ``scalar_tensor``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch.fx as fx

from .normalize import normalize

__all__ = ["VALUE_ARGS", "made_from", "operand_literals", "whole_numbers"]

# Arguments where a literal is an operand of the computation (not an exponent, bound or norm order:
# ``h ** 2``, ``clamp(max=6)`` and ``norm(p=2)`` are common, and a length there is rare).
VALUE_ARGS = frozenset({"input", "other", "value", "fill_value", "alpha", "scalar", "data"})


def whole_numbers(values: Iterable[object]) -> Iterator[int]:
    """Whole numbers >= 2 in ``values`` (nested tuples and lists included; bools are no numbers)."""
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from whole_numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 2 and float(v).is_integer():
            yield int(v)


def made_from(node: fx.Node) -> list[tuple[int, fx.Node]]:
    """Every whole number among the arguments of ``node``, an op that makes a fresh tensor's
    contents from numbers (sizes summed over later count them): (number, node) pairs."""
    return [(n, node) for n in whole_numbers(normalize(node).args.values())]


def operand_literals(nodes: Iterable[fx.Node]) -> list[tuple[int, fx.Node]]:
    """(number, node) for every whole number an op of ``nodes`` takes as an operand."""
    found: list[tuple[int, fx.Node]] = []
    for node in nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        call = normalize(node)
        found += [(n, node) for k, v in call.args.items() if k in VALUE_ARGS for n in whole_numbers([v])]
    return found
