"""Rules for ops that reorder, copy, select or scan the indices of an axis.

``flip`` reverses an axis (a permutation that survives pruning); ``repeat`` / ``tile`` lay
copies side by side (a concat of the input with itself); ``glu`` and ``pixel_shuffle`` map
blocks of indices to one index; ``roll``, ``narrow``, ``index_select`` and ``unfold`` move
indices by amounts that would not follow a pruned length (those axes pin), as do the writes
``index_add`` / ``index_copy`` / ``scatter`` along their ``dim``; scans (``cumsum``) keep every
axis. Every other axis passes through unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .axes import AxisId
from .context import RuleContext
from .ops_gather import produced_by_rows
from .ops_sizes import register_length_args
from .ops_tensor import finite_when_masked, pointwise
from .positions import index_by_positions
from .read_bounds import read_prefix
from .rules import register_function_rule, register_method_rule, register_module_rule
from .size_args import read_axis
from .zeros import zero_breaker

__all__: list[str] = []


def _dims(value: object, nd: int) -> list[int] | None:
    """``dims`` as non-negative ints (an int or a sequence of them), or None if unreadable."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in items):
        return None
    return [d % nd for d in items]


def _each_axis(ctx: RuleContext, special: list[int], link_special: object) -> None:
    """Identity on every axis but ``special``, where ``link_special(src_axis, out_axis, d)`` runs."""
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    for d, (a, o) in enumerate(zip(src, out)):
        if d in special:
            link_special(a, o, d)  # type: ignore[operator]
        else:
            ctx.same([a], [o])


_FLIP_DIMS = {torch.fliplr: (1,), torch.flipud: (0,)}


@register_function_rule(torch.flip, torch.fliplr, torch.flipud)
def flip(ctx: RuleContext) -> None:
    """Index ``i`` of a flipped axis is index ``n - 1 - i`` of the output: reversing the kept
    channels of a pruned axis is the same permutation restricted to them."""
    nd = ctx.meta(ctx.input).ndim
    dims = _dims(_FLIP_DIMS.get(ctx.call.op) or ctx.arg("dims"), max(nd, 1))
    if dims is None:
        ctx.pin_everything(f"flip over unreadable dims at {ctx.where()}")
        return

    def reverse(a: AxisId, o: AxisId, d: int) -> None:
        n = ctx.graph.size(a)
        ctx.graph.link(a, o, np.arange(n), n - 1 - np.arange(n), kind="permute")

    _each_axis(ctx, dims, reverse)


@register_function_rule(torch.roll)
def roll(ctx: RuleContext) -> None:
    """A rolled axis moves index ``i`` to ``(i + shift) % n``: with fewer channels the shift
    lands elsewhere, so rolled axes pin; ``dims=None`` rolls the flattened tensor."""
    ctx.arg("shifts")
    nd = ctx.meta(ctx.input).ndim
    dims = ctx.arg("dims")
    dims = None if dims in (None, (), []) else _dims(dims, max(nd, 1))
    if dims is None:
        ctx.pin_everything(f"roll of the flattened tensor at {ctx.where()}")
        return
    _each_axis(ctx, dims, lambda a, o, d: ctx.pin([a, o], f"roll along axis {d} at {ctx.where()}"))


@register_method_rule("repeat")
@register_function_rule(torch.tile)
def repeat(ctx: RuleContext) -> None:
    """``x.repeat(r0, r1, ...)`` / ``x.tile(...)``: output index ``k*n + i`` is input index ``i``,
    copy ``k`` of ``r`` (a concat of the input with itself, which pruning keeps). Leading new
    axes, and size-1 axes repeated to a literal length, pin."""
    src, out = ctx.axes(ctx.input), ctx.out()
    reps = ctx.arg("repeats") if ctx.call.op is not torch.tile else ctx.arg("dims")
    if src is None or not isinstance(reps, (tuple, list)) or not all(isinstance(r, (int, fx.Node)) for r in reps):
        ctx.pin_everything(f"repeat by computed counts at {ctx.where()}")
        return
    reps = [1] * (len(src) - len(reps)) + list(reps)  # tile pads on the left
    lead = len(out) - len(src)
    ctx.pin(out[:lead], f"new axis of {ctx.where()}")
    for a, o, r in zip(src, out[lead:], reps[lead:]):
        n = ctx.graph.size(a)
        if isinstance(r, fx.Node):  # ``m.repeat(1, 1, h.size(2))`` of one index: ``expand`` to that length
            read = read_axis(ctx, r) if n == 1 else None
            if read is None:
                ctx.pin([a, o], f"repeat by a computed count at {ctx.where()}")
            else:
                ctx.graph.link(read, o)
                ctx.model_length(r)
        elif r == 1:
            ctx.same([a], [o])
        elif n == 1:
            if ctx.constant_size(o, r):
                ctx.pin([o], f"repeat to a constant size at {ctx.where()}")
            else:
                ctx.fresh([o])
        else:
            for k in range(r):
                ctx.graph.link(a, o, np.arange(n), k * n + np.arange(n), kind="offset")


