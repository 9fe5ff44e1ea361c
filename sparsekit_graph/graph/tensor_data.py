"""Tensors made from traced numbers: ``torch.tensor(h.size(-1))`` recorded as a node.

torch's tensor constructors (``torch.tensor``, ``torch.as_tensor``, ``torch.asarray``) take
no ``__torch_function__``: given a Proxy (an axis length read while torch.fx traces) they fail,
and the model went to ``torch.export``, where the length becomes a constant tensor that no rule
sees (the tutorial attention's ``scores / torch.sqrt(torch.tensor(d_k))`` was claimed
zero-invariant). While the model is traced, ``recording_tensor_data`` makes each constructor
record a ``call_function`` node (target: torch's own function) when its data holds a Proxy, as
``torch.full((), n)`` already does: the length's rule (``ops_sizes.axis_lengths``) then sees a
length used as a value. A layer size attribute read into such a tensor
(``torch.tensor(self.conv.out_channels)``, a ``SizeRead``) is used as a number (``VALUE``).
A size given as varargs with a Proxy among them (``torch.zeros(B * h, L, L)``: Bloom's
attention bias) is handed to torch as one tuple, which torch.fx records. A size holding a
layer's size attribute and no Proxy (``torch.zeros(1, self.conv.out_channels, 1, 1)``) is
recorded too, as ``h.new_zeros`` is: the graph holds the read, linked as under ``torch.export``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx

from .size_values import VALUE, SizeRead, SizeTuple

__all__ = ["CONSTRUCTORS", "DATA_OPS", "SIZED", "recording_tensor_data"]

CONSTRUCTORS: tuple[str, ...] = ("tensor", "as_tensor", "asarray")  # attributes of ``torch``
SIZED: tuple[str, ...] = ("zeros", "ones", "empty", "rand", "randn")  # take a size as varargs
FILLED: tuple[str, ...] = ("full",)  # take a size as one tuple
# Ops whose number arguments are all data of the tensor they make (``torch.tensor(h.size(1))``):
# a length there is a value (it costs its axis zero-invariance), never a size of the result.
DATA_OPS: frozenset[object] = frozenset(
    {*(getattr(torch, name) for name in CONSTRUCTORS), torch.scalar_tensor, torch.Tensor.new_tensor}
)


def _walk(a: Any, found: list[Any]) -> None:
    """Proxies and size reads in ``a`` (nested tuples, lists and dicts)."""
    if isinstance(a, (fx.Proxy, SizeRead, SizeTuple)):
        found.append(a)
    if isinstance(a, (tuple, list)):
        for e in tuple.__iter__(a) if isinstance(a, tuple) else a:
            _walk(e, found)
    elif isinstance(a, dict):
        for e in a.values():
            _walk(e, found)


def _recording(fn: Callable[..., Any], tracer: fx.Tracer) -> Callable[..., Any]:
    @functools.wraps(fn)
    def constructor(*args: Any, **kwargs: Any) -> Any:
        found: list[Any] = []
        _walk((args, kwargs), found)
        for v in found:
            if isinstance(v, (SizeRead, SizeTuple)):
                v._use(VALUE)  # a number inside a tensor: pruning changes it
        if any(isinstance(v, fx.Proxy) for v in found):
            return tracer.create_proxy("call_function", fn, args, kwargs)
        return fn(*args, **kwargs)

    return constructor


def _packing(fn: Callable[..., Any], tracer: fx.Tracer) -> Callable[..., Any]:
    @functools.wraps(fn)
    def constructor(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
            return fn(args, **kwargs)  # torch.fx takes a Proxy in a size tuple, not among varargs
        if len(args) == 1 and isinstance(args[0], fx.Proxy) and isinstance(_value(tracer, args[0]), tuple):
            return tracer.create_proxy("call_function", fn, args, kwargs)  # ``torch.zeros(h.shape[:2] + (1, 1))``
        return _sized_by_read(fn, tracer, args, kwargs)

    return constructor


def _sized_by_read(fn: Callable[..., Any], tracer: fx.Tracer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``torch.zeros(1, self.conv.out_channels, 1, 1)``, ``torch.full((c,), 0.5)`` with ``c`` a
    size read: no Proxy among the arguments, so torch.fx would run the call and the graph would
    not hold the read (its axis pinned: a use the graph does not hold). Recorded as a node, its
    size one tuple, as ``h.new_zeros(1, self.conv.out_channels, 1, 1)`` is."""
    found: list[Any] = []
    _walk((args, kwargs), found)
    if not any(isinstance(v, (SizeRead, SizeTuple)) for v in found):
        return fn(*args, **kwargs)
    packed = (args,) if fn.__name__ in SIZED and len(args) > 1 else args  # varargs: one size tuple
    return tracer.create_proxy("call_function", fn, packed, kwargs)


def _sized(fn: Callable[..., Any], tracer: fx.Tracer) -> Callable[..., Any]:
    @functools.wraps(fn)
    def constructor(*args: Any, **kwargs: Any) -> Any:
        return _sized_by_read(fn, tracer, args, kwargs)

    return constructor


def _value(tracer: fx.Tracer, proxy: fx.Proxy) -> Any:
    """The proxy's value at the example's sizes, where the tracer computes them (else None)."""
    concrete = getattr(tracer, "concrete", None)
    return concrete(proxy, None) if concrete is not None else None


@contextmanager
def recording_tensor_data(tracer: fx.Tracer) -> Iterator[None]:
    """While active, ``torch.tensor`` and its relatives record a node for data holding a Proxy,
    and ``torch.zeros(B * h, L, L)`` (a size given as varargs, a Proxy among them) is recorded
    as ``torch.zeros((B * h, L, L))`` (torch.fx failed it: the model went to ``torch.export``,
    whose literal sizes pin every head); a size that is one traced tuple (``h.shape[:2] + (1, 1)``)
    is recorded as that tuple, as ``h.new_zeros`` records it."""
    saved = {name: getattr(torch, name) for name in (*CONSTRUCTORS, *SIZED, *FILLED)}
    wrap = {**dict.fromkeys(CONSTRUCTORS, _recording), **dict.fromkeys(SIZED, _packing), **dict.fromkeys(FILLED, _sized)}
    try:
        for name, fn in saved.items():
            setattr(torch, name, wrap[name](fn, tracer))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
