"""Rules for writes into a tensor: slice assignment and its in-place ops.

``torch.fx`` cannot trace ``g[..., :2] = v`` (a ``Proxy`` has no ``__setitem__``), so slice
assignment reaches the planner through ``torch.export``, written as a view of the target
(``aten.slice`` / ``select``) and an in-place op on that view: ``fill_`` for a number, ``copy_``
for a tensor, ``index_put_`` for ``g[mask] = v``. Later users of the target read the target node
itself. A write keeps every axis of the view it writes into, whose own rule links those axes to
the target's (and pins a channel axis it slices at an offset: ``g[:, :6] = t`` pins the channels
with the slice's reason); the written value broadcasts into the view like a pointwise operand.
What the write does to zeros on the target is ``zeros._changed_in_place``'s concern.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .context import RuleContext
from .ops_tensor import pointwise
from .rules import register_function_rule, register_method_rule

__all__: list[str] = []


@register_method_rule("copy_")
def copy(ctx: RuleContext) -> None:
    """``g.copy_(t)``, ``g[..., :2] = t``: ``t`` broadcast into ``g``, axis by axis from the right."""
    pointwise(ctx)


@register_function_rule(torch.index_put)
def index_put(ctx: RuleContext) -> None:
    """``g[g < t] = v`` (``index_put_`` with one boolean mask of the input's own shape and one
    value) is ``g.masked_fill(g < t, v)``: pointwise over the input and the mask. Any other
    indexing writes at positions that would not follow a pruned length: pinned."""
    indices, values = ctx.arg("indices"), ctx.meta(ctx.arg("values"))
    target = ctx.meta(ctx.input)
    mask = ctx.meta(indices[0]) if isinstance(indices, (tuple, list)) and len(indices) == 1 else None
    if (
        isinstance(target, Tensor)
        and isinstance(mask, Tensor)
        and mask.dtype == torch.bool
        and mask.shape == target.shape
        and (not isinstance(values, Tensor) or values.numel() == 1)
    ):
        pointwise(ctx)
        return
    ctx.pin_everything(f"index_put with indices other than one mask of the input's shape at {ctx.where()}")
