"""The fewest channels a group may keep: its share of what ops along its axes need.

A rule records on an axis the indices an op needs there (``graph.floors``: ``h.topk(3, dim=1)``
needs 3 of ``h``'s channels). A group owning ``n`` of the axis's ``L`` indices, at least ``c``
per channel it touches, keeps its share of ``k``: ``ceil(k * n / (L * c))`` of those channels,
plus every channel of it that does not touch the axis (importance may remove those last). The
shares of the groups along one axis sum to at least ``k``; a group owning the whole axis with one
index per channel keeps exactly ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from ..errors import PlanError
from ..graph.axes import AxisGraph, AxisId
from .channels import Channels

if TYPE_CHECKING:  # schema -> check -> edits; no runtime import back
    from .schema import Plan

__all__ = ["check_min_keep", "min_keep"]


def min_keep(graph: AxisGraph, nodes: list[AxisId], ch: Channels, size: int) -> tuple[int, str] | None:
    """``(min_keep, reason)`` for the group of ``size`` channels ``ch`` in the component
    ``nodes``, or None where no op needs more than one channel of it."""
    best: tuple[int, str] | None = None
    for i, n in enumerate(nodes):
        floor = graph.floors.get(n)
        if floor is None:
            continue
        counts = np.ones(size, dtype=np.int64) if ch.counts is None else ch.counts.get(i)
        if counts is None or not counts.any():
            continue
        touched = counts[counts > 0]
        k, reason = floor
        share = math.ceil(k * int(touched.sum()) / (graph.size(n) * int(touched.min())))
        need = min(size, share + (size - len(touched)))
        if need > 1 and (best is None or need > best[0]):
            best = (need, reason)
    return best


def check_min_keep(plan: Plan, masks: Mapping[str, Tensor]) -> None:
    """Raise ``PlanError`` naming the first group whose mask (``True`` = removed) keeps fewer
    channels than its ``min_keep``."""
    for g in plan.groups:
        mask = masks.get(g.name)
        if mask is None or g.min_keep is None:
            continue
        kept = g.size - int(mask.sum())
        if kept < g.min_keep:
            raise PlanError(
                f"group {g.name!r} field min_keep: the mask keeps {kept} of {g.size} channels, "
                f"the model needs at least {g.min_keep} ({g.min_keep_reason})"
            )
