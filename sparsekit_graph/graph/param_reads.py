"""Sizes of the model's own tensors read by its code, whatever route reached the tensor.

torch.fx hands the code a Proxy for ``self.conv.weight`` (its ``.shape`` becomes graph nodes,
which ``ops_sizes.axis_lengths`` judges), but the real tensor for ``next(m.parameters())``,
``dict(m.named_parameters())[k]``, ``m.state_dict()[k]`` or ``m._parameters[k]``: its sizes were
plain ints, and ``out * (1.0 / count)`` a constant the planner could not tie to the channels it
counts (a false zero-invariance claim). While torch.fx traces, ``recording_param_reads`` makes
``Tensor.shape``, ``size()``, ``numel()`` and ``nelement()`` of a tensor sharing storage with a
parameter or buffer of the model hand the model's own code ``SizeRead``s (``size_values``): one
per axis, with the site ``(qualified tensor name, "shape[d]")``. ``size_reads.finish`` records
what Python made of them (``SIZE_CONTROL``) as for layer attributes; ``pin_param_reads`` turns
those into pins (control flow) or lost zero-invariance (a number, ``VALUE``) on the tensor's
axes. A view of the tensor (``w.T``) reads as every axis of the same length (fail closed).

``len(t)`` is ``t.shape[0]``, but Python makes whatever ``__len__`` returns a plain int: while
active, ``builtins.len`` is replaced by ``_len``, which answers the model's own code with the
read of axis 0 (a ``SizeRead`` of a model tensor; for a traced value, whatever its
``traced_length`` gives: ``size_proxy.SizeProxy`` returns ``h.shape[0]`` as a Proxy), and anything
else with the builtin's plain int.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .axes import AxisGraph
from .meta import SIZE_CONTROL, SIZE_READS
from .size_values import VALUE, Site, SizeRead, SizeTuple
from .user_code import by_user, stand_in

if TYPE_CHECKING:
    from .size_reads import _Log

__all__ = ["pin_param_reads", "recording_param_reads", "storage_key"]

_AXIS = "shape[{}]"  # a site's attribute: an axis of the tensor its path names
_PATCHED = ("shape", "size", "numel", "nelement")
_BASE = torch._C.TensorBase
_LEN = builtins.len


def storage_key(t: Tensor) -> int | None:
    """The tensor's storage (shared by its views, ``detach()`` and ``state_dict()``'s entries)."""
    try:
        return int(t.untyped_storage()._cdata)
    except Exception:  # noqa: BLE001 - a tensor without storage (a Proxy's fake, a subclass)
        return None


class _Reads:
    """The model's tensors by storage, and the log their reads go to."""

    def __init__(self, model: nn.Module, log: _Log) -> None:
        self.log = log
        self.model = model
        self._by_storage: dict[int, tuple[str, torch.Size]] | None = None  # made at the first read

    def by_storage(self) -> dict[int, tuple[str, torch.Size]]:
        if self._by_storage is None:
            self._by_storage = {}
            for name, t in (*self.model.named_parameters(), *self.model.named_buffers()):
                key = storage_key(t)
                if key is not None and t.ndim:
                    self._by_storage.setdefault(key, (name, t.shape))
        return self._by_storage

    def axes(self, t: Tensor, shape: tuple[int, ...]) -> tuple[frozenset[Site], ...] | None:
        """Per axis of ``t``, the model tensor's axes it is (None: not the model's tensor)."""
        key = storage_key(t)
        found = self.by_storage().get(key) if key is not None else None
        if found is None:
            return None
        name, own = found
        if tuple(own) == tuple(shape) and t.storage_offset() == 0 and t.is_contiguous():
            return tuple(frozenset({(name, _AXIS.format(d))}) for d in range(len(shape)))
        return tuple(frozenset((name, _AXIS.format(d)) for d, n in enumerate(own) if n == v) for v in shape)


_ACTIVE: list[_Reads] = []


class _ShapeRead(SizeTuple):
    """A model tensor's shape read by the model's code: element ``d`` a ``SizeRead`` of axis ``d``."""

    _axes: tuple[frozenset[Site], ...]

    def __new__(cls, value: tuple[int, ...], axes: tuple[frozenset[Site], ...], log: _Log) -> _ShapeRead:
        obj = SizeTuple.__new__(cls, value, frozenset().union(*axes), log)
        obj._axes = axes  # type: ignore[attr-defined]
        return obj  # type: ignore[return-value]

    def _element(self, i: int) -> Any:
        v = tuple.__getitem__(self, i)
        sites = self._axes[i]
        return SizeRead(v, sites, self._log) if sites else v

    def __getitem__(self, i: Any) -> Any:
        if not by_user(1):
            self.reached = True
            return tuple.__getitem__(self, i)
        self.derived = True
        if isinstance(i, slice):
            return _ShapeRead(tuple.__getitem__(self, i), self._axes[i], self._log)
        return self._element(i)

    def __iter__(self) -> Iterator[Any]:
        if not by_user(1):
            self.reached = True
            return tuple.__iter__(self)
        self.derived = True
        return iter([self._element(i) for i in range(tuple.__len__(self))])

    def __fx_create_arg__(self, tracer: Any) -> tuple[Any, ...]:
        self.derived = True
        return tuple(self._element(i) for i in range(tuple.__len__(self)))

    def numel(self) -> Any:
        """``torch.Size.numel``: the product, read from every axis."""
        self.derived = True
        total = math.prod(tuple.__iter__(self))
        return SizeRead(total, self._sites, self._log) if self._sites and by_user(1) else total


