"""Rules that join, pad, split and slice along an axis: cat, stack, pad, chunk/split, getitem, setitem."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from .axes import AxisId
from .context import RuleContext
from .factors import unit_carrier
from .meta import COMPUTED_READS, SIZE_READS, ReadInt
from .normalize import normalize
from .ops_attention import heads_part
from .ops_gather import gather_by_index, select_by_mask
from .ops_sizes import read_for_shape_only
from .read_bounds import read_prefix, read_suffix
from .rules import register_function_rule
from .size_args import made_from, read_axis
from .sizes import product_sources
from .split_sizes import (
    followed_half,
    followed_head,
    followed_prefix,
    followed_remainder,
    followed_segments,
    followed_split,
    followed_suffix,
    followed_tail,
)
from .unbind_merge import joined_unbind, merge_unbound, rejoined

# -- concat, pad and split -----------------------------------------------------------------


# How the stacking spellings of ``torch.cat`` lift an input of ``n`` axes before concatenating:
# the positions of its axes among the output's (the others are new axes of size 1).
_LIFTS: dict[object, Callable[[int], list[int | None]]] = {
    torch.hstack: lambda n: [None] if n == 0 else list(range(n)),  # atleast_1d
    torch.vstack: lambda n: {0: [None, None], 1: [None, 0]}.get(n, list(range(n))),  # atleast_2d
    torch.dstack: lambda n: {0: [None] * 3, 1: [None, 0, None], 2: [0, 1, None]}.get(n, list(range(n))),  # atleast_3d
    torch.column_stack: lambda n: {0: [None, None], 1: [0, None]}.get(n, list(range(n))),  # a 1-D input: a column
}


@register_function_rule(torch.cat, *_LIFTS)
def cat(ctx: RuleContext) -> None:
    """Input ``k`` occupies ``[offset_k, offset_k + n_k)`` of the output's concat axis. The
    stacking spellings (``_LIFTS``) first give an input its missing axes (size 1) and then
    concatenate along axis 0 (``vstack``), 1 (``hstack``, ``column_stack``; ``hstack`` of 1-D
    tensors: 0) or 2 (``dstack``); a concat axis made of such new axes is a stack axis: pinned."""
    out = ctx.out()
    op = ctx.call.op
    lift = _LIFTS.get(op)
    default = {torch.vstack: 0, torch.dstack: 2, torch.column_stack: 1}.get(op, 0)
    if op is torch.hstack:
        default = 1 if len(out) > 1 else 0
    dim = ctx.arg("dim", default) % len(out)
    joined = joined_unbind(ctx.arg("tensors")) if lift is None else None
    if joined is not None and rejoined(joined):  # ``torch.cat(o.unbind(1), -1)``: heads merged
        merge_unbound(ctx, joined, dim)
        return
    offset = 0
    for given in ctx.tensor_axes("tensors"):
        axes = [None if p is None else given[p] for p in lift(len(given))] if lift is not None else list(given)
        if len(axes) != len(out):  # legacy: empty 1-D tensors are skipped by torch.cat
            continue
        pairs = [(a, o) for d, (a, o) in enumerate(zip(axes, out)) if d != dim and a is not None]
        ctx.same([a for a, _ in pairs], [o for _, o in pairs])
        along = axes[dim]
        if along is None:  # a new axis of size 1: one slot no input axis fills
            ctx.pin([out[dim]], f"stack axis at {ctx.where()}")
            offset += 1
            continue
        size = ctx.graph.size(along)
        if size:
            ctx.graph.link(along, out[dim], np.arange(size), offset + np.arange(size), kind="offset")
        offset += size


@register_function_rule(torch.stack)
def stack(ctx: RuleContext) -> None:
    out = ctx.out()
    dim = ctx.arg("dim", 0) % len(out)
    ctx.pin([out[dim]], f"stack axis at {ctx.where()}")
    for axes in ctx.tensor_axes("tensors"):
        ctx.same(axes, out[:dim] + out[dim + 1 :])


@register_function_rule(F.pad, torch.constant_pad_nd)
def pad(ctx: RuleContext) -> None:
    """Constant padding is a concat with constants: input index ``i`` lands at ``before + i``,
    the padded slots are pinned constants. Other modes copy data into the padding: pinned."""
    src, out = ctx.axes(ctx.input), ctx.out()
    amounts, mode = list(ctx.arg("pad")), ctx.arg("mode", "constant")
    ctx.arg("value")
    if src is None or len(amounts) % 2 or len(amounts) // 2 > len(src):
        ctx.pin_everything(f"padding by computed amounts at {ctx.where()}")
        return
    computed = [
        len(src) - 1 - k for k in range(len(amounts) // 2) if not all(isinstance(p, int) for p in amounts[2 * k : 2 * k + 2])
    ]
    if computed:  # ``F.pad(x, (0, 0, 0, pad_r, 0, pad_b))``: only the axes padded by computed amounts pin
        ctx.pin([src[d] for d in computed] + [out[d] for d in computed], f"padding by computed amounts at {ctx.where()}")
        amounts = [p if isinstance(p, int) else 0 for p in amounts]
        link_padding(ctx, src, out, amounts, mode, skip=set(computed))
        return
    link_padding(ctx, src, out, amounts, mode)


def link_padding(
    ctx: RuleContext, src: list, out: list, amounts: Sequence[int], mode: str, skip: set[int] | frozenset[int] = frozenset()
) -> None:
    """``amounts`` as ``F.pad`` takes them (last axis first, before/after pairs); axes in
    ``skip`` are left alone (pinned by the caller)."""
    nd = len(src)
    padded = {nd - 1 - k: (amounts[2 * k], amounts[2 * k + 1]) for k in range(len(amounts) // 2)}
    for d in range(nd):
        if d in skip:
            continue
        before, after = padded.get(d, (0, 0))
        if (before, after) == (0, 0):
            ctx.same([src[d]], [out[d]])
        elif mode != "constant":
            ctx.pin([src[d], out[d]], f"{mode} padding at {ctx.where()}")
        else:
            _offset_link(ctx, src[d], out[d], before, d)


def _offset_link(ctx: RuleContext, src: int | tuple, out: tuple, before: int, d: int) -> None:
    """Input index ``i`` is output index ``before + i`` (negative ``before`` crops); the
    output slots that no input index fills are constants, pinned slot by slot."""
    n_in, n_out = ctx.graph.size(src), ctx.graph.size(out)  # type: ignore[arg-type]
    i = np.arange(n_in)
    o = i + before
    keep = (o >= 0) & (o < n_out)
    if keep.any():
        ctx.graph.link(src, out, i[keep], o[keep], kind="offset")  # type: ignore[arg-type]
    if not keep.all():
        ctx.pin([src], f"cropping at {ctx.where()}")  # type: ignore[list-item]
    filled = np.zeros(n_out, dtype=bool)
    filled[o[keep]] = True
    if not filled.all():
        const = ctx.graph.add_axis(("v", f"{ctx.prefix}{ctx.node.name}:constant", d), int((~filled).sum()))
        ctx.pin([const], f"constant padding at {ctx.where()}")
        ctx.graph.link(const, out, np.arange(int((~filled).sum())), np.flatnonzero(~filled), kind="offset")


@register_function_rule(torch.chunk, torch.split, torch.tensor_split, torch.split_with_sizes)
def split(ctx: RuleContext) -> None:
    """Output ``k`` is a slice of the input. ``chunk(n)``, ``tensor_split(x, n)``, ``split`` by a
    size attribute of the model, by sizes made from a module's own attributes (``split_sizes``)
    or by ``x.size(dim) // n`` give equal parts after pruning too, so position ``p`` of every
    part is tied together; other literal split sizes pin the axis."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    parts = ctx.outputs()
    dim = ctx.arg("dim", 0) % len(src)
    how = ctx.arg("chunks") if ctx.call.op is torch.chunk else ctx.arg("split_size", ctx.arg("sections", ctx.arg("indices")))
    ctx.arg("tensor_indices_or_sections")
    for part in parts:
        ctx.same(src[:dim] + src[dim + 1 :], part[:dim] + part[dim + 1 :])
    sizes = [ctx.graph.size(p[dim]) for p in parts]
    counted = ctx.call.op is torch.chunk or (ctx.call.op is torch.tensor_split and "sections" in ctx.call.args)
    # MixNet's ``split(x, self.splits, 1)``: each part an offset segment counted by its own element
    rest = None if counted else _remainder(ctx, how, src[dim], [p[dim] for p in parts])
    segments = rest == "rest" or (not counted and not rest and followed_segments(ctx, how, src[dim], [p[dim] for p in parts]))
    is_chunk = not segments and (
        rest == "half"
        or (counted and isinstance(how, int) and not _read_count(ctx, how))
        or (not counted and _length_over(ctx, how, src[dim], len(parts)))  # a count from a length: not equal parts
        or (not counted and followed_split(ctx, how, src[dim], [p[dim] for p in parts]))  # ``split(self.width)``
        or (not counted and _attribute_sizes(ctx, how, [p[dim] for p in parts]))
    )
    if not is_chunk and not segments and _head_parts(ctx, how, src[dim], [p[dim] for p in parts]):
        return
    if not segments and (not is_chunk or len(set(sizes)) != 1 or sum(sizes) != ctx.graph.size(src[dim])):
        ctx.pin([src[dim]] + [p[dim] for p in parts], f"split with fixed sizes {how} at {ctx.where()}")
    offset = 0
    for part, size in zip(parts, sizes):
        ctx.graph.link(src[dim], part[dim], offset + np.arange(size), np.arange(size), kind="offset")
        if part is not parts[0] and is_chunk and len(set(sizes)) == 1:  # parts of unequal sizes pinned above
            ctx.graph.link(parts[0][dim], part[dim], kind="tie")
        offset += size
        unit_carrier(ctx, part[dim])  # ``split(self.head_dim)``: the parts are heads, each a head size


