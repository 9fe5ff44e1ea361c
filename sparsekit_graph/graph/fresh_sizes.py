"""Under ``torch.export``: the sizes of a fresh tensor that the model's code read off a tensor's
axis or a layer's size attribute.

torch.export writes ``torch.zeros(1, h.shape[1], 1, 1)`` as ``zeros([1, 8, 1, 1])``: the 8 is a
plain literal, and the rule for fresh tensors (``ops_sizes.sized_tensor``) pinned the group
where torch.fx, whose graph holds ``getitem(size(h), 1)``, links the fresh axis to ``h``'s. While
the forward is exported, the lengths the model's code reads are tracked (``length_reads``); each
one read off one axis carries that axis (``sourced``). When such a length reaches the ``size`` of
a tensor factory (``zeros``, ``ones``, ``full``, ``new_zeros``, ...), ``note_fresh`` writes on the
factory's node which position was read off which tensor's axis (``FRESH_READS``, by a token on
the tensor's node), and which positions are a layer's size attribute (``SIZE_READS``, as
torch.fx's ``size_reads.finish`` writes them); ``carry`` moves both into the planner's graph
(``export._as_model_graph``) and ``read_axes`` gives the rule the axes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.fx as fx
from torch import Tensor
from torch.fx.experimental import proxy_tensor

from .attribute_sizes import PlainRead
from .meta import SIZE_READS
from .size_values import LENGTH, SizeRead

if TYPE_CHECKING:
    from .axes import AxisId
    from .context import RuleContext
    from .normalize import Call

__all__ = ["FRESH_READS", "carry", "note_fresh", "read_axes", "sourced"]

FRESH_READS = "skg.fresh_reads"  # on a factory's node: {position in ``size``: (token or node, axis)}
_TOKEN = "skg.read_token"  # on the node of a tensor whose axis a fresh tensor's size was read off
_TOKENS = itertools.count()

# Factories whose ``size`` argument shapes the output axis by axis (``ops_sizes.sized_tensor``)
_FACTORIES = frozenset({
    torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full,
    Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty, Tensor.new_full,
})  # fmt: skip


def sourced(read: Any, tensor: Tensor | None, axis: int) -> Any:
    """``read`` (a tracked length), marked as the length of ``tensor``'s axis ``axis``."""
    if tensor is not None and isinstance(read, SizeRead):
        setattr(read, "axis_of", (tensor, axis % max(tensor.dim(), 1)))  # noqa: B010 - an int subclass's own field
    return read


def note_fresh(func: Any, call: Call | None, out: Any) -> None:
    """After ``func`` made ``out`` (a traced call, bound as ``call``): on ``out``'s node, the
    positions of its ``size`` read off an axis (``FRESH_READS``) or a layer's size attribute
    (``SIZE_READS``)."""
    if func not in _FACTORIES or call is None or not call.bound or not isinstance(out, Tensor):
        return
    size = call.args.get("size")
    parts = list(tuple.__iter__(size)) if isinstance(size, tuple) else list(size) if isinstance(size, list) else [size]
    axes = {i: src for i, p in enumerate(parts) if (src := _axis_of(size, p, i)) is not None}
    sites = {int.__int__(p): p._sites for p in parts if _attribute(p)}
    mode = proxy_tensor.get_proxy_mode()
    if (not axes and not sites) or mode is None:
        return
    node = _node(out, mode.tracer)
    if node is None:
        return
    reads = {i: (_token(n), axis) for i, (tensor, axis) in axes.items() if (n := _node(tensor, mode.tracer)) is not None}
    if reads:
        node.meta[FRESH_READS] = reads
    if sites:
        node.meta[SIZE_READS] = {v: frozenset(s) for v, s in sites.items()}


def _axis_of(size: Any, part: Any, i: int) -> tuple[Tensor, int] | None:
    """The tensor axis ``part`` (position ``i`` of ``size``) was read off: an axis's own read,
    or position ``i`` of a whole shape passed as ``size`` (``torch.ones(h.shape)``)."""
    whole = getattr(size, "tensor", None)
    if isinstance(whole, Tensor) and tuple.__len__(size) == whole.dim():
        return whole, i
    return getattr(part, "axis_of", None) if isinstance(part, SizeRead) else None


def _attribute(part: Any) -> TypeGuard[SizeRead]:
    """Is ``part`` a layer's size attribute as read (one site, no arithmetic, not a length)? Not a
    module's own int of no listed name (``PlainRead``: only a split or a slice follows one)."""
    if not isinstance(part, SizeRead) or isinstance(part, PlainRead) or not part.exact or len(part._sites) != 1:
        return False
    return next(iter(part._sites))[0] != LENGTH


def _node(t: Tensor, tracer: Any) -> fx.Node | None:
    """The node the tracer made ``t`` at, if it traced ``t``."""
    try:
        return proxy_tensor.get_proxy_slot(t, tracer).proxy.node
    except (KeyError, RuntimeError, AttributeError):
        return None


def _token(node: fx.Node) -> int:
    if _TOKEN not in node.meta:
        node.meta[_TOKEN] = next(_TOKENS)
    return node.meta[_TOKEN]


def carry(old: fx.Node, new: fx.Node, tokens: dict[int, fx.Node]) -> None:
    """Copying the exported graph: ``new`` (the copy of ``old``) takes ``old``'s token, and its
    ``FRESH_READS`` name the copied nodes."""
    if _TOKEN in old.meta:
        tokens[old.meta[_TOKEN]] = new
    reads = old.meta.get(FRESH_READS)
    if reads:
        new.meta[FRESH_READS] = {i: (tokens[t], axis) for i, (t, axis) in reads.items() if t in tokens}


def read_axes(ctx: RuleContext, count: int) -> list[AxisId | None]:
    """For a fresh tensor's node of ``count`` output axes: the axis each was read off
    (``FRESH_READS``), None where none was."""
    found: list[AxisId | None] = [None] * count
    for i, (node, axis) in (ctx.node.meta.get(FRESH_READS) or {}).items():
        src = ctx.axes(node) if isinstance(node, fx.Node) else None
        if src is not None and i < count and axis < len(src):
            found[i] = src[axis]
    return found
