"""Rules for pointwise ops, reductions and spatial functions.

Rules read arguments by torch's names (see ``normalize.py``), so each covers every spelling.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .axes import AxisId
from .computed_repeats import record_copies
from .context import RuleContext
from .masked_values import finite_for_finite, stays_finite
from .meta import ReadInt, is_exported
from .normalize import canonical_op, normalize
from .pointwise_ops import POINTWISE_FUNCTIONS
from .pool_windows import one_index_windows
from .rules import register_function_rule, register_method_rule
from .singular import singular_operands, stays_nonzero
from .size_args import size_elements
from .sizes import size_sources
from .zeros import zero_breaker

# -- pointwise -----------------------------------------------------------------------------

_POINTWISE_METHODS = ["masked_fill", "fill_", "zero_", "bernoulli", "uniform_", "normal_", "float_power"]
_SAME_SHAPE_METHODS = [
    "contiguous", "clone", "detach", "to", "float", "half", "bfloat16", "double", "type", "type_as", "cpu",
    "cuda", "requires_grad_", "view_as_real_if_complex",
]  # fmt: skip


# One-operand ops that keep every axis: on a parameter they are views of it (``w.detach()``).
_VIEWS = {torch.Tensor.data} | {
    canonical_op(n)[0]
    for n in ("contiguous", "clone", "detach", "to", "float", "half", "bfloat16", "double", "cpu", "cuda", "requires_grad_")
}
_SCALINGS = {torch.mul, torch.div, operator.mul, operator.truediv, operator.floordiv, operator.imul, operator.itruediv}


@register_function_rule(*POINTWISE_FUNCTIONS, torch.Tensor.data)
@register_method_rule(*_POINTWISE_METHODS, *_SAME_SHAPE_METHODS)
def pointwise(ctx: RuleContext) -> None:
    """Broadcasting elementwise op: axes aligned from the right couple unless one has size 1.
    A whole number that multiplies or divides is noted: it may be a size used as a value."""
    if ctx.call.op in _VIEWS and ctx.param_view(list(range(getattr(ctx.out_value, "ndim", 0)))):
        return
    ctx.read_all()
    out = ctx.outputs()
    if not out:
        return
    if ctx.call.op in _SCALINGS:
        for v in ctx.call.args.values():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 2 and float(v).is_integer():
                ctx.graph.numbers.append((int(v), ctx.node))
    operands = [ctx.axes(ctx.input)] if ctx.node.op == "call_module" else ctx.tensor_axes()
    for axes in operands:
        ctx.same(reversed(axes or []), reversed(out[0]))
    for x in singular_operands(ctx.call):  # h / g: a masked channel divides by zero
        for d, a in enumerate(ctx.axes(x) or []):
            if ctx.graph.size(a) > 1 and not stays_nonzero(x, d, ctx.modules):
                ctx.mix([a], f"divisor or logarithm that vanishes with its channel at {ctx.where()}")
    if not finite_for_finite(ctx.node, ctx.out_value, ctx.modules):  # ``log1p(-exp(-h.abs()))``: -inf where h is masked
        finite_when_masked(ctx, out[0])


def finite_when_masked(ctx: RuleContext, out: list[AxisId]) -> None:
    """Mix the axes of ``out`` along which a masked channel's value is inf or NaN here: the
    next layer's zeroed columns do not remove it (``0 * inf``)."""
    for d, a in enumerate(out):
        if ctx.graph.size(a) > 1 and not stays_finite(ctx.node, d, ctx.modules):
            ctx.mix([a], f"a removed channel's value is inf or NaN at {ctx.where()}")


