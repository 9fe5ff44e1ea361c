"""Values of the model's own tensors that its code reads while torch.fx traces.

torch.fx hands the code real tensors for buffers, and for parameters reached past ``self.g``
(``self._parameters["g"]``, ``named_parameters()``, ``state_dict()``), so
``self.amax.max().item()``, ``float(g.sum())``, ``g.tolist()`` or ``if (buf > 0).all():`` run
at trace time, and the graph holds a number (or a 0-d constant) that no rule ties to the
channels it was computed from: the pruned model computes it from fewer channels. While
``BufferOps`` records a trace, ``ValueReads`` follows which model tensors each real tensor was
computed from and notes where one becomes a Python value or a constant of the graph
(``VALUE_READS`` on the output node). ``pin_value_reads`` then takes zero-invariance from the
axes of those tensors (a number), or pins them (a branch or an index: the traced code would not
follow other values). A read of a tensor no group prunes costs nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .axes import AxisGraph
from .meta import VALUE_READS
from .param_reads import storage_key

__all__ = ["ValueReads", "pin_value_reads"]

# Calls that hand Python a tensor's values, and what the code can do with them.
_NUMBER = "a number"
_CONTROL = "python control flow"
_SIZE = "a size its values decide"
_READS = {
    "item": _NUMBER, "tolist": _NUMBER, "numpy": _NUMBER, "__float__": _NUMBER, "__int__": _NUMBER,
    "__complex__": _NUMBER, "__format__": _NUMBER, "__array__": _NUMBER,
    "__bool__": _CONTROL, "__index__": _CONTROL, "__contains__": _CONTROL, "equal": _CONTROL,
    "allclose": _CONTROL, "is_nonzero": _CONTROL,
}  # fmt: skip
# Ops whose result's length the values decide (``(g > t).nonzero().shape[0]``, ``g[g > t].numel()``).
_SIZED = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave"})


class ValueReads:
    """The model tensors each real tensor of a trace was computed from, and the values read."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._own: dict[int, str] | None = None  # storage of a parameter or buffer -> its path (at the first call)
        self._ids: set[int] = set()  # the parameters and buffers themselves (fx makes them ``get_attr``)
        self._made: dict[int, tuple[Tensor, frozenset[str]]] = {}  # id -> (tensor, the model tensors it came from)
        self.read: dict[str, str] = {}  # model tensor path -> how its values were used (``_READS``)

    def clear(self) -> None:
        self._made.clear()  # no tensor outlives the trace

    def called(self, func: Any, args: tuple[Any, ...], tensors: list[Tensor], out: Any) -> None:
        """A call on real tensors alone (``tensors``, among ``args``): note a read of values, and
        where ``out`` came from."""
        sources = frozenset().union(*(self._sources(t) for t in tensors))
        if not sources:
            return
        name = getattr(func, "__name__", "")
        kind = _READS.get(name)
        if kind is None and (name in _SIZED or (name == "__getitem__" and _masked(args))):
            kind = _SIZE  # and the result is a tensor too, made from them
        if kind is not None:
            for path in sources:
                if self.read.get(path) != _CONTROL:
                    self.read[path] = kind
            if kind != _SIZE:
                return
        for t in _flat(out):
            self._made[id(t)] = (t, sources)

    def constant(self, t: Tensor) -> None:
        """``t`` enters the graph as a constant: its values are read (fx names the model's own
        parameters and buffers, ``get_attr``)."""
        if id(t) not in self._ids:
            for path in self._sources(t):
                self.read.setdefault(path, _NUMBER)

    def _sources(self, t: Tensor) -> frozenset[str]:
        made = self._made.get(id(t))
        if made is not None and made[0] is t:
            return made[1]
        path = self._storages().get(storage_key(t))
        return frozenset({path}) if path is not None else frozenset()

    def _storages(self) -> dict[int, str]:
        if self._own is None:
            self._own = {}
            for path, t in (*self._model.named_parameters(), *self._model.named_buffers()):
                self._ids.add(id(t))
                key = storage_key(t)
                if key is not None and t.ndim:
                    self._own.setdefault(key, path)
        return self._own


def _masked(args: tuple[Any, ...]) -> bool:
    """Is ``t[index]`` indexed by a boolean mask (its result as long as the mask has True)?"""
    index = args[1] if len(args) > 1 else None
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in (index if isinstance(index, tuple) else (index,)))


def _flat(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def pin_value_reads(graph: AxisGraph, nodes: Any, tensors: dict[str, Tensor]) -> None:
    """The axes of the model's tensors whose values the code read (``ValueReads``): pinned where
    Python control flow used them, not zero-invariant where they became numbers."""
    out = next((n for n in reversed(list(nodes)) if isinstance(n, fx.Node) and n.op == "output"), None)
    for path, kind in sorted((out.meta.get(VALUE_READS) or {}).items() if out is not None else ()):
        t = tensors.get(path)
        if t is None:
            continue
        reason = f"forward reads the values of {path} ({kind}): the pruned model computes it from fewer channels"
        for d in range(t.ndim):
            axis = ("p", graph.canonical.get(id(t), path), d)
            if axis in graph.sizes:
                if kind == _CONTROL:
                    graph.pin(axis, reason)
                graph.mix(axis, reason)
