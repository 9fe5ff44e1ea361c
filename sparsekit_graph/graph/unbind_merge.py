"""``torch.cat(t.unbind(d), c)``: the parts of an unbind joined again, a merge of two axes.

Concatenating the parts of ``t.unbind(d)`` (the tuple itself), in order, along axis ``c`` of the parts is
``t.movedim(d, c).flatten(c, c + 1)``: output index ``h * n + i`` of the joined axis holds index
``h`` of the unbound axis and ``i`` of the parts' axis (attention heads merged by
``torch.cat(o.unbind(1), -1)`` as ``o.transpose(1, 2).reshape(b, l, -1)`` merges them). Where the
parts go nowhere else, ``unbind`` leaves its axis to that ``cat``, and ``cat`` links the axes as
the reshape rule does for that merge, so both spellings give one plan.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .context import RuleContext
from .normalize import normalize
from .ops_reshape import reshape_axes

__all__ = ["joined_unbind", "merge_unbound", "rejoined"]


def joined_unbind(tensors: object) -> fx.Node | None:
    """The ``unbind`` node ``tensors`` (a ``cat``'s argument) is, or None. Only the tuple itself:
    parts taken one by one (``[t for t in o.unbind(1)]``, ``list(...)``) come from a Python loop
    over the unbound axis, which the pruned model would run fewer times."""
    return tensors if isinstance(tensors, fx.Node) and _is_unbind(tensors) else None


def rejoined(u: fx.Node) -> bool:
    """Does all of ``u`` go to one ``cat`` that joins its parts in order (and nowhere else)?"""
    users = list(u.users)
    return len(users) == 1 and _joins(users[0], u)


def merge_unbound(ctx: RuleContext, u: fx.Node, dim: int) -> None:
    """Link ``cat``'s output to the input of ``unbind`` ``u`` as a merge of the unbound axis
    (outer) with axis ``dim`` of the parts (inner)."""
    src = ctx.axes(normalize(u).args.get("input"))
    out = ctx.out()
    if src is None:
        return
    d = normalize(u).args.get("dim", 0) % len(src)
    parts = src[:d] + src[d + 1 :]
    virtual = parts[:dim] + [src[d], parts[dim]] + parts[dim + 1 :]
    groups = [([j], [j]) for j in range(dim)] + [([dim, dim + 1], [dim])]
    groups += [([j + 1], [j]) for j in range(dim + 1, len(out))]
    reshape_axes(ctx, literal=[False] * len(out), groups=groups, src=virtual)


def _joins(user: fx.Node, u: fx.Node) -> bool:
    if user.op not in ("call_function", "call_method") or normalize(user).op is not torch.cat:
        return False
    return joined_unbind(normalize(user).args.get("tensors")) is u


def _is_unbind(n: fx.Node) -> bool:
    return n.op in ("call_function", "call_method") and normalize(n).op is torch.unbind
