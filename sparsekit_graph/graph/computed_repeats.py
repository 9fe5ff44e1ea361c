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

import torch.fx as fx

from .axes import AxisId
from .context import RuleContext
from .meta import ReadInt
from .size_args import read_axis

__all__ = ["follows_counts", "ratio_repeats", "uncounted"]


def ratio_repeats(ctx: RuleContext, repeats: object, repeated: AxisId, out: AxisId) -> int | None:
    """``r`` where ``repeats`` is ``a // n``, ``a`` the length of an axis ``r`` times as long as
    ``repeated`` and ``n`` the length of one as long as it (itself, or ``k``'s heads repeating
    ``v``); then ``a``'s axis is linked to ``out`` (the output's repeated axis), ``n``'s to
    ``repeated``, and the rule follows the number. None otherwise."""
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
    """Is the count ``r`` as the call got it computed from lengths (``ratio_repeats``) or from
    size attributes each of which counts an axis (``self.num_heads // self.num_kv_heads``:
    surgery rewrites the counts)? A literal is not, nor an attribute holding the ratio itself
    (``self.num_key_value_groups``: nothing rewrites it)."""
    if not isinstance(r, int):
        return True
    return isinstance(r, ReadInt) and r.derived and len(r.sites) > 1 and not uncounted(ctx, r)


def uncounted(ctx: RuleContext, r: object) -> str:
    """The first attribute a count made from several (``self.num_heads // self.num_kv_heads``)
    was computed from that no rule so far counted an axis by (``q.view(b, n, -1, d)``), named;
    empty where none. The axes the others count pin as well (``computed_sizes``)."""
    if not (isinstance(r, ReadInt) and len(r.sites) > 1):
        return ""
    counted = {(s.owner, s.attr) for refs in ctx.graph.size_refs.values() for s in refs}
    return next((f"{path or 'model'}.{attr}" for path, attr in sorted(r.sites - counted)), "")
