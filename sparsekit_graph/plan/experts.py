"""Per-expert width groups from a stacked expert tensor (placeholder, filled below)."""

from __future__ import annotations

from ..graph.axes import AxisGraph
from .schema import Group, Tie

__all__ = ["split_experts"]


def split_experts(graph: AxisGraph, groups: list[Group]) -> tuple[list[Group], list[Tie]]:
    return groups, []
