"""Rules for products: matmul, mm, bmm, addmm and weights used through views."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .context import RuleContext
from .kept_zeros import finite_buffer, number_scaled
from .normalize import normalize
from .param_values import from_parameters
from .rules import register_function_rule
from .zeros import zero_breaker

# -- products ------------------------------------------------------------------------------

_WEIGHT_VIEWS = {
    torch.Tensor.T,
    torch.Tensor.mT,
    torch.t,
    torch.transpose,
    torch.permute,
    torch.Tensor.data,
    torch.Tensor.detach,
    torch.detach,
    torch.Tensor.contiguous,
    torch.Tensor.to,
    torch.Tensor.index,
    torch.Tensor.expand,
    torch.Tensor.expand_as,
    torch.broadcast_to,
    torch.unsqueeze,
    torch.squeeze,
}  # fmt: skip  (index: stacked experts gathered per token; unsqueeze: ``w.unsqueeze(0).expand(b, -1, -1)``)


def is_weight(ctx: RuleContext, x: object) -> bool:
    """A parameter, a view of one (``w.T``), or a weight computed from parameters alone
    (``w * mask``, ``w + b @ a``, as ``F.linear`` takes it): its axes produce a product's."""

    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            return bool(ctx.aliases and x.name in ctx.aliases)
        if x.op not in ("call_function", "call_method") or normalize(x).op not in _WEIGHT_VIEWS:
            return from_parameters(x, ctx.aliases)
        x = normalize(x).args.get("input")
    return False


def zeroed_by_masks(ctx: RuleContext, x: object) -> bool:
    """A parameter, a view of one or one scaled by a number (``w.T``, ``w * self.scale``):
    masking a channel zeroes it. Masks leave buffers alone, so ``sigmoid(h) @ self.buffer``
    still adds ``0.5 * buffer`` for a masked channel."""
    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            name = (ctx.aliases or {}).get(x.name)
            owner, _, attr = (name or "").rpartition(".")
            return name is not None and isinstance(getattr(ctx.modules.get(owner), attr, None), torch.nn.Parameter)
        if x.op not in ("call_function", "call_method"):
            return False
        call = normalize(x)
        x = call.args.get("input") if call.op in _WEIGHT_VIEWS else number_scaled(call, lambda t: _finite_buffer(ctx, t))
    return False


def _finite_buffer(ctx: RuleContext, x: object) -> bool:
    name = (ctx.aliases or {}).get(x.name) if isinstance(x, fx.Node) else None
    return finite_buffer(x, ctx.modules, name)


def link_matmul(ctx: RuleContext, a_node: object, b_node: object, out: list) -> None:
    """``a @ b`` with torch.matmul's broadcasting: rows of ``a`` and columns of ``b`` pass to the
    output (produced there when the operand is a weight), the contracted axes are linked. A
    contraction of two activations is zero-invariant only if one of them keeps zeros."""
    a, b = ctx.axes(a_node), ctx.axes(b_node)
    if a is None or b is None:
        ctx.pin_everything(f"product with a non-tensor at {ctx.where()}")
        return
    va, vb = (a if len(a) > 1 else [None, a[0]]), (b if len(b) > 1 else [b[0], None])
    ka, kb = va[-1], vb[-2]
    ctx.graph.link(ka, kb)
    rows, cols = va[-2], vb[-1]
    tail = [x for x in (rows, cols) if x is not None]
    for axis, node in ((rows, a_node), (cols, b_node)):
        if axis is None:
            continue
        target = out[len(out) - len(tail) + tail.index(axis)]
        (ctx.produce if is_weight(ctx, node) else ctx.graph.link)(axis, target)
    batch_a, batch_b = va[:-2], vb[:-2]
    batch_out = out[: len(out) - len(tail)]
    ctx.same(reversed(batch_a), reversed(batch_out))
    ctx.same(reversed(batch_b), reversed(batch_out))
    if not (zeroed_by_masks(ctx, a_node) or zeroed_by_masks(ctx, b_node)):
        da, db = ctx.meta(a_node).ndim - 1, max(ctx.meta(b_node).ndim - 2, 0)
        breaks = [zero_breaker(a_node, da, ctx.modules), zero_breaker(b_node, db, ctx.modules)]  # type: ignore[arg-type]
        if None not in breaks:
            ctx.mix([ka], f"product of two activations at {ctx.where()} (neither zero for removed channels)")


@register_function_rule(torch.matmul, torch.mm, torch.bmm, operator.matmul)
def matmul(ctx: RuleContext) -> None:
    link_matmul(ctx, ctx.input, ctx.arg("other", ctx.arg("mat2")), ctx.out())


@register_function_rule(torch.addmm, torch.baddbmm)
def addmm(ctx: RuleContext) -> None:
    """``beta * input + alpha * mat1 @ mat2`` (``baddbmm``: batched ``batch1 @ batch2``;
    ``input`` broadcasts like a bias)."""
    ctx.read_all()
    out = ctx.out()
    a, b = ("batch1", "batch2") if ctx.call.op is torch.baddbmm else ("mat1", "mat2")
    link_matmul(ctx, ctx.arg(a), ctx.arg(b), out)
    bias = ctx.axes(ctx.input)
    if bias is not None:
        ctx.same(reversed(bias), reversed(out))
