"""Rules that move axes without changing lengths: permute, transpose, ``.T``, movedim, (un)squeeze."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .context import RuleContext
from .rules import register_function_rule

# -- layout --------------------------------------------------------------------------------


def _linked_permutation(ctx: RuleContext, perm: Sequence[int]) -> None:
    """Output axis ``i`` is input axis ``perm[i]`` (of a parameter: a view of it, see ``param_view``)."""
    if ctx.param_view([p % max(len(perm), 1) for p in perm]):
        return
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None or sorted(p % len(src) for p in perm) != list(range(len(src))):
        ctx.pin_everything(f"unreadable permutation {list(perm)} at {ctx.where()}")
        return
    for a, b in zip([src[p % len(src)] for p in perm], out):
        ctx.graph.link(a, b)  # a moved axis is the same axis, size 1 included (a 1-channel conv's)


@register_function_rule(torch.permute)
def permute(ctx: RuleContext) -> None:
    _linked_permutation(ctx, list(ctx.arg("dims")))


@register_function_rule(torch.transpose, torch.t, torch.Tensor.mT, torch.Tensor.mH, torch.adjoint)
def transpose(ctx: RuleContext) -> None:
    nd = ctx.meta(ctx.input).ndim
    if ctx.call.op in (torch.t, torch.Tensor.mT, torch.Tensor.mH, torch.adjoint):
        a, b = (nd - 2, nd - 1) if nd >= 2 else (0, 0)
    else:
        a, b = ctx.arg("dim0"), ctx.arg("dim1")
    perm = list(range(nd))
    if nd:
        perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
    _linked_permutation(ctx, perm)


@register_function_rule(torch.movedim, torch.moveaxis)
def movedim(ctx: RuleContext) -> None:
    """``movedim(x, source, destination)``: the permutation it describes."""
    nd = ctx.meta(ctx.input).ndim
    src, dst = ctx.arg("source"), ctx.arg("destination")
    src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
    src, dst = [s % nd for s in src], [d % nd for d in dst]
    rest = iter(d for d in range(nd) if d not in src)
    perm = [src[dst.index(i)] if i in dst else next(rest) for i in range(nd)]
    _linked_permutation(ctx, perm)


@register_function_rule(torch.Tensor.T, torch.Tensor.H)
def reverse_axes(ctx: RuleContext) -> None:
    _linked_permutation(ctx, list(range(ctx.meta(ctx.input).ndim))[::-1])


@register_function_rule(torch.unsqueeze)
def unsqueeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    d = ctx.arg("dim") % len(out)
    ctx.same(src, out[:d] + out[d + 1 :])


@register_function_rule(torch.squeeze)
def squeeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    dims = ctx.arg("dim")  # whichever dims are squeezed, they have size 1 and never couple
    ctx.same([a for a in src if ctx.graph.size(a) != 1], [a for a in out if ctx.graph.size(a) != 1])
    named = dims if isinstance(dims, (tuple, list)) else (dims,)
    if dims is not None and all(isinstance(d, int) for d in named):
        src = [src[d % len(src)] for d in named]  # else any (``squeeze()``): each one that is 1
    for a in src:  # a channel pruned to one would be squeezed too
        ctx.at_least(a, 2, f"squeeze at {ctx.where()} drops the axis where it keeps one channel")
