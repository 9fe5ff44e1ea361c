"""Pooled axes whose window is one index: an identity per index of that axis.

A max or average pooling whose kernel and stride are 1 and padding 0 along an axis (Funnel's
``avg_pool2d(x[:, None], (stride, 1))`` over (B, 1, L, D): the width ``D``) computes output
index ``i`` of that axis from input index ``i`` alone, whatever the axis's length: the axis
passes through as a channel axis does (dilation does nothing to a window of one; with padding 0
neither ``ceil_mode`` nor ``count_include_pad`` changes anything; ``divisor_override`` scales
each index alike). Pools that also return positions (``return_indices``) flatten the pooled
axes into one index: not per axis, so they are left to pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .context import RuleContext

__all__ = ["one_index_windows"]

_POOLS: tuple[Any, ...] = (
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.avg_pool1d,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
)  # fmt: skip
_POOL_LAYERS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


def one_index_windows(ctx: RuleContext, k: int) -> set[int]:
    """Positions among the ``k`` pooled (trailing) axes whose window is a single index."""
    found: tuple[Any, Any, Any, Any]
    if isinstance(ctx.module, _POOL_LAYERS):
        m = ctx.module
        found = (m.kernel_size, m.stride, m.padding, getattr(m, "return_indices", False))
    elif ctx.node.op != "call_module" and ctx.call.op in _POOLS:
        args = ctx.call.args
        found = (args.get("kernel_size"), args.get("stride"), args.get("padding", 0), args.get("return_indices", False))
    else:
        return set()
    if found[3] is not False or len(ctx.outputs()) != 1:
        return set()
    kernel, padding = _per_axis(found[0], k), _per_axis(found[2], k)
    stride = kernel if found[1] is None or found[1] == [] or found[1] == () else _per_axis(found[1], k)
    if kernel is None or stride is None or padding is None:
        return set()
    return {j for j in range(k) if kernel[j] == 1 and stride[j] == 1 and padding[j] == 0}


def _per_axis(value: Any, k: int) -> Sequence[Any] | None:
    """An int or a tuple of ints as one int per axis; None if it is anything else."""
    if _is_int(value):
        return [value] * k
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        return list(value) * k if len(value) == 1 else list(value) if len(value) == k else None
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
