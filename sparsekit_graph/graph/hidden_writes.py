"""Writes a forward makes into the model's own tensors that no traced node shows.

Under torch.fx a parameter read as an attribute (``self.bn.weight``) is a Proxy, and a write
into it is a node (``build._written_parameter``). One reached another way (``for p in
self.parameters(): p.data.clamp_(-c, c)``, ``self.state_dict()[k]``, ``_parameters["bias"]``)
is the real tensor: the write runs while the forward is traced, on the user's weights, and
leaves no node. ``HiddenWrites`` sees such writes at the dispatcher while the model is traced:
it keeps a copy of each tensor before its first write, puts it back afterwards, and notes
which tensors were written and whether every write kept zero entries zero
(``zeros.write_keeps_zeros``: a clamp to ``[-c, c]`` does, a clamp to ``min=0.1`` does not).
A write the planner cannot follow (``p.data = torch.full(...)``, which swaps the tensor's data
instead of writing it) is noted by the tracer on a Proxy (``SizeProxy.data``), and on a real
tensor by a ``data`` property on ``torch.Tensor`` while traced; it pins.

A write can also carry other model tensors into the written one (a momentum encoder's
``for pk, pq in zip(k.parameters(), q.parameters()): pk.mul_(m).add_(pq, alpha=1 - m)``):
``HiddenWrites`` follows which model tensors each real tensor of the trace was computed from
(``fed``). A source read as it is, of the written tensor's shape, links their axes one to one
(pruned together, as the spelling through attributes is); one computed on the way pins both.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .axes import AxisGraph
from .kept_zeros import write_keeps_zeros
from .meta import HIDDEN_SOURCES, HIDDEN_WRITES
from .normalize import bind_call
from .param_reads import storage_key

__all__ = ["RESHAPES", "HiddenWrites", "pin_hidden_writes", "written_tensors"]


class HiddenWrites(TorchDispatchMode):
    """While active, writes into ``model``'s parameters and buffers are noted (``written``) and
    undone at exit; a swap of their data (``.data = ...``) is noted (``kept`` puts it back)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model
        self._tensors: dict[int, tuple[str, Tensor]] | None = None  # storage -> (name, tensor), made at the first write
        self._saved: list[tuple[Tensor, Tensor, Any]] = []  # (tensor, its contents and layout before the first write)
        self._swapped: list[Tensor] = []  # tensors whose ``.data`` was set
        self._data: Any = None  # ``torch.Tensor.data`` as it was (torch's own: none on the Python class)
        self._made: dict[int, tuple[Tensor, frozenset[str]]] = {}  # id -> (tensor, the model tensors it came from)
        self.written: dict[str, bool | None] = {}
        self.fed: dict[str, dict[str, bool]] = {}  # written -> {model tensor written into it: read as it is}

    def __enter__(self) -> HiddenWrites:
        self._data = torch.Tensor.__dict__.get("data")
        torch.Tensor.data = property(_DATA.__get__, self._set_data)  # type: ignore[method-assign,assignment]
        return super().__enter__()

    def _set_data(self, t: Tensor, value: Tensor) -> None:
        self._swapped.append(t)
        found = self._own(t)
        if found is not None:
            self._feed(found[0], [value], direct=False)
        _DATA.__set__(t, value)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        given = dict(zip((a.name for a in schema.arguments), args)) | kwargs
        for name, i, t in written_tensors(func, given):
            self._note(t, func, args, kwargs, _paired(given, name, i))
        out = func(*args, **kwargs)
        sources = frozenset().union(*(self._sources(t) for t in _tensors(given.values())))
        if sources:
            for t in _tensors((out,)):
                self._made.setdefault(id(t), (t, sources))
        return out

    def _own(self, t: Tensor) -> tuple[str, Tensor] | None:
        """The model's parameter or buffer ``t`` shares storage with (its path and itself)."""
        if self._tensors is None:
            named = chain(self._model.named_parameters(remove_duplicate=False), self._model.named_buffers(remove_duplicate=False))
            self._tensors = {}
            for name, own in named:
                self._tensors.setdefault(storage_key(own), (name, own))  # type: ignore[arg-type]
        return self._tensors.get(storage_key(t))  # type: ignore[arg-type]

    def _sources(self, t: Tensor) -> frozenset[str]:
        made = self._made.get(id(t))
        if made is not None and made[0] is t:
            return made[1]
        found = self._own(t)
        return frozenset({found[0]}) if found is not None else frozenset()

    def _feed(self, name: str, values: list[Tensor], *, direct: bool) -> None:
        """Note the model tensors ``values`` came from as written into ``name``; ``direct``: a
        value that is one of them, read as it is, counts as such."""
        fed = self.fed.setdefault(name, {})
        for v in values:
            found = self._own(v) if direct else None
            as_is = found is not None and v.shape == found[1].shape and v.stride() == found[1].stride()
            for source in self._sources(v) - {name}:
                fed[source] = fed.get(source, True) and as_is and source == found[0]  # type: ignore[index]
        if not fed:
            del self.fed[name]

    def _note(self, written: Tensor, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], values: list[Tensor]) -> None:
        found = self._own(written)
        if found is None:
            return
        name, t = found
        if name not in self.written and not t.is_meta:
            with torch.no_grad():
                self._saved.append((t, t.detach().clone(), (t.size(), t.stride(), t.storage_offset())))
        if func.overloadpacket.__name__ in RESHAPES:  # ``w.t_()``: its axes are others now, whatever fed them
            self.written[name] = None
            self.fed[name] = dict.fromkeys(self.fed.get(name, ()), False)
            return
        keeps = write_keeps_zeros(bind_call(func.overloadpacket, args, kwargs))
        before = self.written.get(name, True)
        self.written[name] = None if before is None else before and keeps
        self._feed(name, values, direct=True)

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._made.clear()  # no tensor outlives the trace
        if self._data is None:
            del torch.Tensor.data
        else:
            torch.Tensor.data = self._data  # type: ignore[method-assign]
        reshaped = False
        with torch.no_grad():
            for t, copy, layout in self._saved:
                if (t.size(), t.stride(), t.storage_offset()) != layout:  # ``w.t_()``, a resize by ``out=``
                    t.as_strided_(*layout)
                    reshaped = True
                t.copy_(copy)
        if self._swapped:  # ``p.data = torch.full(...)`` of a tensor reached past its attribute; ``kept`` puts it back
            names = {id(v): k for k, v in chain(self._model.named_parameters(), self._model.named_buffers())}
            self.written |= {names[id(t)]: None for t in self._swapped if id(t) in names}
        if reshaped and exc[0] is None:  # the graph read its other shape: torch.export traces the writes
            raise Reshaped("the forward changes the shape of a model tensor in place, past the traced graph")