def _remainder(ctx: RuleContext, how: object, axis: AxisId, parts: list[AxisId]) -> str | None:
    """``split(h, [self.n, h.shape[1] - self.n])``: a part counted by an attribute and the rest of
    the axis (``split_sizes.followed_remainder``), the length read off this very axis."""
    found = followed_remainder(ctx, how, axis, parts, lambda x: read_axis(ctx, x) == axis)
    if found:
        ctx.model_length(how[1])  # type: ignore[index]
    return found


def _attribute_sizes(ctx: RuleContext, how: object, parts: list[AxisId]) -> bool:
    """``split(self.split_size)`` or ``split([self.dim] * 3)``: every part's size is a size
    attribute the model sets (recorded on the part: surgery rewrites it)."""
    sizes = [how] * len(parts) if isinstance(how, int) else how
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(parts):
        return False
    if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes):
        return False
    return all(not ctx.constant_size(p, n) for p, n in zip(parts, sizes))


def _head_parts(ctx: RuleContext, how: object, src: AxisId, parts: list[AxisId]) -> bool:
    """``qkv.split([self.num_heads * self.head_dim, kv, kv], -1)`` (or one such size for equal
    parts): every size a head count of
    the running layer times its head size (``sizes.product_sources``, as a sliced part under
    ``torch.export``): each part is an offset map whose heads follow their count attribute,
    which surgery rewrites. False (nothing linked) when any size is not such a product."""
    sizes = [ctx.graph.size(p) for p in parts]
    if isinstance(how, int) and not isinstance(how, bool):  # ``split(self.num_heads * self.head_dim)``: equal parts
        how = [how] * len(parts)
    if not isinstance(how, (list, tuple)) or list(how) != sizes or len(sizes) < 2 or sum(sizes) != ctx.graph.size(src):
        return False
    found = [product_sources(ctx.node, n, ctx.modules)[0] for n in sizes]
    if not all(f and made_from(ctx.node, n, f) for n, f in zip(sizes, found)):
        return False
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return all([heads_part(ctx, src, part, start) for part, start in zip(parts, starts)])


