"""Rules for ops that relate the entries of an axis: local response norm, renorm, cdist, cosine
similarity and pairwise distance, diag_embed.

What each keeps exact when channels are removed:

- ``local_response_norm`` divides channel ``c`` by a power of the mean of ``a**2`` over a window
  of ``size`` neighbouring channels (zero-padded at both ends). Removing a channel moves the
  window of every channel after it onto other neighbours, so with ``size > 1`` no channel of that
  axis can be removed exactly, zero or not: the channel axis is pinned. With ``size == 1`` each
  channel sees only itself and the op is elementwise. Every other axis passes through.
- ``renorm(p, dim, maxnorm)`` rescales each slice along ``dim`` by its own p-norm over the other
  axes: slices along ``dim`` are independent (exact), and on another axis a removed channel whose
  values are zero adds nothing to any norm, as for ``F.normalize``.
- ``cdist(x1, x2, p)`` sums ``|x1 - x2|**p`` over the feature axis both share (p = inf: a max of
  them): the two feature axes move together, and a removed channel changes no distance where it
  is zero in both operands. Row axes and broadcast batch axes pass to the output.
- ``torch._weight_norm(v, g, dim)`` (``nn.utils.weight_norm`` and its parametrization: WavLM's
  and SEW's positional conv) is ``v * g / ||v||`` with one 2-norm per slice along ``dim`` over
  every other axis (over all of ``v`` for ``dim=-1``). Along ``dim`` slices are independent, but a
  zeroed slice divides by a zero norm: prunable, not zero-invariant; ``g`` follows that axis. On
  any other axis a removed channel whose values are zero adds nothing to any norm: exact.
- ``cosine_similarity(x1, x2, dim)`` is ``x1 . x2 / max(||x1|| ||x2||, eps)`` along ``dim``: a
  removed channel zero in both adds nothing to the product or the norms (exact).
  ``pairwise_distance`` is ``||x1 - x2 + eps||_p`` over the last axis: ``eps`` is added to every
  channel, so a removed one still counts (prunable, not zero-invariant).
- ``diag_embed(t)`` puts the last axis of ``t`` on the diagonal of two new axes: both follow it
  (row ``i`` and column ``i`` hold channel ``i`` alone, zeros elsewhere). An offset diagonal
  makes the new axes one longer per step: pinned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .axes import AxisId
from .context import RuleContext
from .ops_tensor import pointwise, reduction_mix
from .rules import register_function_rule, register_module_rule
from .zeros import zero_breaker

__all__: list[str] = []


@register_module_rule(nn.LocalResponseNorm)
@register_function_rule(F.local_response_norm)
def local_response_norm(ctx: RuleContext) -> None:
    """Elementwise on every axis but the channels (axis 1), which a window wider than one mixes."""
    pointwise(ctx)
    layer = ctx.module if isinstance(ctx.module, nn.LocalResponseNorm) else None
    size, k, beta = (
        (layer.size, layer.k, layer.beta) if layer is not None else (ctx.arg("size"), ctx.arg("k", 1.0), ctx.arg("beta", 0.75))
    )
    if size != 1:
        ctx.pin([ctx.out()[1]], f"cross-channel window of {size} at {ctx.where()}")
        return
    divisor = torch.tensor(float(k), dtype=ctx.meta(ctx.input).dtype) ** float(beta)  # a removed channel: 0 / k ** beta
    if not (bool(divisor.isfinite()) and bool(divisor != 0)):
        ctx.mix([ctx.out()[1]], f"a removed channel divides by k ** beta = {float(divisor)} at {ctx.where()}")


@register_function_rule(torch.renorm)
def renorm(ctx: RuleContext) -> None:
    """Slices along ``dim`` rescaled by their own norm: a norm over every other axis."""
    pointwise(ctx)
    out = ctx.out()
    dim = ctx.arg("dim") % len(out)
    for d in range(len(out)):
        reason = None if d == dim else reduction_mix(ctx, d)
        if reason:
            ctx.mix([out[d]], reason)


@register_function_rule(torch.cdist)
def cdist(ctx: RuleContext) -> None:
    """(..., P, M) and (..., R, M) -> (..., P, R): the feature axes ``M`` are contracted."""
    ctx.read_all()
    x1, x2, out = ctx.axes(ctx.input), ctx.axes(ctx.arg("x2")), ctx.out()
    if x1 is None or x2 is None:
        ctx.pin_everything(f"cdist of a non-tensor at {ctx.where()}")
        return
    ctx.graph.link(x1[-1], x2[-1])
    ctx.same([x1[-2], x2[-2]], out[-2:])
    ctx.same(reversed(x1[:-2]), reversed(out[:-2]))
    ctx.same(reversed(x2[:-2]), reversed(out[:-2]))
    for x, axes in ((ctx.input, x1), (ctx.arg("x2"), x2)):
        breaker = zero_breaker(x, len(axes) - 1, ctx.modules)
        if breaker is not None:
            ctx.mix([axes[-1]], f"distance over an axis at {ctx.where()} of values not zero for removed channels (at {breaker})")


@register_module_rule(nn.CosineSimilarity, nn.PairwiseDistance)
@register_function_rule(F.cosine_similarity, F.pairwise_distance)
def similarity(ctx: RuleContext) -> None:
    """Two operands broadcast together and contracted along ``dim`` (the last axis for a
    distance): their axes there link; every other axis passes to the output."""
    ctx.read_all()
    layer = ctx.module
    operands = [ctx.input, ctx.arg("x2")] if layer is None else list(ctx.node.args[:2])
    axes = [ctx.axes(x) for x in operands]
    out = ctx.out()
    if any(a is None for a in axes):
        ctx.pin_everything(f"{ctx.where()} of a non-tensor")
        return
    distance = isinstance(layer, nn.PairwiseDistance) or ctx.call.op is F.pairwise_distance
    kept = distance and bool(layer.keepdim if isinstance(layer, nn.PairwiseDistance) else ctx.arg("keepdim", False))
    nd = len(out) + (not kept)
    dim = (-1 if distance else layer.dim if isinstance(layer, nn.CosineSimilarity) else ctx.arg("dim", 1)) % nd
    full: list[AxisId | None] = [*out[:dim], None, *out[dim + kept :]]  # the contracted axis: gone, or kept as 1
    for x, a in zip(operands, axes):
        lead = nd - len(a)
        ctx.same([b for k, b in enumerate(a) if k + lead != dim], [o for o in full[lead:] if o is not None])
        if len(a) + (dim - nd) >= 0:  # it has the contracted axis
            ctx.same([a[dim - nd]], [axes[0][dim - nd]] if len(axes[0]) >= nd - dim else [])
            breaker = zero_breaker(x, len(a) + dim - nd, ctx.modules)
            if breaker is not None:
                ctx.mix([a[dim - nd]], f"{ctx.where()} over channels not zero where removed (at {breaker})")
            if distance:  # ``||x1 - x2 + eps||``: every channel adds eps
                ctx.mix([a[dim - nd]], f"{ctx.where()} adds eps to every channel's difference")


@register_function_rule(torch.diag_embed)
def diag_embed(ctx: RuleContext) -> None:
    """The last axis of the input becomes both diagonal axes (``dim1``, ``dim2``) of the output."""
    ctx.read_all()
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    nd = len(out)
    d1, d2 = ctx.arg("dim1", -2) % nd, ctx.arg("dim2", -1) % nd
    rest = [a for d, a in enumerate(out) if d not in (d1, d2)]
    ctx.same(src[:-1], rest)
    if ctx.arg("offset", 0) != 0:
        ctx.pin([src[-1], out[d1], out[d2]], f"diagonal at an offset at {ctx.where()}")
        return
    ctx.same([src[-1], src[-1]], [out[d1], out[d2]])


@register_function_rule(torch._weight_norm)
def weight_norm(ctx: RuleContext) -> None:
    """``v * g / norm_except_dim(v, 2, dim)``: elementwise, with a norm over every axis but ``dim``."""
    pointwise(ctx)
    v, out = ctx.arg("v"), ctx.out()
    dim = ctx.arg("dim", 0)
    kept = None if dim == -1 else dim % len(out)  # -1: one norm over the whole tensor
    for d, axis in enumerate(out):
        if d == kept:
            ctx.mix([axis], f"weight norm along axis {d} at {ctx.where()}: a zeroed slice divides by a zero norm")
            continue
        breaker = zero_breaker(v, d, ctx.modules)
        if breaker is not None:
            ctx.mix([axis], f"weight norm over an axis at {ctx.where()} of values not zero for removed channels (at {breaker})")