@register_method_rule("expand", "expand_as", "broadcast_to")
@register_function_rule(torch.broadcast_to)
def expand(ctx: RuleContext) -> None:
    """Axes kept, or new ones broadcast from size 1: fresh when their size follows the model
    (``x.size(1)``), linked to ``other``'s under ``expand_as`` (kept ones too: the result is as
    long as ``other``), pinned when it is a literal of the call. A kept axis whose
    size the call writes as a literal (``g.expand(2, 8, 6, 6)``) is pinned too, unless the
    literal is a size attribute surgery rewrites: the code would not follow a pruned size."""
    src, out = ctx.axes(ctx.input), ctx.out()
    other = ctx.axes(ctx.arg("other"))
    sizes = ctx.arg("size", ctx.arg("shape"))
    if isinstance(sizes, fx.Node):  # ``h.shape[:1] + (12,) + h.shape[2:]``: the 12 is a literal
        sizes = size_elements(ctx, sizes) or sizes
    lead = len(out) - len(src or [])
    for j, o in enumerate(out):
        i = j - lead
        if src is not None and i >= 0 and ctx.graph.size(src[i]) == ctx.graph.size(o):
            ctx.same([src[i]], [o])
            if other is not None:  # ``y.expand_as(x)``: x's length too, so x's channels as well
                ctx.same([other[j]], [o])
            if isinstance(sizes, (tuple, list)) and _literal_size(ctx, sizes[j]):  # g.expand(2, 8, 6, 6)
                ctx.pin([o], f"expand keeps an axis at a constant size at {ctx.where()}")
        elif other is not None:
            ctx.same([other[j]], [o])
        elif (
            isinstance(sizes, (tuple, list))
            and ctx.constant_size(o, sizes[j])
            and not _written_into_under_export(ctx)
            and not (isinstance(sizes[j], ReadInt) and sizes[j].derived and record_copies(ctx, sizes[j], o))  # heads // kv
        ):
            ctx.pin([o], f"expand to a constant size at {ctx.where()}")
        else:
            ctx.fresh([o])


def _written_into_under_export(ctx: RuleContext) -> bool:
    """``y[:, :, 0] = 1.0`` on meta weights exports as ``copy_(select(y, 2, 0), expand(t, [2, 6,
    4]))``: torch broadcast the value to the target's shape itself (as a literal, like every
    size under torch.export), and the write links the new axes to the target's. A literal the
    code wrote there is the export probe's to catch."""
    users = list(ctx.node.users)
    return (
        is_exported(ctx.node.graph)
        and bool(users)
        and all(normalize(u).op is torch.Tensor.copy_ and normalize(u).args.get("src") is ctx.node for u in users)
    )


def _literal_size(ctx: RuleContext, size: object) -> bool:
    """A literal (not ``-1``/``1``) that no size attribute explains. Nothing is recorded: the
    axis is linked to its input, whose own rules record what surgery rewrites (under
    torch.export a literal equal to several attributes would name the wrong one)."""
    return (
        isinstance(size, int)
        and not isinstance(size, bool)
        and size not in (-1, 1)
        and not size_sources(ctx.node, size, ctx.modules)
    )


@register_function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.softmin)
def softmax(ctx: RuleContext) -> None:
    """Identity on every axis; the softmax axis mixes its entries."""
    pointwise(ctx)
    dim = ctx.arg("dim")
    out = ctx.out()
    ctx.mix(out if dim is None else [out[dim]], f"softmax at {ctx.where()}")


# -- reductions ----------------------------------------------------------------------------

_SUMS = {torch.sum, torch.nansum}
_NORMS = {torch.renorm, torch.norm, torch.linalg.vector_norm, torch.linalg.norm, torch.linalg.matrix_norm, F.normalize}


