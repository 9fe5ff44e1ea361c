"""Size attributes shared by a pinned group: they cannot change, so nothing they size can shrink.

A layer's ``self.head_dim`` may size the heads of q and k (pinned: rotated, contracted) and
those of v (free): pruning v's head size rewrites ``head_dim``, and q's ``view`` then breaks.
Every prunable group that counts its channels by an attribute some pinned group also counts
by is pinned too, with the reason, until no such group is left. Only on torch.fx graphs, where
an attribute sizes an axis because the code read it: torch.export writes sizes as literals
matched by value (StableLM's partial-rotary slice of 2 equals its ``num_key_value_heads``), and
there the export probe prunes a copy and pins what actually breaks.

A module's own attribute (``self.num_heads``) that sizes several prunable groups holds one
value for all of them: ``ties.shared_size_ties`` ties them where they are equally sized and
count it alike; ``pin_untied_sizes`` pins them where they cannot be tied.

Except where the groups are segments of the same axes (``segment_sizes``): ``F.conv2d(torch.cat
([a, pad]), w, groups=self.dw.groups)`` sizes one axis by ``groups``, the sum of both segments.
Each segment lowers it by what it removes; a pinned one lowers it by nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from .schema import Group

__all__ = ["pin_shared_sizes", "pin_untied_sizes", "segment_sizes", "size_drops"]


def segment_sizes(groups: Iterable[Group]) -> set[tuple[str, str]]:
    """The size attributes (owner, attr) that only size axes every group counting them is a
    segment of: all list the same traced axes as ``uses``. Such an attribute is the sum of its
    groups' channels on each axis, so each group lowers it by its own share, independently."""
    uses: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
    for g in groups:
        for r in g.sizes:
            uses[(r.owner, r.attr)].add(tuple(sorted(r.uses)))
    return {key for key, found in uses.items() if len(found) == 1 and all(found)}


def size_drops(groups: list[Group], removed: Mapping[str, int]) -> dict[tuple[str, str, str], int]:
    """How much each group's size attributes drop, keyed (group, owner, attr), when the groups
    lose ``removed`` channels (by group name): the group's own share, or for a sum of segments
    (``segment_sizes``) all their shares."""
    summed = segment_sizes(groups)
    total: dict[tuple[str, str], int] = defaultdict(int)
    for g in groups:
        for r in g.sizes:
            total[(r.owner, r.attr)] += r.lowered_by(removed.get(g.name, 0))
    return {
        (g.name, r.owner, r.attr): total[(r.owner, r.attr)]
        if (r.owner, r.attr) in summed
        else r.lowered_by(removed.get(g.name, 0))
        for g in groups
        for r in g.sizes
    }


def pin_shared_sizes(groups: list[Group], ungrouped: Mapping[tuple[str, str], str] | None = None) -> list[Group]:
    """``groups`` with every prunable group that shares a size attribute with a pinned one pinned,
    or with an axis of no group (``ungrouped``: (owner, attr) -> the axis, which nothing shrinks:
    ``k.view(b, n, -1, self.head_dim)`` where k's head size has no parameter of its own)."""
    ungrouped = ungrouped or {}
    summed = segment_sizes(groups) - set(ungrouped)
    changed = True
    while changed:
        changed = False
        fixed = {key: f"the ungrouped {where}" for key, where in ungrouped.items()}
        fixed |= {(r.owner, r.attr): g.name for g in groups if not g.prunable for r in g.sizes if (r.owner, r.attr) not in summed}
        if not fixed:
            return groups
        out = []
        for g in groups:
            hit = next(((r.owner, r.attr) for r in g.sizes if (r.owner, r.attr) in fixed), None) if g.prunable else None
            if hit is not None:
                owner, attr = hit
                reason = f"size attribute {owner or 'model'}.{attr} also sizes {_named(fixed[hit])}: it cannot change"
                g = g.model_copy(update={"prunable": False, "reason": reason})
                changed = True
            out.append(g)
        groups = out
    return groups


def _named(fixed: str) -> str:
    return fixed if fixed.startswith("the ungrouped") else f"pinned group {fixed}"


def pin_untied_sizes(groups: list[Group]) -> list[Group]:
    """``groups`` (torch.fx) with the prunable groups pinned that share a size attribute of a
    module or config but differ in size or in how they count it, so no count tie
    (``ties.shared_size_ties``) keeps the attribute one value."""
    summed = segment_sizes(groups)
    by_attr: dict[tuple[str, str], list[tuple[Group, tuple[int, int]]]] = {}
    for g in groups:
        for r in g.sizes if g.prunable else ():
            if (r.owner, r.attr) not in summed:
                by_attr.setdefault((r.owner, r.attr), []).append((g, (r.per_channel, r.every)))
    reasons: dict[str, str] = {}
    for (owner, attr), found in by_attr.items():
        names = sorted({g.name for g, _ in found})
        if len(names) > 1 and len({(g.size, how) for g, how in found}) > 1:
            for n in names:
                others = ", ".join(m for m in names if m != n)
                reasons.setdefault(
                    n, f"size attribute {owner or 'model'}.{attr} also sizes group {others}, which no count tie can keep equal"
                )
    if not reasons:
        return groups
    return [g.model_copy(update={"prunable": False, "reason": reasons[g.name]}) if g.name in reasons else g for g in groups]
