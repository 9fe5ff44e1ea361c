"""Rules for reshapes: flatten, view/reshape, unflatten. Axes are matched by equal products;
one axis of each run carries the channels (block index maps), the other factors pin; literal
sizes follow the model only where an attribute explains them (see ``sizes.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor

from .attribute_sizes import PlainInt
from .axes import AxisGraph, AxisId
from .context import RuleContext
from .factors import record_factor, unit_carrier
from .head_quotients import head_quotients
from .meta import META, ReadInt
from .rules import register_function_rule, register_method_rule
from .size_args import link_read_lengths, literal_dims, made_from, size_element, size_elements
from .sizes import COUNT_ATTRIBUTES, SizeSource, count_plus_sources, module_stack, product_sources, size_sources
from .split_sizes import followed_count


@register_function_rule(torch.flatten)
def flatten(ctx: RuleContext) -> None:
    flatten_axes(ctx, ctx.arg("start_dim", 0), ctx.arg("end_dim", -1))


def flatten_axes(ctx: RuleContext, start: int, end: int) -> None:
    """Axes ``start..end`` merge into one; the others pass through."""
    nd = max(ctx.meta(ctx.input).ndim, 1)
    start, end = start % nd, end % nd
    groups = [([d], [d]) for d in range(start)] + [(list(range(start, end + 1)), [start])]
    groups += [([d], [d - (end - start)]) for d in range(end + 1, nd)]
    reshape_axes(ctx, literal=[False] * ctx.out_value.ndim, groups=groups)


@register_function_rule(torch.reshape)
@register_method_rule("view", "view_as", "reshape_as")
def view(ctx: RuleContext) -> None:
    """Reshape: axes are matched by equal products; the literal sizes in the call are pinned."""
    if ctx.arg("dtype") is not None:
        ctx.pin_everything(f"view as dtype at {ctx.where()}")
        return
    raw = ctx.arg("shape", ctx.arg("size"))
    out = ctx.out()
    read = ctx.arg("other") if ctx.arg("other") is not None else raw
    if isinstance(raw, fx.Node) and ctx.arg("other") is None:  # a size tuple: h.shape, h.size()[:-2] + (16,)
        raw = size_elements(ctx, raw) or raw
    if ctx.arg("other") is not None or isinstance(raw, fx.Node):  # sizes of another tensor: all follow the model
        raw = [None] * ctx.out_value.ndim
    if not isinstance(raw, (tuple, list)):
        raw = [raw]
    raw = [size_element(ctx, s) for s in raw]
    in_shape, out_shape = list(ctx.meta(ctx.input).shape), list(ctx.out_value.shape)
    groups = _factor_groups(in_shape, out_shape)
    # torch.export writes sizes read off tensors (``h.size(1)``) as literals: one that keeps an
    # input axis as it is follows that axis (HF Swin's ``view(B, -1, 4 * C)`` with C read off the
    # input). A literal of the code (``view(*h.shape[:-1], cfg.width)``) reads the same, so on
    # this path only prune's checks catch it (torch.fx, which most such models take, pins it).
    whole = {gb[0] for ga, gb in groups if len(ga) == len(gb) == 1}  # output axes that keep an input axis
    kept = whole if ctx.exported else set()
    twice = _repeated_sizes(ctx, raw)

    def constant(j: int, s: Any) -> bool:  # (records the attributes a size follows: call once per axis)
        if not isinstance(s, int) or s <= 1:
            return isinstance(s, int) and ctx.constant_size(out[j], s)  # records an attribute read as 1
        if isinstance(s, PlainInt) and j in whole and j not in twice and followed_count(ctx, s, out[j]):
            return False  # ``view(b, self.inter_channels, -1)``: a module's own count of the axis it keeps
        if j in twice:
            return j not in kept
        fixed = ctx.constant_size(out[j], s) and not _count_plus_slots(ctx, j, s) and not _merged_heads(ctx, j, s, groups)
        return fixed and j not in kept

    quotients = head_quotients(ctx, raw, groups)
    literal = [j not in quotients and (constant(j, s) or _computed_constant(ctx, j, s, groups)) for j, s in enumerate(raw)]
    _inferred_group_count(ctx, raw, out)
    reshape_axes(ctx, literal=literal, groups=groups)
    link_read_lengths(ctx, read, out)  # after the reshape's own links, which may carry the read channels


def _computed_constant(ctx: RuleContext, j: int, size: Any, groups: list[tuple[list[int], list[int]]]) -> bool:
    """A size computed with a literal factor (``q.reshape(b * 4, n, d)``) does not follow the
    model in that factor: the input axes it sizes are pinned (the heads; ``b`` reads the batch).
    True (the output axis is a constant) where the literal cannot be placed on input axes."""
    if not isinstance(size, fx.Node):
        return False
    src = ctx.axes(ctx.input) or []
    ga = next((a for a, b in groups if b == [j]), [])  # the input axes merged into axis j (none: a split)
    dims = literal_dims(ctx, size, [d for d in ga if d < len(src) and ctx.graph.size(src[d]) > 1])
    if dims is None:
        return True
    ctx.pin([src[d] for d in dims], f"reshape with a constant factor in a computed size at {ctx.where()}")
    return False


def _repeated_sizes(ctx: RuleContext, raw: Sequence[Any]) -> set[int]:
    """Positions of ``raw`` whose value is on two axes: with 4 heads of 4 no attribute can say
    which axis it shapes (both pin). With one attribute of that value, timm's ``reshape(B, N, 3,
    num_heads, head_dim)`` of 3 heads, the attribute is the later one (the q/k/v split comes
    first); a wrong guess cannot pass silently: that axis is then pinned by the ``unbind`` of q,
    k and v, or ``prune`` finds it did not shrink."""
    twice = {j for j, s in enumerate(raw) if isinstance(s, int) and s > 1 and list(raw).count(s) > 1}
    known = _told_apart(ctx, raw, twice)
    rest, read = twice - known, {raw[j] for j in known}  # a plain size beside a read of its value: not that read
    return rest - {max(j for j in rest if raw[j] == s) for s in {raw[j] for j in rest} - read if _one_attribute(ctx, s)}


def _told_apart(ctx: RuleContext, raw: Sequence[Any], twice: set[int]) -> set[int]:
    """Positions among ``twice`` whose size the code read from a module's attribute of that
    value that no other position was read from (``unflatten(-1, (self.num_heads,
    self.head_dim))`` with 4 heads of 4: each 4 says which attribute it is)."""
    owns = [isinstance(s, ReadInt) and not s.derived and getattr(ctx.modules.get(s.site[0]), s.site[1], None) == s for s in raw]
    sites = [s.site if own else None for s, own in zip(raw, owns)]
    return {j for j in twice if sites[j] is not None and sum(raw[k] == raw[j] and sites[k] == sites[j] for k in twice) == 1}


def _merged_heads(ctx: RuleContext, j: int, value: int, groups: list[tuple[list[int], list[int]]]) -> bool:
    """``o.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)``: a literal output size
    that merges a head axis and a head-size axis and equals a head count of the running layer
    times its head size (``sizes.product_sources``) is computed from the count, which surgery
    rewrites: it follows the heads. The count is recorded on the head axis."""
    ga = next((a for a, b in groups if b == [j]), None)
    src = ctx.axes(ctx.input)
    if ga is None or src is None:
        return False
    big = [d for d in ga if ctx.graph.size(src[d]) > 1]
    sources, unit = product_sources(ctx.node, value, ctx.modules)
    if not sources or len(big) != 2 or [ctx.graph.size(src[d]) for d in big] != [value // unit, unit]:
        return False
    if not made_from(ctx.node, value, sources):
        return False
    heads = src[big[0]]
    ctx.graph.size_refs.setdefault(heads, set()).update(sources)
    for source in sources:
        ctx.graph.size_values[source] = value // unit
    return True


def _count_plus_slots(ctx: RuleContext, j: int, value: int) -> bool:
    """Under ``torch.export``: is axis ``j`` of ``value`` slots a head count of the running layer
    plus a key and a value slot (Falcon's multi-query ``view(b, s, num_heads + 2, head_dim)``),
    read as such: a leading slice of it and a pick of fixed positions on it use the view? Then
    the axis may shrink: the slice of its heads records the count (``prune`` checks it shrank),
    the picks pin the other slots, and a literal that did not follow the count cannot hold the
    pruned rows (the pruned model does not run). A size that merely equals a count plus one or
    two (Swin's window of 4 beside 2 heads) stays a constant."""
    if not ctx.exported or not count_plus_sources(ctx.node, value, ctx.modules):
        return False
    nd = ctx.out_value.ndim
    users = _past_whole_slices(ctx.node)
    sliced = any(
        u.target is torch.ops.aten.slice.Tensor and len(u.args) > 2 and u.args[1] % nd == j and u.args[2] in (0, None)
        for u in users
    )
    picked = any(
        u.target is torch.ops.aten.index.Tensor
        and len(u.args) > 1
        and len(u.args[1]) == j + 1
        and all(i is None for i in u.args[1][:j])
        and isinstance(u.args[1][j], fx.Node)
        for u in users
    )
    return sliced and picked


def _past_whole_slices(node: fx.Node) -> list[fx.Node]:
    """The users of ``node``, looking through slices that keep a whole axis (``x[:, :, :, :-2]``
    is exported as one slice per axis)."""
    found = []
    for u in node.users:
        value, out = node.meta.get(META), u.meta.get(META)
        whole = (
            u.target is torch.ops.aten.slice.Tensor
            and isinstance(value, Tensor)
            and isinstance(out, Tensor)
            and tuple(value.shape) == tuple(out.shape)
        )
        found += _past_whole_slices(u) if whole else [u]
    return found


def _inferred_group_count(ctx: RuleContext, raw: list, out: list) -> None:
    """Falcon's ``view(b, s, -1, num_heads // num_kv_heads + 2, head_dim)``: in a view that
    splits a fused projection into heads plus key and value slots, the inferred ``-1`` axis is
    the key/value group count; a count attribute of the running layer equal to it is recorded
    there (surgery lowers it when whole groups go)."""
    slots = [j for j, s in enumerate(raw) if isinstance(s, int) and s > 2 and _count_plus_slots(ctx, j, s)]
    if not ctx.exported or not slots or -1 not in raw:
        return
    j = list(raw).index(-1)
    size = ctx.graph.size(out[j])
    path = module_stack(ctx.node)[-1]
    layer = ctx.modules.get(path)
    hits = [a for a in COUNT_ATTRIBUTES if layer is not None and getattr(layer, a, None) == size]
    if len(hits) == 1 and size > 1:
        source = SizeSource(path, hits[0])
        ctx.graph.size_refs.setdefault(out[j], set()).add(source)
        ctx.graph.size_values[source] = size


def _one_attribute(ctx: RuleContext, value: int) -> bool:
    """Does ``value`` equal exactly one size attribute (by name) of the layer or model?"""
    return len({src.attr for src in size_sources(ctx.node, value, ctx.modules)}) == 1


@register_function_rule(torch.unflatten)
def unflatten(ctx: RuleContext) -> None:
    nd = ctx.meta(ctx.input).ndim
    raw = ctx.arg("sizes")
    out = ctx.out()
    dim = ctx.arg("dim") % nd
    read = isinstance(raw, fx.Node)  # sizes read off a tensor (``x.shape[2:]``) follow the model
    sizes = list(ctx.meta(raw)) if read else list(raw)
    k = len(sizes)
    twice = set() if read else _repeated_sizes(ctx, sizes)  # ``unflatten(-1, (4, 4))``: 4 heads of 4
    # numbers the code wrote beside the reads (``(12,) + x.shape[2:]``) are literals all the same
    written = (size_elements(ctx, raw) or [None] * k) if read else sizes
    literal = [False] * dim + [
        (j in twice or ctx.constant_size(out[dim + j], w)) if isinstance(w, int) else False for j, w in enumerate(written)
    ]
    literal += [False] * (nd - dim - 1)
    groups = [([d], [d]) for d in range(dim)] + [([dim], list(range(dim, dim + k)))]
    groups += [([d], [d + k - 1]) for d in range(dim + 1, nd)]
    reshape_axes(ctx, literal=literal, groups=groups)
    link_read_lengths(ctx, raw, out[dim : dim + k])  # ``x.shape[2:]``, or ``(h.size(1), -1)`` as view's


def _factor_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Split two shapes into runs of dims with equal products: ([dims of a], [dims of b])."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        ga, gb = ([i], a[i]) if i < len(a) else ([], 1), ([j], b[j]) if j < len(b) else ([], 1)
        (da, pa), (db, pb) = ga, gb
        i, j = i + len(da), j + len(db)
        while pa != pb and (i < len(a) or j < len(b)):
            if (pa < pb and i < len(a)) or j >= len(b):
                da.append(i)
                pa *= a[i]
                i += 1
            else:
                db.append(j)
                pb *= b[j]
                j += 1
        groups.append((da, db))
    return groups


def reshape_axes(
    ctx: RuleContext, literal: list[bool], groups: list[tuple[list[int], list[int]]], src: list[AxisId] | None = None
) -> None:
    """Couple input and output axes of a reshape, group by group.

    In each group one non-unit input axis carries the channels into the outermost non-unit
    output axis whose size is not a literal of the call: the outermost input axis that is not
    already pinned (channels-last layouts carry the channel axis, not a spatial one). The
    other axes of the group are pinned (head_dim, spatial or literal group counts). Output
    axes given as literal sizes are pinned: the call would not follow a pruned size. ``src``: the
    input's axes where the input is not the call's ``input`` (``cat`` of an ``unbind``'s parts).
    """
    src, out = ctx.axes(ctx.input) if src is None else src, ctx.out()
    if src is None:
        return
    where = ctx.where()
    in_shape = [ctx.graph.size(a) for a in src]
    out_shape = [ctx.graph.size(a) for a in out]
    for j, lit in enumerate(literal):
        if lit and j < len(out):
            ctx.pin([out[j]], f"reshape with constant size at {where}")
    for ga, gb in groups:
        big_a = [d for d in ga if in_shape[d] > 1]
        big_b = [d for d in gb if out_shape[d] > 1]
        if not big_a or not big_b:
            continue
        carriers_b = [d for d in big_b if not (d < len(literal) and literal[d])]
        if not carriers_b:
            ctx.pin([src[d] for d in big_a], f"reshape with constant size at {where}")
            continue
        free_a = [d for d in big_a if not ctx.graph.pinned(src[d])] if len(big_a) > 1 else big_a
        ca = _merge_carrier(ctx.graph, src, free_a or big_a) if len(big_b) == 1 else (free_a or big_a)[0]
        cb, remerged = (carriers_b[0], False)
        if len(big_a) == 1:
            cb, remerged = _split_carrier(ctx.graph, src[ca], out_shape, big_b, carriers_b)
        if len(big_b) == 1 and ca != big_a[0]:  # ``(B, H) -> B * H``: the split back finds H again
            ctx.graph.merged[out[cb]] = (tuple(in_shape[d] for d in big_a), big_a.index(ca))
        inner = len(big_a) == 1 and len(big_b) > 1 and cb == big_b[-1] != big_b[0] and not remerged
        unit_carrier(ctx, out[cb], split=inner)
        if not record_factor(ctx, src, out, (ga, ca, big_a), (gb, cb, big_b)):
            ctx.pin([src[d] for d in big_a if d != ca], f"reshape factor at {where}")
            ctx.pin([out[d] for d in big_b if d != cb], f"reshape factor at {where}")
        if len(big_a) == 1 and len(big_b) == 1:
            ctx.graph.link(src[ca], out[cb])
            continue
        ia, ib = _digit_pairs([in_shape[d] for d in ga], ga.index(ca), [out_shape[d] for d in gb], gb.index(cb))
        copies = _merges_copies(ctx, src, ca, big_a, big_b)
        if copies:
            ctx.graph.repeat_factors[out[cb]] = [src[d] for d in big_a[1:]]
        ctx.graph.link(src[ca], out[cb], ia, ib, kind="repeat" if copies else "block")


def _merge_carrier(graph: AxisGraph, src: list[AxisId], candidates: list[int]) -> int:
    """The input axis that carries a merge's channels: the first candidate, unless nothing
    linked to it so far is a parameter axis or pinned (a batch axis) and a later one reaches a
    parameter (``q.reshape(B * H, L, d)`` before ``bmm``: the heads, not the batch, carry; the
    other factors pin). Either choice is exact (the others pin); this one keeps the channels."""
    if len(candidates) > 1 and _bare(graph, src[candidates[0]]):
        return next((d for d in candidates[1:] if not _bare(graph, src[d], pins=False)), candidates[0])
    return candidates[0]


def _split_carrier(
    graph: AxisGraph, whole: AxisId, out_shape: list[int], big_b: list[int], carriers: list[int]
) -> tuple[int, bool]:
    """The output axis that carries a split's channels, and whether ``whole`` (through identity
    links) was merged from the same factors with that carrier (``_merge_carrier``: the heads of
    ``view(B, H, L, L)`` after ``bmm``, whatever a head size equals); else the first carrier."""
    if graph.merged and len(big_b) > 1:
        seen, todo = {whole}, [whole]
        while todo:
            a = todo.pop()
            found = graph.merged.get(a)
            if found is not None and list(found[0]) == [out_shape[d] for d in big_b] and big_b[found[1]] in carriers:
                return big_b[found[1]], True
            for b, ds in graph.adj[a].items():
                if b not in seen and any(d["ia"] is None for d in ds):
                    seen.add(b)
                    todo.append(b)
    return carriers[0], False


def _bare(graph: AxisGraph, axis: AxisId, pins: bool = True) -> bool:
    """Is nothing linked to ``axis`` (by any path) so far a parameter axis (or, with ``pins``,
    pinned)?"""
    seen, todo = {axis}, [axis]
    while todo:
        a = todo.pop()
        node = graph.nodes[a]
        if a[0] == "p" or node.get("producer") or (pins and node["pins"]):
            return False
        for b in graph.adj[a]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return True


def _merges_copies(ctx: RuleContext, src: list, ca: int, big_a: list[int], big_b: list[int]) -> bool:
    """``expand(b, Hk, r, s, d).reshape(b, Hk * r, s, d)`` (eager GQA's ``repeat_kv``): the
    output's index ``i`` is a copy of the carrier's ``i // r`` when every inner factor was
    broadcast by the ``expand`` just before (fresh: linked to nothing)."""
    producer = ctx.input.target if hasattr(ctx.input, "target") else None
    return producer in _EXPANDS and len(big_b) == 1 and ca == big_a[0] and all(not ctx.graph.adj[src[d]] for d in big_a[1:])


_EXPANDS = (torch.ops.aten.expand.default, "expand", torch.broadcast_to)


def _digit_pairs(sa: list[int], ka: int, sb: list[int], kb: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (digit ka of flat index in sa, digit kb of the same index in sb) pairs."""
    n = math.prod(sa)
    flat = np.arange(n, dtype=np.int64)
    da = flat // math.prod(sa[ka + 1 :]) % sa[ka]
    db = flat // math.prod(sb[kb + 1 :]) % sb[kb]
    pairs = np.unique(da * sb[kb] + db)
    return pairs // sb[kb], pairs % sb[kb]