class Reshaped(Exception):
    """A model tensor's shape changed in place while torch.fx traced (``HiddenWrites``)."""


_DATA = torch._C.TensorBase.data  # the descriptor of ``t.data``
# In-place ops that change a tensor's shape or strides, not its values: a swap of its axes.
RESHAPES = frozenset({
    "t_", "transpose_", "swapdims_", "swapaxes_", "squeeze_", "unsqueeze_", "as_strided_", "resize_", "resize_as_", "set_",
})  # fmt: skip


def written_tensors(func: Any, given: dict[str, Any]) -> list[tuple[str, int, Tensor]]:
    """(argument, position, tensor) of each tensor an ATen op writes in place; ``given``: its
    arguments by name. An argument may be a list (``torch._foreach_mul_(params, m)``)."""
    if not func._schema.is_mutable:
        return []
    found = []
    for a in func._schema.arguments:
        if a.alias_info is not None and a.alias_info.is_write:
            v = given.get(a.name)
            found += [(a.name, i, t) for i, t in enumerate(v if isinstance(v, (list, tuple)) else (v,)) if isinstance(t, Tensor)]
    return found


def _tensors(values: Any) -> list[Tensor]:
    """The tensors in ``values`` (through lists and tuples)."""
    out: list[Tensor] = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _tensors(v)
    return out


def _paired(given: dict[str, Any], written: str, i: int) -> list[Tensor]:
    """The tensors written into element ``i`` of argument ``written``: every other argument's,
    of a list as long as the written one (``torch._foreach_add_(ks, qs)``) its ``i``-th."""
    length = len(given[written]) if isinstance(given[written], (list, tuple)) else None
    out: list[Tensor] = []
    for key, v in given.items():
        if key == written:
            continue
        if isinstance(v, (list, tuple)) and len(v) == length:
            v = v[i]
        out += _tensors((v,))
    return out


def pin_hidden_writes(graph: AxisGraph, nodes: Any, tensors: dict[str, Tensor], swapped: dict[str, str]) -> None:
    """The axes of the model's tensors the forward wrote past the graph (``HIDDEN_WRITES``): not
    zero-invariant where a write did not keep zeros; pinned where it swapped their data, or
    set ``.data`` of a traced parameter (``swapped``: its path -> where), whose new size no
    link follows (``p.data = torch.full((8,), 0.1)``)."""
    out = next((n for n in reversed(list(nodes)) if n.op == "output"), None)
    written = dict(out.meta.get(HIDDEN_WRITES) or {}) if out is not None else {}
    written |= dict.fromkeys(swapped)
    for path, keeps in sorted(written.items()):
        t = tensors.get(path)
        if t is None or keeps is True:
            continue
        how = f"sets its .data at {swapped[path]}" if path in swapped else "swaps its data" if keeps is None else "writes it"
        reason = f"forward {how} past the traced graph ({path})"
        for axis in _axes(graph, path, t):
            if keeps is None:
                graph.pin(axis, reason)
            graph.mix(axis, reason)
    fed = out.meta.get(HIDDEN_SOURCES) or {} if out is not None else {}
    for path, sources in sorted(fed.items()):
        for source, as_is in sorted(sources.items()):
            _link_fed(graph, tensors, path, source, as_is)


def _axes(graph: AxisGraph, path: str, t: Tensor) -> list[Any]:
    """The axes of model tensor ``path`` (``t``) some op of the graph uses."""
    axes = [("p", graph.canonical.get(id(t), path), d) for d in range(t.ndim)]
    return [a for a in axes if a in graph.sizes]


def _link_fed(graph: AxisGraph, tensors: dict[str, Tensor], path: str, source: str, as_is: bool) -> None:
    """Model tensor ``source`` was written into ``path`` past the graph: read as it is (same
    shape), their axes move together, one to one; otherwise both pin."""
    t, s = tensors.get(path), tensors.get(source)
    if t is None or s is None:
        return
    ours, theirs = _axes(graph, path, t), _axes(graph, source, s)
    if as_is and t.shape == s.shape and len(ours) == len(theirs) == t.ndim:
        for a, b in zip(ours, theirs):
            graph.link(a, b)
        return
    reason = f"forward writes values computed from {source} into {path} past the traced graph"
    for axis in (*ours, *theirs):
        graph.pin(axis, reason)
