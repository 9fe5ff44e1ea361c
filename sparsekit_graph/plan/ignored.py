"""``plan(..., ignore=[...])``: modules or tensors whose axes are never pruned."""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from torch import nn

from ..errors import PlanError
from ..graph.axes import AxisGraph
from ..graph.sizes import module_stack

__all__ = ["ignored_names", "pin_ignored"]


def ignored_names(ignore: Iterable[str] | str | None) -> list[str]:
    """``ignore`` as a list of names (one name alone, or None, accepted)."""
    if ignore is None:
        return []
    if isinstance(ignore, str):
        return [ignore]  # ``""``: the model itself, as ``[""]``
    try:
        names = list(ignore)
    except TypeError:
        raise PlanError(f"ignore={ignore!r}: expected module or parameter names") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise PlanError(f"ignore: {bad[0]!r} is not a module or parameter name")
    return names


def pin_ignored(graph: AxisGraph, model: nn.Module, names: list[str], traced: fx.Graph) -> None:
    """Pin every axis of the parameters and buffers ``names`` lists (modules or tensors of
    ``model``), and of the values a listed module computes in ``traced`` (a layer without
    parameters: its inputs and outputs)."""
    if not names:
        return
    tensors = [n for n, _ in (*model.named_parameters(), *model.named_buffers())]
    modules = {n for n, _ in model.named_modules()}
    for name in names:
        if name not in modules and name not in tensors:
            raise PlanError(f"ignore: {name!r} is neither a module nor a parameter of {type(model).__name__}")
        hits = {t for t in tensors if t == name or (name in modules and t.startswith(f"{name}." if name else ""))}
        runs = {n.name for n in traced.nodes if name in modules and name in module_stack(n)}
        why = f"ignored by user ({name})"
        for node in graph.nodes:
            if (node[0] == "p" and node[1] in hits) or (node[0] == "v" and node[1] in runs):
                graph.pin(node, why)
                graph.mix(node, why)