@register_function_rule(torch.narrow, torch.index_select)
def select_along(ctx: RuleContext) -> None:
    """``narrow(dim, start, length)`` / ``index_select(dim, index)`` pick indices by position:
    with fewer channels the same positions are other channels, so that axis pins (a narrow
    that keeps the whole axis is an identity)."""
    nd = ctx.meta(ctx.input).ndim
    d = ctx.arg("dim") % max(nd, 1)
    start, length, _ = ctx.arg("start"), ctx.arg("length"), ctx.arg("index")
    src = ctx.axes(ctx.input)
    if ctx.call.op is torch.narrow and start == 0 and src is not None and _whole_length(ctx, length, src[d]):
        _each_axis(ctx, [], None)
        return

    def pick(a: AxisId, o: AxisId, _: int) -> None:
        if ctx.call.op is torch.index_select and index_by_positions(ctx, ctx.arg("index"), a):  # as ``w[idx]``
            ctx.same(ctx.axes(ctx.arg("index")) or [], [o])
            return
        taken = read_prefix(ctx, slice(0, length), a, o) if ctx.call.op is torch.narrow and start == 0 else None
        if taken is not None:  # ``h.narrow(1, 0, g.shape[1])``: as ``h[:, : g.shape[1]]``
            ctx.graph.link(a, o, taken, np.arange(len(taken)), kind="offset")
            return
        if ctx.call.op is torch.narrow and isinstance(start, int) and isinstance(length, int):  # as split does
            ctx.graph.link(a, o, start % ctx.graph.size(a) + np.arange(length), np.arange(length), kind="offset")
        ctx.pin([a, o], f"selecting by position at {ctx.where()}")

    _each_axis(ctx, [d], pick)
    if ctx.call.op is torch.index_select and src is not None:  # ``w.index_select(0, ids)``: an embedding
        produced_by_rows(ctx, src[:d] + src[d + 1 :])


register_length_args({"length"}, torch.narrow)  # ``h.narrow(1, 0, h.shape[1])``: read off its axis


def _whole_length(ctx: RuleContext, length: object, axis: AxisId) -> bool:
    """Does ``length`` keep the whole ``axis`` whatever is pruned: a read of its length
    (``h.size(1)``) or a literal a size attribute explains, not a number the code wrote
    (``h.narrow(1, 0, 12)`` would cut a grown-back axis, and fails on a pruned one)?"""
    if isinstance(length, fx.Node):
        if read_axis(ctx, length) != axis:
            return False
        ctx.model_length(length)
        return True
    return length == ctx.graph.size(axis) and not ctx.constant_size(axis, length)


@register_method_rule("unfold")
def unfold(ctx: RuleContext) -> None:
    """``x.unfold(dim, size, step)``: windows along ``dim`` (pinned, with the new last axis)."""
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    ctx.arg("size"), ctx.arg("step")
    d = ctx.arg("dimension") % max(len(src), 1)
    for k, (a, o) in enumerate(zip(src, out)):
        if k == d:
            ctx.pin([a, o], f"windows along axis {d} at {ctx.where()}")
        else:
            ctx.same([a], [o])
    ctx.pin(out[len(src) :], f"window axis of {ctx.where()}")


_SUM_SCANS = {torch.cumsum}


@register_function_rule(torch.cumsum, torch.cumprod, torch.cummax, torch.cummin, torch.logcumsumexp)
def scan(ctx: RuleContext) -> None:
    """Running reductions keep every axis. Along the scanned axis a removed channel changes the
    others unless it adds exactly zero: a ``cumsum`` of values that are zero where the channel's
    members are; ``cumprod``, ``cummax`` and ``logcumsumexp`` never (and ``cummax``'s indices
    are positions)."""
    nd = ctx.meta(ctx.input).ndim
    d = ctx.arg("dim") % max(nd, 1)
    ctx.arg("dtype")
    src = ctx.axes(ctx.input)
    if src is None:
        return
    for out in ctx.outputs():
        ctx.same(src, out)
    finite_when_masked(ctx, ctx.outputs()[0])  # ``(1 / (m + 1e-7)).expand_as(h).cumprod(-1)``: inf
    breaker = zero_breaker(ctx.input, d, ctx.modules) if ctx.call.op in _SUM_SCANS else ctx.where()
    if breaker is not None:
        ctx.mix([src[d]], f"running reduction over axis {d} at {ctx.where()} (at {breaker})")


@register_function_rule(F.glu)
def glu(ctx: RuleContext) -> None:
    """``a * sigmoid(b)`` with ``a, b = x.chunk(2, dim)``: output index ``i`` is input indices
    ``i`` and ``n/2 + i`` (one channel); a zeroed ``a`` zeroes the output."""
    _glu(ctx, ctx.arg("dim", -1))