def _read_count(ctx: RuleContext, count: int) -> bool:
    """Was the part count computed from a layer's size (``chunk(conv.out_channels // 4)``)? Then
    pruning changes how many parts there are, not their width: not equal parts of a fixed count."""
    return isinstance(count, ReadInt) or bool((ctx.node.meta.get(SIZE_READS) or {}).get(count))


def _length_over(ctx: RuleContext, x: object, axis: object, parts: int) -> bool:
    """Is ``x`` the node ``t.size(d) // parts`` (or ``t.shape[d] // parts``) of this very axis?"""
    if not isinstance(x, fx.Node) or x.op not in ("call_function", "call_method"):
        return False
    call = normalize(x)
    if call.op is not operator.floordiv or call.args.get("other") != parts:
        return False
    if read_axis(ctx, call.args.get("input")) != axis:
        return False
    ctx.model_length(x)
    return True


@register_function_rule(operator.getitem)
def getitem(ctx: RuleContext) -> None:
    """Elements of a tuple, or tensor indexing (full slices keep axes; anything else pins)."""
    src_node, index = ctx.input, ctx.arg("index")
    value = ctx.meta(src_node)
    if isinstance(value, (tuple, list)):
        if isinstance(index, int):
            element = ctx.element_axes(src_node, index % len(value))
            if element is not None:
                ctx.same(element, ctx.out())
        elif isinstance(index, slice):
            for k, i in enumerate(range(len(value))[index]):
                element = ctx.element_axes(src_node, i)
                if element is not None:
                    ctx.same(element, ctx.out(k))
        else:
            ctx.pin_everything(f"indexing a tuple at {ctx.where()}")
        return
    if isinstance(value, dict):  # forward(batch) / forward(**extra): an input of the model
        for axes in ctx.outputs():
            ctx.pin(axes, f"model input {ctx.where()}")
        return
    if not isinstance(value, Tensor) or not isinstance(ctx.out_value, Tensor):
        return
    items = list(index) if isinstance(index, tuple) else [index]
    if gather_by_index(ctx, items) or select_by_mask(ctx, items):  # table[index], h[i, j]; h[mask]
        return
    src, out = ctx.axes(src_node), ctx.out()
    assert src is not None
    if any(isinstance(i, fx.Node) or (i is not None and not isinstance(i, (int, slice, type(Ellipsis)))) for i in items):
        ctx.pin(src + out, f"indexing at {ctx.where()}")
        return
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(src) - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * fill + items[k + 1 :]
    items += [slice(None)] * (len(src) - sum(1 for i in items if i is not None))
    shape_only = read_for_shape_only(ctx.node)
    si = oi = 0
    for it in items:
        if it is None:
            oi += 1
        elif isinstance(it, int):
            if shape_only and it >= 0:  # ``ones_like(h[:, 0])``: any channel gives the shape
                ctx.at_least(src[si], it + 1, f"indexing at {ctx.where()}")
            else:
                ctx.pin([src[si]], f"indexing at {ctx.where()}")
            si += 1
        else:
            if it == slice(None):
                ctx.same([src[si]], [out[oi]])
            elif shape_only and it.start in (None, 0) and it.step is None and type(it.stop) is int and it.stop > 0:
                ctx.at_least(src[si], it.stop, f"slicing at {ctx.where()}")  # ``ones_like(h[:, :1])``: a shape
                ctx.pin([out[oi]], f"slicing at {ctx.where()}")
            elif (half := _followed(ctx, it, src[si], out[oi], si)) is not None:
                ctx.graph.link(src[si], out[oi], half, np.arange(len(half)), kind="offset")
            elif (step := _every(it, ctx.graph.size(src[si]))) is not None:  # ``h[..., ::2]``, ``h[..., 1::2]``
                units = np.arange(ctx.graph.size(src[si]))
                ctx.graph.link(src[si], out[oi], units, units // step, kind="block")
            else:  # which indices it takes (as split does), pinned: the bounds would not follow
                bounds = [ctx.meta(b) if isinstance(b, fx.Node) else b for b in (it.start, it.stop, it.step)]
                if all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds):
                    picked = np.arange(ctx.graph.size(src[si]))[slice(*bounds)]  # computed bounds: their values
                    if len(picked):
                        ctx.graph.link(src[si], out[oi], picked, np.arange(len(picked)), kind="offset")
                ctx.pin([src[si], out[oi]], f"slicing at {ctx.where()}")
                _unfollowed_bounds(ctx, it)
            si += 1
            oi += 1


