"""Slice bounds read off another tensor's axis: ``y[:, :x.size(1)]`` and ``y[:, x.size(1):]``.

ReXNet's partial residual, spelled with the shortcut's width rather than ``self.in_channels``
(``split_sizes``): the prefix is as long as the read axis, so it is linked to that axis (one
channel space: whatever that axis loses, the prefix loses, and the bound moves by as much);
the rest starts where that prefix ends, so it follows only beside such a prefix slice of the
same tensor by the same read axis. Any other bound read off a tensor still pins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from .axes import AxisId
from .context import RuleContext
from .size_args import read_axis
from .split_sizes import prefix_stop

__all__ = ["read_prefix", "read_suffix"]


def read_prefix(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId) -> np.ndarray | None:
    """``y[:, :x.size(1)]`` (or ``0:``): the indices it takes, ``out`` linked to the read axis;
    None for any other slice."""
    if it.step is not None or it.start not in (None, 0):
        return None
    read = _read(ctx, it.stop, axis)
    if read is None:
        return None
    ctx.model_length(it.stop)
    ctx.graph.link(read, out)
    return np.arange(ctx.graph.size(read))


def read_suffix(ctx: RuleContext, it: slice, axis: AxisId, src: fx.Node, dim: int) -> np.ndarray | None:
    """``y[:, x.size(1):]`` beside ``y[:, :x.size(1)]`` of the same tensor: the indices it takes;
    None where no such prefix slice reads the same axis."""
    if it.step is not None or it.stop is not None:
        return None
    read = _read(ctx, it.start, axis)
    if read is None or ctx.graph.size(read) >= ctx.graph.size(axis):
        return None
    if not any(_read(ctx, prefix_stop(u, dim), axis) == read for u in src.users if u is not ctx.node):
        return None
    ctx.model_length(it.start)
    n = ctx.graph.size(read)
    return n + np.arange(ctx.graph.size(axis) - n)


def _read(ctx: RuleContext, bound: Any, axis: AxisId) -> AxisId | None:
    """The axis ``bound`` is the length of, where that is above 1 and at most ``axis``'s."""
    read = read_axis(ctx, bound) if isinstance(bound, fx.Node) else None
    return read if read is not None and 1 < ctx.graph.size(read) <= ctx.graph.size(axis) else None
