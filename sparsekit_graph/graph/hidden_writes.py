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
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .axes import AxisGraph
from .kept_zeros import write_keeps_zeros
from .meta import HIDDEN_WRITES
from .normalize import bind_call
from .param_reads import storage_key

__all__ = ["HiddenWrites", "pin_hidden_writes"]


class HiddenWrites(TorchDispatchMode):
    """While active, writes into ``model``'s parameters and buffers are noted (``written``) and
    undone at exit; a swap of their data (``.data = ...``) is noted (``kept`` puts it back)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model
        self._tensors: dict[int, tuple[str, Tensor]] | None = None  # storage -> (name, tensor), made at the first write
        self._saved: list[tuple[Tensor, Tensor]] = []  # (tensor, its contents before the first write)
        self._swapped: list[Tensor] = []  # tensors whose ``.data`` was set
        self._data: Any = None  # ``torch.Tensor.data`` as it was (torch's own: none on the Python class)
        self.written: dict[str, bool | None] = {}

    def __enter__(self) -> HiddenWrites:
        self._data = torch.Tensor.__dict__.get("data")
        torch.Tensor.data = property(_DATA.__get__, self._set_data)  # type: ignore[method-assign,assignment]
        return super().__enter__()

    def _set_data(self, t: Tensor, value: Tensor) -> None:
        self._swapped.append(t)
        _DATA.__set__(t, value)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        if schema.is_mutable:
            given = dict(zip((a.name for a in schema.arguments), args)) | kwargs
            for a in schema.arguments:
                if a.alias_info is not None and a.alias_info.is_write:
                    v = given.get(a.name)  # a tensor, or a list of them (``torch._foreach_clamp_min_(params, c)``)
                    for t in v if isinstance(v, (list, tuple)) else (v,):
                        if isinstance(t, Tensor):
                            self._note(t, func, args, kwargs)
        return func(*args, **kwargs)

    def _note(self, written: Tensor, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._tensors is None:
            named = chain(self._model.named_parameters(remove_duplicate=False), self._model.named_buffers(remove_duplicate=False))
            self._tensors = {}
            for name, t in named:
                self._tensors.setdefault(storage_key(t), (name, t))  # type: ignore[arg-type]
        found = self._tensors.get(storage_key(written))  # type: ignore[arg-type]
        if found is None:
            return
        name, t = found
        if name not in self.written and not t.is_meta:
            with torch.no_grad():
                self._saved.append((t, t.detach().clone()))
        keeps = write_keeps_zeros(bind_call(func.overloadpacket, args, kwargs))
        self.written[name] = self.written.get(name, True) is True and keeps

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._data is None:
            del torch.Tensor.data
        else:
            torch.Tensor.data = self._data  # type: ignore[method-assign]
        with torch.no_grad():
            for t, copy in self._saved:
                t.copy_(copy)
        if self._swapped:  # ``p.data = torch.full(...)`` of a tensor reached past its attribute; ``kept`` puts it back
            names = {id(v): k for k, v in chain(self._model.named_parameters(), self._model.named_buffers())}
            self.written |= {names[id(t)]: None for t in self._swapped if id(t) in names}


_DATA = torch._C.TensorBase.data  # the descriptor of ``t.data``


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
        for d in range(t.ndim):
            axis = ("p", graph.canonical.get(id(t), path), d)
            if axis in graph.sizes:
                if keeps is None:
                    graph.pin(axis, reason)
                graph.mix(axis, reason)