def _every(it: slice, size: int) -> int | None:
    """The step of a slice taking one index in every ``step`` of the whole axis (GPT-J's
    ``x[..., ::2]``, ``x[..., 1::2]``), as ``view(..., -1, step)[..., start]`` does: the axis is
    pruned in blocks of ``step``, output index ``j`` one of block ``j``'s. None for any other."""
    step, start, stop = it.step, 0 if it.start is None else it.start, it.stop
    if type(step) is not int or type(start) is not int or step < 2 or not 0 <= start < step or size % step:
        return None
    return step if stop is None or (type(stop) is int and stop >= size) else None


def _unfollowed_bounds(ctx: RuleContext, it: slice) -> None:
    """A bound read from a layer's count (``h[:, : self.side.out_channels]``) that the slice
    does not follow: surgery would rewrite the count with its own axes and move the bound, so
    those axes pin too (``computed_sizes``, as for a number computed from the count)."""
    sites = {s for b in (it.start, it.stop, it.step) if isinstance(b, ReadInt) for s in b.sites}
    if sites:
        ctx.node.meta[COMPUTED_READS] = frozenset(ctx.node.meta.get(COMPUTED_READS, ())) | sites


def _followed(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId, dim: int) -> np.ndarray | None:
    """The indices a slice takes whose bounds follow pruning (a half of the axis, bounds read
    from attributes: ``split_sizes``, or off another tensor's axis: ``read_bounds``); None for
    any other slice."""
    found = _half(ctx, it, axis, out)
    if found is None:
        found = followed_prefix(ctx, it, axis, out)
    if found is None:
        found = followed_suffix(ctx, it, axis, ctx.input, dim)
    if found is None:
        found = followed_tail(ctx, it, axis, out)
    if found is None:
        found = followed_head(ctx, it, axis, ctx.input, dim)
    if found is None:
        found = read_prefix(ctx, it, axis, out)
    if found is None:
        found = read_suffix(ctx, it, axis, ctx.input, dim)
    return found


def _half(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId) -> np.ndarray | None:
    """``t[:, : n // 2]`` or ``t[:, n // 2 :]`` with ``n`` this axis's length read off the tensor,
    or bounds made from attributes that count it (``followed_half``: ``t[:, o : 2 * o]``): a half
    that ``chunk(2)`` would make, so index ``p`` of each half is tied (even ``n`` only); the
    indices it takes, or ``None`` for any other slice."""
    n = ctx.graph.size(axis)
    if it.step is not None or n % 2:
        return None
    if it.start is None and _length_over(ctx, it.stop, axis, 2):
        picked = np.arange(n // 2)
    elif it.stop is None and _length_over(ctx, it.start, axis, 2):
        picked = n // 2 + np.arange(n // 2)
    elif (picked := followed_half(ctx, it, axis, out)) is None:
        return None
    ctx.graph.link(axis, axis, np.arange(n // 2), n // 2 + np.arange(n // 2), kind="offset")
    return picked


@register_function_rule(operator.setitem)
def setitem(ctx: RuleContext) -> None:
    """``out[:, a:b] = y`` writes through a view: nothing it touches may be pruned."""
    ctx.pin_everything(f"slice assignment at {ctx.where()}")