@register_function_rule(
    torch.mean, torch.sum, torch.nansum, torch.amax, torch.amin, torch.logsumexp, torch.prod,
    torch.max, torch.min, torch.norm, torch.linalg.vector_norm, torch.linalg.norm, torch.nanmean, torch.median,
    torch.argmax, torch.argmin, torch.all, torch.any, torch.count_nonzero, torch.linalg.matrix_norm,
)  # fmt: skip
def reduce(ctx: RuleContext) -> None:
    """Kept axes map to the output; reduced axes vanish.

    Only a sum, or a vector norm with ``p > 0``, of values that are zero where the channels'
    members are zero is zero-invariant over a channel axis: a mean, variance, max, product
    or logsumexp changes when a zero is added, and a sum of ``sigmoid(h)`` gets 0.5 per
    removed channel.
    """
    if ctx.arg("other") is not None:  # torch.max(a, b): elementwise
        pointwise(ctx)
        return
    src = ctx.axes(ctx.input)
    if src is None:
        return
    ctx.read_all()
    outs = ctx.outputs()
    nd = len(src)
    dim = ctx.arg("dim")
    if dim is None or dim == [] or dim == ():
        dims = set(range(nd))
    else:
        dims = {d % max(nd, 1) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    keep = bool(ctx.arg("keepdim", False))
    for d in dims:
        reason = reduction_mix(ctx, d)
        if reason:
            ctx.mix([src[d]], reason)
    kept = [src[d] for d in range(nd) if d not in dims]
    for out in outs:
        ctx.same(kept, [out[d] for d in range(nd) if d not in dims] if keep else out)
    finite_when_masked(ctx, outs[0] if len(outs) == 1 else [])  # ``(1 / (h.abs() + 1e-37)).sum((2, 3))``: inf


def reduction_mix(ctx: RuleContext, d: int) -> str | None:
    """Why zeroing channels of axis ``d`` that this reduction (or norm) sums over is not removing them, or None."""
    op = ctx.call.op
    label = getattr(op, "__name__", str(op))
    if op in _NORMS:
        p = ctx.arg("p", ctx.arg("ord", 2))
        if not (p is None or p == "fro" or (isinstance(p, (int, float)) and p > 0)):
            return f"{label} with p={p} over an axis at {ctx.where()}"
    elif op not in _SUMS:
        return f"{label} over an axis at {ctx.where()}"
    breaker = zero_breaker(ctx.input, d, ctx.modules)
    if breaker is not None:
        return f"{label} over an axis at {ctx.where()} of values not zero for removed channels (at {breaker})"
    return None


@register_function_rule(F.normalize)
def normalize_vectors(ctx: RuleContext) -> None:
    """``x / ||x||_p`` along ``dim`` (one axis or several): zero-invariant there like the norm itself."""
    pointwise(ctx)
    dim, ndim = ctx.arg("dim", 1), ctx.meta(ctx.input).ndim
    for d in {k % ndim for k in (dim if isinstance(dim, (tuple, list)) else [dim])}:
        reason = reduction_mix(ctx, d)
        if reason:
            ctx.mix([ctx.out()[d]], reason)


# -- spatial ops ---------------------------------------------------------------------------

_SPATIAL_FUNCTIONS = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2, F.interpolate: -1,
    F.upsample: -1, F.upsample_nearest: -1, F.upsample_bilinear: -1, torch.max_pool1d: 1, torch.max_pool2d: 2,
    torch.max_pool3d: 3, torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1, torch.adaptive_max_pool1d: 1,
    # what F.interpolate calls when traced through (an nn.Upsample built inside forward)
    torch._C._nn.upsample_nearest1d: 1, torch._C._nn.upsample_nearest2d: 2, torch._C._nn.upsample_nearest3d: 3,
    torch._C._nn._upsample_nearest_exact1d: 1, torch._C._nn._upsample_nearest_exact2d: 2,
    torch._C._nn._upsample_nearest_exact3d: 3, torch._C._nn.upsample_linear1d: 1, torch._C._nn.upsample_bilinear2d: 2,
    torch._C._nn.upsample_trilinear3d: 3, torch._C._nn.upsample_bicubic2d: 2, torch._C._nn._upsample_bilinear2d_aa: 2,
    torch._C._nn._upsample_bicubic2d_aa: 2,
    # F.max_pool2d(..., return_indices=True) and kin: (values, positions), channels pass through
    F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3,
    F.adaptive_max_pool1d_with_indices: 1, F.adaptive_max_pool2d_with_indices: 2, F.adaptive_max_pool3d_with_indices: 3,
    F.fractional_max_pool2d: 2, F.fractional_max_pool3d: 3, F.fractional_max_pool2d_with_indices: 2,
    F.fractional_max_pool3d_with_indices: 3,
}  # fmt: skip


@register_function_rule(*_SPATIAL_FUNCTIONS)
def spatial_function(ctx: RuleContext) -> None:
    """Ops on the trailing (spatial) axes only: the leading axes pass through."""
    ctx.read_all()
    k = _SPATIAL_FUNCTIONS[ctx.call.op]
    spatial_axes(ctx, k if k > 0 else max(ctx.meta(ctx.input).ndim - 2, 0))


def spatial_axes(ctx: RuleContext, k: int) -> None:
    """Leading axes pass through; the ``k`` trailing (spatial) axes, in and out, are pinned,
    except a pooled axis whose window is one index (``pool_windows``): it passes through too."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    lead, through = len(src) - k, sorted(one_index_windows(ctx, k))
    for out in ctx.outputs():
        ctx.same(src[:lead] + [src[lead + j] for j in through], out[:lead] + [out[lead + j] for j in through])
        ctx.pin([a for j, a in enumerate(out[lead:]) if j not in through], f"spatial axis of {ctx.where()}")
    ctx.pin([a for j, a in enumerate(src[lead:]) if j not in through], f"spatial axis of {ctx.where()}")
