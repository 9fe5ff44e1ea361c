"""Axes a norm takes its statistics over, besides the channels it normalises one by one.

Instance and group norms reduce over the spatial axes, batch norms with batch statistics over the
batch axis too. Where another layer's channels lie on such an axis (an InstanceNorm applied to a
permuted tensor), removing a channel is not zeroing it: the mean and variance change.
"""

from __future__ import annotations

import math

from .axes import AxisId
from .context import RuleContext

__all__ = ["mix_statistics", "statistics_axes"]


def mix_statistics(ctx: RuleContext, axes: list[AxisId], *, counted: bool, mix: bool = True) -> None:
    """Mark the axes the statistics run over as not zero-invariant (``mix``; not where the norm
    uses stored statistics, as a batch norm in eval). ``counted``: torch refuses statistics over
    a single element (batch and instance norms, in training), so an axis alone in carrying more
    than one element keeps at least two, whatever mode it was traced in."""
    for a in axes:
        if mix:
            ctx.mix([a], f"statistics of {ctx.where()}")
        if counted and math.prod(ctx.graph.size(b) for b in axes if b != a) == 1:
            ctx.at_least(a, 2, f"statistics over at least two elements at {ctx.where()}")


def statistics_axes(out: list[AxisId], *, batch: bool) -> list[AxisId]:
    """A batched input's statistics axes: 2+, and the batch axis for batch statistics."""
    return ([out[0]] if batch and out else []) + list(out[2:])
