"""Whole numbers a torch.export graph holds as values: each may be an axis length.

``torch.export`` writes a length the model's code used as a value (``h.sum(1) / h.shape[1]``,
``h.new_full((), h.shape[1])``, ``torch.ones(h.shape).sum(1)``) as a literal, so nothing links
it to its axis. ``build._lengths_as_numbers`` takes every such number to be a length of any
axis that long (zero-invariance lost, conservatively). A literal is a value where an op takes
it as an operand (``VALUE_ARGS``) or makes a tensor's contents from it (``made_from``: the
sizes of a fresh ``ones``, the end of an ``arange``, the data of a ``scalar_tensor``), and
wherever it appears in the constant part of the graph, which no input or parameter feeds
(``torch.ones(1).expand(1, 8).sum()``, ``torch.eye(8).trace()``): a constant is made of its
literals alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch.fx as fx

from .normalize import normalize

__all__ = ["VALUE_ARGS", "made_from", "value_literals", "whole_numbers"]

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


def value_literals(nodes: Iterable[fx.Node]) -> list[tuple[int, fx.Node]]:
    """(number, node) for every whole number an op of ``nodes`` takes as an operand, and every
    whole number among the arguments of a constant op (one that no input or parameter feeds)."""
    found: list[tuple[int, fx.Node]] = []
    fed: set[fx.Node] = set()  # nodes an input, a parameter or a buffer feeds
    for node in nodes:
        if node.op in ("placeholder", "get_attr") or any(n in fed for n in node.all_input_nodes):
            fed.add(node)
        if node.op not in ("call_function", "call_method"):
            continue
        call = normalize(node)
        if node in fed:
            found += [(n, node) for k, v in call.args.items() if k in VALUE_ARGS for n in whole_numbers([v])]
        else:
            found += [(n, node) for n in whole_numbers(call.args.values())]
    return found
