"""Mixture-of-experts routing: ``topk`` over router scores, and stacked expert weights
gathered by the chosen indices (``gate_up_proj[expert_ids]``: transformers' ``batched_mm``).
The indices are positions along the router's axis: ``positions.py`` follows them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .context import RuleContext
from .ops_gather import gather_by_index, pick_fixed_positions, select_by_mask
from .ops_matmul import is_weight
from .positions import count_experts, index_by_positions
from .rules import register_function_rule
from .sizes import register_size_attribute

__all__: list[str] = []

register_size_attribute("moe_intermediate_size", "shared_expert_intermediate_size")  # expert and shared-expert widths


@register_function_rule(torch.topk)
def topk(ctx: RuleContext) -> None:
    """``values, indices = x.topk(k, dim)``: the other axes pass to both outputs; the ``k``
    picks follow no input axis; selecting mixes ``dim`` (not zero-invariant: a removed channel's
    zero can be picked over negative values), needs ``k`` indices of it (``min_keep``), and the
    indices' values are positions along it (``positions.py``)."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    d = ctx.arg("dim", -1) % len(src)
    ctx.arg("largest"), ctx.arg("sorted")
    ctx.needs(src[d], "k", "top-k selection")
    values, indices = ctx.out(0), ctx.out(1)
    for o in (values, indices):
        ctx.same(src[:d] + src[d + 1 :], o[:d] + o[d + 1 :])
    ctx.fresh([values[d], indices[d]])
    ctx.mix([src[d]], f"top-k selection at {ctx.where()}")
    count_experts(ctx, src[d])


@register_function_rule(torch.Tensor.index)
def index(ctx: RuleContext) -> None:
    """``x[idx]`` with one integer index tensor: the output is ``idx``'s axes then ``x``'s
    others. When ``idx`` holds positions of a known axis (``topk``'s indices), ``x``'s axis 0
    is that axis; otherwise it pins (a lookup by unknown positions)."""
    if pick_fixed_positions(ctx):  # x[..., [-2], :]: constant positions on one axis
        return
    src, out = ctx.axes(ctx.input), ctx.out()
    idx = ctx.arg("indices")
    parts = list(idx) if isinstance(idx, (list, tuple)) else []
    items = [slice(None) if p is None else p for p in parts]  # aten's None: a whole axis
    if select_by_mask(ctx, items) or (len(parts) > 1 and gather_by_index(ctx, items)):  # ``h[mask]``, ``h[:, idx]``
        return
    value = ctx.meta(parts[0]) if len(parts) == 1 else None
    if src is None or not isinstance(value, Tensor) or value.dtype in (torch.bool, torch.uint8) or value.is_floating_point():
        ctx.pin_everything(f"indexing at {ctx.where()}")
        return
    i_axes = ctx.axes(parts[0]) or []
    n = len(i_axes)
    ctx.same(i_axes, out[:n])
    weight = is_weight(ctx, ctx.input)
    for a, o in zip(src[1:], out[n:]):
        if ctx.graph.size(a) > 1:
            (ctx.produce if weight else ctx.graph.link)(a, o)
    if not index_by_positions(ctx, parts[0], src[0]):
        ctx.pin([src[0]], f"indexing by unknown positions at {ctx.where()}")
