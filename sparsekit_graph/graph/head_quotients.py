"""Head sizes computed as a quotient of a length by the head count, in the very view that splits
the heads off (``t.view(B, N, self.num_heads, C // self.num_heads)``)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from .attribute_sizes import PlainInt
from .context import RuleContext
from .meta import FOLLOWED_BY, ReadInt
from .normalize import normalize
from .size_args import read_axis

__all__ = ["head_quotients"]


def head_quotients(ctx: RuleContext, raw: Sequence[Any], groups: list[tuple[list[int], list[int]]]) -> set[int]:
    """``t.view(B, N, self.num_heads, C // self.num_heads)`` with ``C`` the length of the very
    axis split into heads (or of one as long, which it then links: diffusers' ``head_dim =
    key.shape[-1] // attn.heads`` for the query too): whatever is pruned, heads or head size,
    the quotient is the head size, as ``-1`` would be. The positions of such quotients (the
    length they read is followed: ``length_uses``)."""
    src = ctx.axes(ctx.input) or []
    found: set[int] = set()
    for ga, gb in groups:
        if len(ga) != 1 or len(gb) != 2 or ga[0] >= len(src) or not isinstance(q := raw[gb[1]], fx.Node):
            continue
        call = normalize(q)
        count, read = call.args.get("other"), read_axis(ctx, call.args.get("input"))
        if call.op is not operator.floordiv or read is None or not _same_count(raw[gb[0]], count):
            continue
        axis = src[ga[0]]
        if ctx.graph.size(read) != ctx.graph.size(axis):
            continue
        if read != axis:
            ctx.graph.link(read, axis)
        ctx.model_length(q)
        q.meta.setdefault(FOLLOWED_BY, set()).add(ctx.node)
        found.add(gb[1])
    return found


def _same_count(a: Any, b: Any) -> bool:
    """Are ``a`` and ``b`` one read of one count attribute (the heads of a view, its divisor)?"""
    if isinstance(a, ReadInt) and isinstance(b, ReadInt):
        return not a.derived and not b.derived and a.site == b.site and int(a) == int(b) > 1
    return isinstance(a, PlainInt) and isinstance(b, PlainInt) and a.formula[:2] == b.formula[:2] and int(a) == int(b) > 1
