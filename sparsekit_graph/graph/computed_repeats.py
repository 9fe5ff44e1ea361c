"""Repeats computed from two lengths: ``k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)``
(GQA written by hand).

The number of copies is the length of another axis (``q``'s heads) over the length of the
repeated axis itself. Read as its traced value ``r`` it is exact where that other axis is as
long as the output axis and keeps its channels: the rule links the two as one channel space
(as attention links ``q``'s heads to the repeated ``k``'s anyway), so whatever pruning leaves,
the other axis holds ``r`` copies' worth of the repeated one and the division gives what the
link assumed (``gqa="kv_groups"``: ``r``; ``"query_heads"``: the new ratio, which the code
computes as the literal spelling cannot). The divisor may be read off another axis as long as
the repeated one (``v`` repeated by ``q.shape[1] // k.shape[1]``): it is linked to it as well.
"""

from __future__ import annotations

import operator
from itertools import permutations

import torch.fx as fx

from .axes import AxisId
from .context import RuleContext
from .meta import ReadInt
from .size_args import read_axis
from .sizes import SizeSource

__all__ = ["counted_copies", "follows_counts", "ratio_repeats", "record_copies", "uncounted"]


def ratio_repeats(ctx: RuleContext, repeats: object, repeated: AxisId, out: AxisId) -> int | None:
    """``r`` where ``repeats`` is ``a // n``, ``a`` the length of an axis ``r`` times as long as
    ``repeated`` and ``n`` the length of one as long as it (itself, or ``k``'s heads repeating
    ``v``); then ``a``'s axis is linked to ``out`` (the output's repeated axis), ``n``'s to
    ``repeated``, and the rule follows the number. None otherwise."""
    whole = read_axis(ctx, repeats)  # ``k.repeat_interleave(q.shape[1], 1)`` of one KV head: ``a // 1``
    if whole is not None and ctx.graph.size(repeated) == 1 and ctx.graph.size(whole) == ctx.graph.size(out):
        ctx.graph.link(whole, out)
        ctx.model_length(repeats)
        return ctx.graph.size(out)
    if not (isinstance(repeats, fx.Node) and repeats.op == "call_function" and repeats.target is operator.floordiv):
        return None
    if len(repeats.args) != 2 or repeats.kwargs:
        return None
    top, bottom = (read_axis(ctx, a) for a in repeats.args)
    r = ctx.meta(repeats)
    if top is None or bottom is None or not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return None
    length = ctx.graph.size(repeated)
    if ctx.graph.size(bottom) != length or ctx.graph.size(top) != r * length or ctx.graph.size(out) != r * length:
        return None  # not a whole number of copies of an axis as long
    for a, b in ((bottom, repeated), (top, out)):
        if a != b:
            ctx.graph.link(a, b)  # one channel space each: both lengths follow what pruning leaves
    ctx.model_length(repeats)
    return r


def follows_counts(ctx: RuleContext, r: object) -> bool:
    """Is the count ``r`` as the call got it computed from lengths (``ratio_repeats``) or a ratio
    of two size attributes each of which counts an axis (``self.num_heads //
    self.num_kv_heads``: surgery rewrites the counts)? A literal is not, nor an attribute holding
    the ratio itself (``self.num_key_value_groups``: nothing rewrites it), nor another formula
    of two attributes (``self.head_dim // 2 * self.num_kv_heads``)."""
    if not isinstance(r, int):
        return True
    return isinstance(r, ReadInt) and r.derived and counted_copies(ctx, r) is not None


def counted_copies(ctx: RuleContext, r: object) -> tuple[SizeSource, int] | None:
    """The attribute a number of copies ``r`` is counted by, with its value: ``self.num_heads``
    read as it is, or the numerator of ``self.num_heads // self.num_kv_heads`` (two attributes
    that count axes, whose values divide to ``r``). None for anything else."""
    if not isinstance(r, ReadInt):
        return None
    if not r.derived:
        return SizeSource(*r.site), int(r)
    if len(r.sites) != 2 or uncounted(ctx, r):
        return None
    for top, bottom in permutations(sorted(r.sites)):
        a, b = (getattr(ctx.modules.get(path), attr, None) for path, attr in (top, bottom))
        if isinstance(a, int) and isinstance(b, int) and b > 0 and r * b == a:
            return SizeSource(*top), a
    return None


def record_copies(ctx: RuleContext, r: object, axis: AxisId) -> bool:
    """Does ``axis``, as long as ``r`` copies, follow the counts (``counted_copies``)? Where it
    holds every copy the numerator counts (one KV head: ``num_heads // 1``), the numerator is
    recorded on it, so that surgery rewrites it with the axis's group."""
    counted = counted_copies(ctx, r)
    if counted is None:
        return False
    source, value = counted
    if value == ctx.graph.size(axis):
        ctx.graph.size_refs.setdefault(axis, set()).add(source)
        ctx.graph.size_values[source] = value
    return True


def uncounted(ctx: RuleContext, r: object, *, partly: bool = False) -> str:
    """The first attribute a count made from several (``self.num_heads // self.num_kv_heads``)
    was computed from that no rule so far counted an axis by (``q.view(b, n, -1, d)``), named;
    empty where none. The axes the others count pin as well (``computed_sizes``). ``partly``:
    empty also where no rule counted any of them (surgery rewrites none: the count stays)."""
    if not (isinstance(r, ReadInt) and len(r.sites) > 1):
        return ""
    counted = {(s.owner, s.attr) for refs in ctx.graph.size_refs.values() for s in refs}
    if partly and not r.sites & counted:
        return ""
    return next((f"{path or 'model'}.{attr}" for path, attr in sorted(r.sites - counted)), "")
