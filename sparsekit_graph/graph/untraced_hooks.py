"""Forward hooks no trace follows. A hook may read or change any tensor, so what it touches pins,
naming its module:

- a layer's hooks (a leaf of torch.fx's trace): that layer's node pins everything it touches
  (``build._apply``), whether the hooks were there before planning or the forward registered
  them while traced (on a first call; planning removes them again, the user's first call
  leaves them in place);
- the model's own hooks (the tracers trace ``forward``, not ``__call__``): every axis pins.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from .axes import AxisGraph
from .size_tracer import has_hooks

__all__ = ["hooked", "mark_hooked_layers", "pin_model_hooks"]

_HOOKED = "skg.hooked"  # on a call_module node: its layer had forward hooks when the trace ended


def mark_hooked_layers(graph: fx.Graph, model: nn.Module) -> None:
    """Mark the layers of ``graph`` that have forward hooks now, at the end of the trace (the
    forward may have registered them)."""
    for n in graph.nodes:
        if n.op == "call_module" and has_hooks(model.get_submodule(str(n.target))):
            n.meta[_HOOKED] = True


def hooked(node: fx.Node, module: nn.Module | None) -> bool:
    """Does the layer ``node`` calls run forward hooks (now, or registered by the forward)?"""
    return module is not None and (has_hooks(module) or bool(node.meta.get(_HOOKED)))


def pin_model_hooks(graph: AxisGraph, model: nn.Module) -> None:
    """Pin every axis where ``model`` itself has forward hooks (or a global hook is set)."""
    if not has_hooks(model):
        return
    why = f"forward hooks of the model itself ({type(model).__name__}) are not traced"
    for node in graph.nodes:
        graph.pin(node, why)
        graph.mix(node, why)