def _wrap_shape(t: Tensor, shape: torch.Size) -> Any:
    reads = _ACTIVE[-1] if _ACTIVE else None
    if reads is None or not shape or not by_user(2):
        return shape
    axes = reads.axes(t, tuple(shape))
    if axes is None or not any(axes):
        return shape
    return _ShapeRead(tuple(shape), axes, reads.log)


def _shape(self: Tensor) -> Any:
    return _wrap_shape(self, _BASE.shape.__get__(self))  # type: ignore[attr-defined]


def _size(self: Tensor, *args: Any, **kwargs: Any) -> Any:
    out = _BASE.size(self, *args, **kwargs)
    if not _ACTIVE or not by_user(1):
        return out
    if isinstance(out, torch.Size):
        return _wrap_shape(self, out)
    dim = args[0] if args else kwargs.get("dim")
    return _axis_read(self, dim, out)


def _axis_read(t: Tensor, dim: Any, out: int) -> Any:
    """``out``, the length of axis ``dim`` of ``t``, as a ``SizeRead`` where ``t`` is a model tensor."""
    shape = _BASE.shape.__get__(t)  # type: ignore[attr-defined]
    axes = _ACTIVE[-1].axes(t, tuple(shape))
    if axes is None or not isinstance(dim, int) or not -len(axes) <= dim < len(axes) or not axes[dim]:
        return out
    return SizeRead(out, axes[dim], _ACTIVE[-1].log)


@stand_in
def _len(obj: Any, /) -> Any:
    """``builtins.len`` while recording: ``len(t)`` of a tensor, asked by the model's code, is the
    read of its axis 0 (``t.shape[0]``), not a plain int that hides where it came from. A stand-in
    for the builtin: ``len(self.normalized_shape)`` is the model's own use (``SizeTuple.__len__``)."""
    if isinstance(obj, Tensor) and _ACTIVE and obj.ndim and by_user(1):
        return _axis_read(obj, 0, _LEN(obj))
    traced = getattr(type(obj), "traced_length", None)  # a Proxy: ``size_proxy.SizeProxy``
    if traced is not None and by_user(1):
        length = traced(obj)
        if length is not None:
            return length
    return _LEN(obj)


def _count(base: Any) -> Any:
    def count(self: Tensor) -> Any:
        out = base(self)
        if not _ACTIVE or not by_user(1):
            return out
        axes = _ACTIVE[-1].axes(self, tuple(_BASE.shape.__get__(self)))  # type: ignore[attr-defined]
        if axes is None or not any(axes):
            return out
        return SizeRead(out, frozenset().union(*axes), _ACTIVE[-1].log)

    return count


@contextmanager
def recording_param_reads(model: nn.Module, log: _Log) -> Iterator[None]:
    """While active, the model's code reads its own tensors' sizes as ``SizeRead``s into ``log``."""
    reads = _Reads(model, log)
    saved = {name: torch.Tensor.__dict__[name] for name in _PATCHED if name in torch.Tensor.__dict__}
    saved_len = builtins.len
    _ACTIVE.append(reads)
    try:
        torch.Tensor.shape = property(_shape)  # type: ignore[method-assign,assignment]
        torch.Tensor.size = _size  # type: ignore[method-assign,assignment]
        torch.Tensor.numel = _count(_BASE.numel)  # type: ignore[method-assign]
        torch.Tensor.nelement = _count(_BASE.nelement)  # type: ignore[method-assign]
        builtins.len = _len
        yield
    finally:
        _ACTIVE.remove(reads)
        builtins.len = saved_len
        for name in _PATCHED:
            if name in saved:
                setattr(torch.Tensor, name, saved[name])
            elif name in torch.Tensor.__dict__:
                delattr(torch.Tensor, name)


def pin_param_reads(graph: AxisGraph, nodes: Any, tensors: dict[str, Tensor], uses: dict[Site, Any]) -> None:
    """The axes of the model's tensors whose sizes the code read (``recording_param_reads``):
    pinned where Python control flow used one, not zero-invariant where it became a number
    (``VALUE``, a float an op takes: ``uses``, from ``number_uses.size_arguments``, or a
    literal the graph holds where it scales a tensor: ``graph.numbers``)."""
    out = next((n for n in reversed(list(nodes)) if isinstance(n, fx.Node) and n.op == "output"), None)
    control: dict[Site, Any] = dict(out.meta.get(SIZE_CONTROL, {})) if out is not None else {}
    for site, use in uses.items():  # ``h * (n / 1000)``: a float made from a parameter's size
        if control.get(site) in (None, VALUE):
            control[site] = use
    for n, node in graph.numbers:  # held as a literal that scales a tensor (``h / sum(p.numel() for p in ...)``)
        for site in (node.meta.get(SIZE_READS) or {}).get(n, ()):
            control.setdefault(site, VALUE)
    for (path, attr), kind in sorted(control.items()):
        t = tensors.get(path)
        if t is None or not attr.startswith("shape["):
            continue
        d = int(attr[len("shape[") : -1])
        axis = ("p", graph.canonical.get(id(t), path), d)
        if axis not in graph.sizes:
            continue
        if kind == VALUE:
            reason = f"forward uses {path}.shape[{d}] = {t.shape[d]} as a number: removing a channel changes it"
        else:
            reason = (
                f"python control flow on {path}.shape[{d}] = {t.shape[d]} ({kind}): "
                "the traced code would not follow a pruned size"
            )
            graph.pin(axis, reason)
        graph.mix(axis, reason)
