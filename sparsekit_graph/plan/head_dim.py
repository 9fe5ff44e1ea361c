"""A head_dim group's attention scales and followed axes (``plan(head_dim=True)``)."""

from __future__ import annotations

import numpy as np

from ..graph.axes import AxisGraph, AxisId
from .schema import AttentionScale, AxisFollow, Group, Tie, TiePart

__all__ = ["head_dim_parts", "tie_shared_scales"]


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


def tie_shared_scales(groups: list[Group]) -> tuple[list[Group], list[Tie]]:
    """One scale attribute set by several groups (two blocks' attentions passing the model's
    ``self.scale``) holds one value: equally sized groups that count it alike are tied (they
    lose the same number of channels); otherwise, or where one of them is pinned, all pin."""
    by_attr: dict[tuple[str, str], list[tuple[Group, tuple[int, int]]]] = {}
    for g in groups:
        for s in g.scales:
            if s.owner is not None and s.attr:
                by_attr.setdefault((s.owner, s.attr), []).append((g, (s.head_dim, s.per_channel)))
    ties: list[Tie] = []
    reasons: dict[str, str] = {}
    for (owner, attr), found in by_attr.items():
        names = list(dict.fromkeys(g.name for g, _ in found))
        if len(names) < 2:
            continue
        label = f"attention scale {owner or 'model'}.{attr} is set by {', '.join(names)}"
        if all(g.prunable for g, _ in found) and len({(g.size, how) for g, how in found}) == 1:
            ties.append(Tie(parts=[TiePart(group=n) for n in names], reason=f"{label}: one value for all"))
        else:
            reasons.update({n: f"{label}, which no count tie can keep equal" for n in names})

    def pin(g: Group) -> Group:
        return g.model_copy(update={"prunable": False, "reason": reasons[g.name]}) if g.name in reasons and g.prunable else g

    return [pin(g) for g in groups], ties
