"""Rules for ops that read the order of positions along one axis.

``sort`` / ``argsort`` / ``msort`` rearrange an axis by value, ``tril`` / ``triu`` keep entries
by position, ``rot90`` turns two axes, ``diff`` subtracts neighbours: the positions along
those axes mean something after the op, so those axes pin (a removed channel would move the
others), and every other axis passes through. Order statistics (``kthvalue``, ``mode``,
``nanmedian``, ``quantile``, ``aminmax``) reduce their axis like ``median`` does: prunable,
never zero-invariant there; ``kthvalue(k)`` keeps at least ``k`` values of it. A variance or
standard deviation with a correction ``c`` keeps more than ``c`` values (else it is inf or nan).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .context import RuleContext
from .ops_tensor import reduce
from .rules import register_function_rule

__all__: list[str] = []


def _along(ctx: RuleContext, dims: Sequence[int] | None, label: str) -> None:
    """Outputs shaped like the input; axes ``dims`` pin on both sides, the others pass."""
    src = ctx.axes(ctx.input)
    if src is None or dims is None:
        ctx.pin_everything(f"{label} over unreadable dims at {ctx.where()}")
        return
    ctx.read_all()
    nd = len(src)
    pinned = {d % max(nd, 1) for d in dims}
    for out in ctx.outputs():
        if len(out) != nd:
            ctx.pin_everything(f"{label} with an unexpected output at {ctx.where()}")
            return
        keep = [d for d in range(nd) if d not in pinned]
        ctx.same([src[d] for d in keep], [out[d] for d in keep])
        ctx.pin([out[d] for d in pinned], f"{label} along axis {sorted(pinned)} at {ctx.where()}")
    ctx.pin([src[d] for d in pinned], f"{label} along axis {sorted(pinned)} at {ctx.where()}")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@register_function_rule(torch.sort, torch.argsort)
def sort(ctx: RuleContext) -> None:
    dim = _int(ctx.arg("dim", -1))
    _along(ctx, None if dim is None else [dim], "sorting")


@register_function_rule(torch.msort)
def msort(ctx: RuleContext) -> None:
    _along(ctx, [0], "sorting")


@register_function_rule(torch.tril, torch.triu)
def triangle(ctx: RuleContext) -> None:
    """Entries kept by their (row, column) position: the last two axes pin."""
    _along(ctx, [-2, -1], "triangular mask")


@register_function_rule(torch.rot90)
def rot90(ctx: RuleContext) -> None:
    dims = ctx.arg("dims", [0, 1])
    ok = isinstance(dims, (tuple, list)) and len(dims) == 2 and all(_int(d) is not None for d in dims)
    ctx.arg("k")
    _along(ctx, list(dims) if ok else None, "rotation")


@register_function_rule(torch.diff)
def diff(ctx: RuleContext) -> None:
    """``x[..., 1:] - x[..., :-1]`` along ``dim`` (one axis shorter): it pins."""
    src, out = ctx.axes(ctx.input), ctx.out()
    dim = _int(ctx.arg("dim", -1))
    if src is None or dim is None or ctx.arg("prepend") is not None or ctx.arg("append") is not None:
        ctx.pin_everything(f"diff with unreadable arguments at {ctx.where()}")
        return
    ctx.arg("n")
    d = dim % len(src)
    keep = [i for i in range(len(src)) if i != d]
    ctx.same([src[i] for i in keep], [out[i] for i in keep])
    ctx.pin([src[d], out[d]], f"difference of neighbours along axis {d} at {ctx.where()}")


@register_function_rule(torch.mode, torch.nanmedian, torch.aminmax)
def order_statistic(ctx: RuleContext) -> None:
    """(values, indices) or (min, max) reduced over ``dim`` (all axes without one): as ``median``."""
    reduce(ctx)


@register_function_rule(torch.kthvalue)
def kthvalue(ctx: RuleContext) -> None:
    """``x.kthvalue(k, dim)``: reduced as ``median``; the ``k``-th smallest needs ``k`` values
    along ``dim`` (the group keeps at least that many: ``min_keep``)."""
    reduce(ctx)
    src = ctx.axes(ctx.input)
    dim = _int(ctx.arg("dim", -1))
    if src and dim is not None:
        ctx.needs(src[dim % len(src)], "k", "k-th value")


@register_function_rule(torch.quantile, torch.nanquantile)
def quantile(ctx: RuleContext) -> None:
    """A scalar ``q`` reduces ``dim`` like ``median``; a tensor of ``q`` prepends its own axes."""
    q = ctx.arg("q")
    if isinstance(q, (int, float)) or (isinstance(ctx.meta(q), Tensor) and ctx.meta(q).ndim == 0):
        reduce(ctx)
        return
    ctx.pin_everything(f"quantiles of a tensor of levels at {ctx.where()}")


@register_function_rule(torch.var, torch.std, torch.var_mean, torch.std_mean)
def spread(ctx: RuleContext) -> None:
    """``x.var(dim, correction=c)`` (``unbiased``: ``c`` = 1): reduced as ``median``; it divides by
    ``n - c`` for the ``n`` values reduced, so each reduced axis keeps enough of them that
    ``n > c`` at the other reduced axes' sizes (``min_keep``)."""
    reduce(ctx)
    src = ctx.axes(ctx.input)
    c = ctx.arg("correction")
    c = (1 if ctx.arg("unbiased", True) else 0) if c is None else c
    dim = ctx.arg("dim")
    dims = range(len(src or ())) if dim is None or dim == [] or dim == () else dim if isinstance(dim, (list, tuple)) else [dim]
    if not src or not isinstance(c, (int, float)) or c < 1 or any(_int(d) is None for d in dims):
        return
    axes = [src[d % len(src)] for d in dims]
    for a in axes:
        others = math.prod(ctx.graph.size(b) for b in axes if b != a)
        ctx.at_least(a, math.ceil((math.floor(c) + 1) / others), f"variance with correction {c} at {ctx.where()}")
