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
from .size_args import read_axis

__all__ = ["ratio_repeats"]


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
