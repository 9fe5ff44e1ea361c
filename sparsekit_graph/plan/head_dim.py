"""A head_dim group's attention scales and followed axes (``plan(head_dim=True)``)."""

from __future__ import annotations

import numpy as np

from ..graph.axes import AxisGraph, AxisId
from .schema import AttentionScale, AxisFollow

__all__ = ["head_dim_parts"]


def head_dim_parts(
    graph: AxisGraph, nodes: list[AxisId], counts: dict[int, np.ndarray] | None, perm: np.ndarray
) -> tuple[list[AttentionScale], list[AxisFollow], str | None]:
    """The attention scales (one per attention whose query head_dim axis is among ``nodes``)
    and followed axes of one channel signature, with ``counts[i]`` the indices of node ``i``
    each channel owns. A reason instead when the channels do not own the head size whole
    and evenly (the scale is computed from one group's removals)."""
    scales: list[AttentionScale] = []
    follows: list[AxisFollow] = []
    for i, n in enumerate(nodes):
        if n not in graph.scales and n not in graph.follows:
            continue
        c = np.ones(len(perm), dtype=np.int64) if counts is None or i not in counts else counts[i][perm]
        if not c.any():
            continue
        if (c != c[0]).any():
            return [], [], f"head_dim channels own unequal parts of {n[1]} axis {n[2]}"
        per = int(c[0])
        if n in graph.follows:
            follows.append(AxisFollow(use=graph.follows[n], per_channel=per))
        for site in graph.scales.get(n, []):
            if per * len(c) != site.head_dim:
                return [], [], f"head_dim of {n[1]} is split over several groups: its attention scale cannot follow one"
            scales.append(
                AttentionScale(head_dim=site.head_dim, per_channel=per, query=list(site.query), owner=site.owner, attr=site.attr)
            )
    return scales, follows, None
