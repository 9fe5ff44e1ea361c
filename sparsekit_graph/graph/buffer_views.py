"""A buffer reshaped in forward stays the buffer: ``self.scale[:, None, None]``.

torch.fx hands the model's code its buffers as real tensors (``proxy_buffer_attributes`` off:
control flow on a buffer's data, ``self.steps += 1``, must keep working), so an op on a buffer
alone runs at trace time and the graph holds its result as a fresh constant that no rule ties
to the buffer: a per-channel scale indexed to ``(C, 1, 1)`` pinned the channels it scales,
where the same scale kept as a ``(1, C, 1, 1)`` buffer prunes. ``buffer_view`` gives such a
result back as graph ops on the buffer where it is the buffer with unit axes added or dropped
(indexing with ``None``, ``unsqueeze``, ``view(1, -1, 1, 1)``, ``squeeze``): a ``get_attr``
then ``squeeze`` / ``unsqueeze`` nodes, which the rules link to the buffer's axes and the
pruner slices.

Other ops on buffers alone (``(g * 2).view(1, -1, 1, 1)``, ``g.rsqrt()[:, None, None]``,
``m.float()``, ``bn.running_var.view(1, -1, 1, 1) + 1``) are recorded while the model is traced
(``BufferOps``, a ``TorchFunctionMode``): a floating-point result that reaches the graph is
rebuilt as the ops that made it from ``get_attr`` nodes of its buffers, so the rules see the
buffer's axes as they do for ``g.view(1, -1, 1, 1)``. The values stay real (control flow on a
buffer's data still runs); integer and boolean results (indices, masks read by value) stay
constants, and so does a result something later changed in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .normalize import traced_call
from .value_reads import ValueReads

__all__ = ["BufferOps", "buffer_view"]


class BufferOps(TorchFunctionMode):
    """While active: the call that made each tensor computed from the model's buffers (and
    numbers, and other such tensors) with no traced value among its arguments."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model
        self.buffers: dict[int, str] = {}  # buffer id -> its path
        self.written: set[str] = set()  # paths of buffers forward wrote (``out=``, in place)
        self._made: dict[int, tuple[Tensor, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {}
        self.values = ValueReads(model)  # what the code read of the values of the model's tensors

    def __enter__(self) -> BufferOps:
        # parameters too where the code reaches them past torch.fx (``self._parameters["bias"]``)
        tensors = [*self._model.named_parameters(remove_duplicate=False), *self._model.named_buffers(remove_duplicate=False)]
        self.buffers = {}
        for name, t in tensors:
            self.buffers.setdefault(id(t), name)
        self.written = set()
        self.values = ValueReads(self._model)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._made.clear()  # no tensor outlives the trace
        self.values.clear()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if any(issubclass(t, fx.Proxy) for t in types):
            # a traced value: torch hands the call to the Proxy as if no mode were active (calling
            # it here would parse its arguments again, asking ``h.shape[1]`` for ``__index__`` from
            # this frame: ``F.conv2d(h, w, groups=h.shape[1])`` read as control flow)
            return NotImplemented
        kwargs = kwargs or {}
        found = _tensors((args, kwargs))
        versions = [_version(t) for t in found or ()]
        out = func(*args, **kwargs)
        if not found:
            return out
        self.values.called(func, args, found, out)
        if not self.buffers:
            return out
        # written in place (``t[0] = 5``, ``t.mul_(2)``, ``out=``): torch counts each write on the
        # tensor's version; ``(g * 2).contiguous()`` hands back its input unwritten
        changed = any(v is None or _version(t) != v for t, v in zip(found, versions))
        if out is None or "out" in kwargs or changed:
            target = kwargs["out"] if "out" in kwargs else out if out is not None else args[0] if args else None
            for t in _tensors(target) or []:
                self.written.update(self.buffers[id(b)] for b in (t, t._base) if b is not None and id(b) in self.buffers)
            for t in found:  # and what it views: ``t[:1].mul_(0)`` changes ``t``
                self._made.pop(id(t), None)
                if t._base is not None:
                    self._made.pop(id(t._base), None)
        elif (
            type(out) is Tensor
            and id(out) not in self._made  # ``a._base``: a tensor already made keeps how it was made
            and id(out) not in self.buffers
            and all(id(t) in self.buffers or id(t) in self._made for t in found)
        ):
            self._made[id(out)] = (out, func, args, kwargs)
        return out

    def node(self, tracer: fx.Tracer, a: Tensor) -> fx.Node | None:
        """``a`` as graph nodes over the buffers it was made from, or None (a constant)."""
        if id(a) in self._made and (a._is_view() or a.is_floating_point() or a.is_complex()):
            return self._rebuild(tracer, a)  # the call as written: ``g.view(1, 12, 1, 1)`` keeps its literal
        node = buffer_view(tracer, a, self.buffers) if a._is_view() else None
        if node is None:
            self.values.constant(a)
        return node

    def _rebuild(self, tracer: fx.Tracer, a: Tensor) -> fx.Node:
        _, func, args, kwargs = self._made[id(a)]

        def arg(x: Any) -> Any:
            if type(x) is Tensor and id(x) in self._made:
                return self._rebuild(tracer, x)
            if isinstance(x, (tuple, list)):
                return type(x)(arg(e) for e in x)
            if isinstance(x, dict):
                return {k: arg(v) for k, v in x.items()}
            return tracer.create_arg(x)  # a buffer: its get_attr; anything else as torch.fx makes it

        owner = getattr(func, "__self__", None)
        if getattr(func, "__name__", "") == "__get__" and owner is not None:  # ``g.T``, ``g.mT``: as torch.fx reads it
            return tracer.create_node("call_function", getattr, (arg(args[0]), owner.__name__), {})
        kind, target, args = traced_call(func, args)  # ``g[:, None]``, ``1 / g``, ``g ** 2``: as torch.fx records them
        return tracer.create_node(kind, target, arg(args), arg(kwargs))


def _version(t: Tensor) -> int | None:
    """``t``'s count of in-place writes (None for an inference tensor, which keeps none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _tensors(a: Any) -> list[Tensor] | None:
    """The tensors among ``a`` (nested tuples, lists and dicts), or None if a traced value is."""
    found: list[Tensor] = []
    todo = [a]
    while todo:
        x = todo.pop()
        if isinstance(x, Tensor):
            found.append(x)
        elif isinstance(x, (tuple, list)):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, fx.Proxy):
            return None
    return found


def buffer_view(tracer: fx.Tracer, a: Tensor, names: dict[int, str]) -> fx.Node | None:
    """``a`` as nodes reading the buffer it views (``names``: buffer id -> its path), or None
    where ``a`` is not a buffer with unit axes added or dropped."""
    base = a._base
    name = names.get(id(base)) if base is not None else None
    if base is None or name is None or not _unit_reshape(a, base):
        return None
    node = tracer.create_node("get_attr", name, (), {})
    for d in reversed(range(base.ndim)):
        if base.shape[d] == 1:
            node = tracer.create_node("call_method", "squeeze", (node, d), {})
    for d, n in enumerate(a.shape):
        if n == 1:
            node = tracer.create_node("call_method", "unsqueeze", (node, d), {})
    return node


def _unit_reshape(a: Tensor, base: Tensor) -> bool:
    """Is ``a`` all of ``base``, in its order, with only unit axes added or dropped?"""
    if a.numel() != base.numel() or a.storage_offset() != base.storage_offset():
        return False
    if not (a.is_contiguous() and base.is_contiguous()) or a.dtype != base.dtype:
        return False
    return [n for n in a.shape if n != 1] == [n for n in base.shape if n != 1]
