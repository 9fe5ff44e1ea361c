"""Forward hooks no trace follows, and forwards set on an instance (``m.forward = lambda x: ...``,
which ``m(x)`` runs and torch.fx, tracing ``type(m).forward``, does not: the model's own is
traced by torch.export, which runs ``m(x)``; a layer's pins what it touches). A hook may read or
change any tensor, so what it touches pins, naming its module:

- a layer's hooks (a leaf of torch.fx's trace): that layer's node pins everything it touches
  (``build._apply``), whether the hooks were there before planning or the forward registered
  them while traced (on a first call: planning removes them again, the user's first call
  leaves them in place; or around the layer's call, removed again at once);
- the model's own hooks, or its own ``__call__`` (the tracers trace ``forward``, not
  ``__call__``: an override's ``super().__call__(x, center=True)`` or a mode it sets around
  ``forward`` is never seen): every axis pins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch.fx as fx
from torch import nn

from .axes import AxisGraph
from .size_tracer import has_hooks

__all__ = ["hooked", "mark_hooked_layers", "own_forward", "pin_model_hooks", "recording_hooks"]

_HOOKED = "skg.hooked"  # on a call_module node: its layer had forward hooks when the trace ended


@contextmanager
def recording_hooks() -> Iterator[set[int]]:
    """Run the body; the set it yields then holds the ids of the modules a forward hook or
    pre-hook was registered on meanwhile (whether it is still there or not)."""
    found: set[int] = set()
    originals = {name: getattr(nn.Module, name) for name in _REGISTER}

    def recorded(register: Callable[..., Any]) -> Callable[..., Any]:
        def record(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            found.add(id(self))
            return register(self, *args, **kwargs)

        return record

    for name, register in originals.items():
        setattr(nn.Module, name, recorded(register))
    try:
        yield found
    finally:
        for name, register in originals.items():
            setattr(nn.Module, name, register)


_REGISTER = ("register_forward_hook", "register_forward_pre_hook")


def mark_hooked_layers(graph: fx.Graph, model: nn.Module, registered: set[int]) -> None:
    """Mark the layers of ``graph`` that have forward hooks now, at the end of the trace, or
    that the forward registered some on (``recording_hooks``)."""
    for n in graph.nodes:
        if n.op == "call_module":
            layer = model.get_submodule(str(n.target))
            if has_hooks(layer) or id(layer) in registered:
                n.meta[_HOOKED] = True


def hooked(node: fx.Node, module: nn.Module | None) -> bool:
    """Does the layer ``node`` calls run forward hooks (now, or registered by the forward), or
    a forward of its own instance?"""
    return module is not None and (has_hooks(module) or bool(node.meta.get(_HOOKED)) or own_forward(module))


def own_forward(module: nn.Module) -> bool:
    """Does ``module(x)`` run a forward set on the instance, not its class's?"""
    f = module.__dict__.get("forward")
    if f is None:
        return False
    return not (isinstance(f, MethodType) and f.__self__ is module and f.__func__ is type(module).forward)


def pin_model_hooks(graph: AxisGraph, model: nn.Module) -> None:
    """Pin every axis where ``model`` itself has forward hooks (or a global hook is set), or
    a class of its own ``__call__``."""
    name = type(model).__name__
    if type(model).__call__ is not nn.Module.__call__:
        why = f"the model's own __call__ ({name}.__call__) runs code around forward that is not traced"
    elif has_hooks(model):
        why = f"forward hooks of the model itself ({name}) are not traced"
    else:
        return
    for node in graph.nodes:
        graph.pin(node, why)
        graph.mix(node, why)
