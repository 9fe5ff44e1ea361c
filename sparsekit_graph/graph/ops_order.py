"""Rules for ops that read the order of positions along one axis.

``sort`` / ``argsort`` / ``msort`` rearrange an axis by value, ``tril`` / ``triu`` keep entries
by position, ``rot90`` turns two axes, ``diff`` subtracts neighbours: the positions along
those axes mean something after the op, so those axes pin (a removed channel would move the
others), and every other axis passes through. Order statistics (``kthvalue``, ``mode``,
``nanmedian``, ``quantile``, ``aminmax``) reduce their axis like ``median`` does: prunable,
never zero-invariant there.
"""

from __future__ import annotations

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


@register_function_rule(torch.kthvalue, torch.mode, torch.nanmedian, torch.aminmax)
def order_statistic(ctx: RuleContext) -> None:
    """(values, indices) or (min, max) reduced over ``dim`` (all axes without one): as ``median``."""
    reduce(ctx)


@register_function_rule(torch.quantile, torch.nanquantile)
def quantile(ctx: RuleContext) -> None:
    """A scalar ``q`` reduces ``dim`` like ``median``; a tensor of ``q`` prepends its own axes."""
    q = ctx.arg("q")
    if isinstance(q, (int, float)) or (isinstance(ctx.meta(q), Tensor) and ctx.meta(q).ndim == 0):
        reduce(ctx)
        return
    ctx.pin_everything(f"quantiles of a tensor of levels at {ctx.where()}")
