"""Int attributes of a model's own modules that its forward sizes tensors with.

timm's Res2Net splits by ``self.width``, GhostNet slices ``out[:, :self.out_chs]``: sizes held
in attributes whose names no list (``sizes.SIZE_ATTRIBUTES``) could foresee. While a forward is
traced, every plain int attribute of a module that is no torch.nn layer is handed to the
model's code as a ``SizeRead`` (``size_reads``), so a literal made of exactly one such read
carries its origin: ``sizes.size_sources`` explains it by that attribute, the axis it shapes
may be pruned, and surgery rewrites the attribute as it does a listed one.

Such an attribute counts only the axes a literal read from it shaped (``size_refs``): one that
also decided control flow, or sized an op argument (``stride``, ``kernel_size``), pins those
axes and no others (a ``scale`` looped over sizes nothing, whatever tensors share its value).
A listed name keeps its wider reach (``size_reads._sized_axes``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from ..registry import RESIZERS, by_type
from .axes import AxisGraph
from .size_values import SizeRead, by_user, identity

__all__ = ["PLAIN_READS", "PlainRead", "pin_unfollowed_reads", "plain_int_attributes", "read_only_where_literal", "torch_layer"]


# {literal: {(module path, attribute)}}: a node's arguments read from such attributes, kept apart
# from ``meta.SIZE_READS`` so that only a split size (``sizes.size_sources(plain=True)``) sees them
PLAIN_READS = "skg.plain_reads"


class PlainRead(SizeRead):
    """A read of such an attribute: a literal of its own (a split size) carries its origin, but
    arithmetic on it gives a plain int, as it did before (``c // self.groups`` stays the length
    expression other rules model); the read itself then counts as a use the graph does not
    hold, which pins the axes it sizes. Arithmetic that leaves its value whatever the count
    (``self.width * 1``, ``self.width + 0``: ``size_values.identity``) gives the read again."""


def _plain(op: str) -> Any:
    base = getattr(int, op)

    def arith(self: PlainRead, *other: Any) -> Any:
        out = base(int(int.__int__(self)), *other)
        if self._origin is None or type(out) is not int or any(isinstance(o, SizeRead) for o in other) or not by_user(1):
            return out
        site, first, fn = self._origin
        origin = (site, first, lambda v: base(fn(v), *other))
        if not identity(origin):
            return out
        self.derived = True  # ``self.width * 1``, ``self.width + 0``: still the read, held where it goes
        return PlainRead(out, self._sites, self._log, origin)

    return arith


for _op in ("add", "sub", "mul", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor", "truediv", "divmod"):
    setattr(PlainRead, f"__{_op}__", _plain(f"__{_op}__"))
    setattr(PlainRead, f"__r{_op}__", _plain(f"__r{_op}__"))
for _op in ("__neg__", "__pos__", "__abs__", "__invert__", "__trunc__", "__floor__", "__ceil__"):
    setattr(PlainRead, _op, _plain(_op))

_LAYER_CLASSES: dict[type, bool] = {}


def torch_layer(cls: type) -> bool:
    """Is ``cls`` a torch.nn layer (or a subclass of one)?"""
    known = _LAYER_CLASSES.get(cls)
    if known is None:
        known = _LAYER_CLASSES[cls] = any(c.__module__.startswith("torch.nn.") and c is not nn.Module for c in cls.__mro__[:-1])
    return known


def plain_int_attributes(module: nn.Module) -> frozenset[str]:
    """The public attributes holding a plain int (not a bool) of ``module``, unless it is a
    torch.nn layer (its sizes are listed) or resizes itself (its resizer recomputes them)."""
    if torch_layer(type(module)) or by_type(RESIZERS, module) is not None:
        return frozenset()
    return frozenset(k for k, v in module.__dict__.items() if not k.startswith("_") and _plain_int(v))


def read_only_where_literal(module: Any, attr: str, names: frozenset[str] | set[str], sizes: frozenset[str] | set[str]) -> bool:
    """Is ``module.attr`` counted only by the literals read from it (``plain_int_attributes``)?
    So is every int of a module holding none of ``sizes`` (``sizes.SIZE_ATTRIBUTES``: such a
    module was never recorded), and any int not in ``names`` of one that holds some."""
    if not isinstance(module, nn.Module) or attr not in plain_int_attributes(module):
        return False
    return attr not in names or sizes.isdisjoint(module.__dict__)


def pin_unfollowed_reads(
    graph: AxisGraph,
    nodes: Iterable[fx.Node],
    modules: dict[str, nn.Module],
    names: frozenset[str] | set[str],
    sizes: frozenset[str] | set[str],
    prefix: str,
) -> None:
    """Pin the axes a module's own int attribute sizes (``size_refs``) where a literal read from
    it also reached a node none of whose axes it sizes (``view(b, self.width, -1)``, a constant
    factor there; ``torch.zeros(self.width)``): surgery rewrites the attribute, and that node
    would change with it."""
    sized: dict[tuple[str, str], list] = {}
    for axis, refs in graph.size_refs.items():
        for r in refs:
            if read_only_where_literal(modules.get(r.owner), r.attr, names, sizes):
                sized.setdefault((r.owner, r.attr), []).append(axis)
    if not sized:
        return
    for n in nodes:
        name = prefix + n.name
        for sites in (n.meta.get(PLAIN_READS) or {}).values():
            for site in sites:
                axes = sized.get(site, [])
                if axes and not any(a[1] == name or a[1].startswith(name + ".") for a in axes):
                    reason = f"size attribute {site[0] or 'model'}.{site[1]} also sizes node {n.name}, which does not follow it"
                    for a in axes:
                        graph.pin(a, reason)
                        graph.mix(a, reason)


def _plain_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
