"""Indexing one axis by an integer tensor (``table[index]``, ``x[:, idx]``): a gather.

The indexed axis and the index's own axes pin (positions chosen by data); every other axis of
the source passes to the output (Swin's and MaxViT's relative-position tables keep their head
axis: ``table[index.view(-1)]`` is ``(N*N, heads)``). ``getitem`` (``ops_tensor.py``) asks here
first and handles every other indexing itself.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor

from .context import RuleContext

__all__ = ["gather_by_index"]


def gather_by_index(ctx: RuleContext) -> bool:
    """Link ``x[idx]``/``x[:, idx]`` (one integer index tensor, full slices elsewhere);
    False, with nothing linked, for any other indexing."""
    value, index = ctx.meta(ctx.input), ctx.arg("index")
    items = list(index) if isinstance(index, tuple) else [index]
    tensors = [k for k, i in enumerate(items) if isinstance(i, fx.Node)]
    if not isinstance(value, Tensor) or not isinstance(ctx.out_value, Tensor) or len(tensors) != 1:
        return False
    k = tensors[0]
    idx = ctx.meta(items[k])
    if not isinstance(idx, Tensor) or idx.dtype in (torch.bool, torch.uint8) or idx.is_floating_point():
        return False
    if any(i != slice(None) for i in items[:k] + items[k + 1 :]) or len(items) > value.ndim:
        return False
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None or tuple(ctx.out_value.shape) != (*value.shape[:k], *idx.shape, *value.shape[k + 1 :]):
        return False
    gathered = out[k : k + idx.ndim]
    ctx.pin([src[k], *gathered, *(ctx.axes(items[k]) or [])], f"gathering by an index tensor at {ctx.where()}")
    ctx.same(src[:k] + src[k + 1 :], out[:k] + out[k + idx.ndim :])
    return True