@register_module_rule(nn.GLU)
def glu_module(ctx: RuleContext) -> None:
    """``nn.GLU(dim)``: ``F.glu`` over the layer's ``dim``."""
    _glu(ctx, ctx.module.dim)  # type: ignore[union-attr]


def _glu(ctx: RuleContext, dim: int) -> None:
    nd = ctx.meta(ctx.input).ndim
    d = dim % max(nd, 1)

    def halves(a: AxisId, o: AxisId, _: int) -> None:
        half = ctx.graph.size(o)
        for k in range(2):
            ctx.graph.link(a, o, k * half + np.arange(half), np.arange(half), kind="offset")

    _each_axis(ctx, [d], halves)


def _shuffle_links(ctx: RuleContext, r: int, up: bool) -> None:
    """(B, C*r*r, H, W) <-> (B, C, H*r, W*r): channel ``c`` of the small side is the block
    ``[c*r*r, (c+1)*r*r)`` of the large side; spatial axes pin."""
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None or len(src) < 3:
        ctx.pin_everything(f"pixel shuffle without a channel axis at {ctx.where()}")
        return
    c = len(src) - 3
    ctx.same(src[:c], out[:c])
    ctx.pin(src[c + 1 :] + out[c + 1 :], f"spatial axis of {ctx.where()}")
    big = ctx.graph.size(src[c] if up else out[c])
    fine, coarse = np.arange(big), np.arange(big) // (r * r)
    if up:
        ctx.graph.link(src[c], out[c], fine, coarse, kind="block")
    else:
        ctx.graph.link(src[c], out[c], coarse, fine, kind="block")


@register_function_rule(F.pixel_shuffle, F.pixel_unshuffle)
def pixel_shuffle(ctx: RuleContext) -> None:
    up = ctx.call.op is F.pixel_shuffle
    r = ctx.arg("upscale_factor") if up else ctx.arg("downscale_factor")
    _shuffle_links(ctx, r, up)


@register_module_rule(nn.PixelShuffle, nn.PixelUnshuffle)
def pixel_shuffle_module(ctx: RuleContext) -> None:
    m = ctx.module
    up = isinstance(m, nn.PixelShuffle)
    _shuffle_links(ctx, m.upscale_factor if up else m.downscale_factor, up)  # type: ignore[union-attr]


@register_module_rule(nn.Softmax2d)
def softmax2d(ctx: RuleContext) -> None:
    """Softmax over the channel axis (-3)."""
    pointwise(ctx)
    ctx.mix([ctx.out()[-3]], f"softmax at {ctx.where()}")


_WRITES = (torch.index_add, torch.index_copy, torch.index_fill, torch.scatter, torch.scatter_add, torch.scatter_reduce)


@register_function_rule(*_WRITES)
def write_along(ctx: RuleContext) -> None:
    """``index_add(x, dim, index, source)``, ``index_copy``, ``index_fill`` and ``scatter(x, dim,
    index, src)``, ``scatter_add``, ``scatter_reduce``: the positions written along ``dim`` are
    chosen by data, so that axis pins in every operand; on every other axis each index is
    written from the same index of the source (and of scatter's index tensor), whatever the
    others hold: channels pass through, as in an elementwise op. An operand axis shorter than
    the output's (scatter reads only ``index``'s extent of ``src``) is pinned."""
    ctx.read_all()
    x, out = ctx.axes(ctx.input), ctx.out()
    if x is None or not out:
        ctx.pin_everything(f"write into a non-tensor at {ctx.where()}")
        return
    d = ctx.arg("dim") % len(out)
    where = f"positions chosen by an index along axis {d} at {ctx.where()}"
    ctx.pin([x[d], out[d]], where)
    ctx.same(x[:d] + x[d + 1 :], out[:d] + out[d + 1 :])
    index = ctx.axes(ctx.arg("index"))
    scatter = ctx.call.op in (torch.scatter, torch.scatter_add, torch.scatter_reduce)
    if not scatter:  # ``index_*``: a 1-D index, one position along ``dim`` per source index
        ctx.pin(index or [], where)
    for axes in [ctx.axes(ctx.arg("source", ctx.arg("src")))] + ([index] if scatter else []):
        if axes is None:  # a scalar value (``index_fill``, ``scatter(..., value=...)``)
            continue
        if len(axes) != len(out):
            ctx.pin_everything(f"operand of another rank at {ctx.where()}")
            return
        for k, (a, o) in enumerate(zip(axes, out)):
            if k == d:
                ctx.pin([a], where)
            elif ctx.graph.size(a) != ctx.graph.size(o):  # scatter writes only ``index``'s extent
                ctx.pin([a, o], f"operand and output of different lengths along axis {k} at {ctx.where()}")
            else:
                ctx.same([a], [o])
