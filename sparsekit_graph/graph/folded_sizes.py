"""Lengths ``torch.export`` folded into a literal of arithmetic on a symbolic size.

With a dynamic batch, ``h.sum() / h.numel()`` is exported as ``div(s, mul(576, b))``: the
channel count (16) and the spatial sizes (6 x 6) became one literal, multiplied by the batch
symbol, and the result is used as a number. No single length equals it, so ``build``'s check of
scaling literals against axis lengths misses it; ``folded_products`` lists such literals so that
every activation axis whose length divides one loses its zero-invariance (conservative).
"""

from __future__ import annotations

import torch
import torch.fx as fx

__all__ = ["folded_products"]

_VALUE_TYPES = ("Tensor", "Scalar", "float", "number")  # schema argument types that take a number as a value


def folded_products(nodes: list[fx.Node]) -> dict[int, str]:
    """Whole-number literals (>= 2) of symbolic-size arithmetic whose result some op takes as a
    value (not as a size), each with the node holding it."""
    out: dict[int, str] = {}
    for n in nodes:
        if n.op != "call_function" or not isinstance(n.meta.get("val"), torch.SymInt) or not _used_as_value(n, set()):
            continue
        for a in (*n.args, *n.kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and a >= 2:
                out.setdefault(a, n.name)
    return out


def _used_as_value(node: fx.Node, seen: set[fx.Node]) -> bool:
    """Does some op take ``node`` (a symbolic int) as a value, directly or through more
    symbolic arithmetic? A user whose schema is unknown counts (fail closed)."""
    seen.add(node)
    for user in node.users:
        if user in seen or user.op != "call_function":
            continue
        if isinstance(user.meta.get("val"), (torch.SymInt, torch.SymFloat)):
            if _used_as_value(user, seen):
                return True
            continue
        schema = getattr(user.target, "_schema", None)
        if schema is None:
            return True
        for i, a in enumerate(user.args):
            if a is node and (i >= len(schema.arguments) or str(schema.arguments[i].type) in _VALUE_TYPES):
                return True
        for k, a in user.kwargs.items():
            kind = next((str(x.type) for x in schema.arguments if x.name == k), "Tensor")
            if a is node and kind in _VALUE_TYPES:
                return True
    return False
