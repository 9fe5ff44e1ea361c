"""Size attributes shared by a pinned group: they cannot change, so nothing they size can shrink.

A layer's ``self.head_dim`` may size the heads of q and k (pinned: rotated, contracted) and
those of v (free): pruning v's head size rewrites ``head_dim``, and q's ``view`` then breaks.
Every prunable group that counts its channels by an attribute some pinned group also counts
by is pinned too, with the reason, until no such group is left. Only on torch.fx graphs, where
an attribute sizes an axis because the code read it: torch.export writes sizes as literals
matched by value (StableLM's partial-rotary slice of 2 equals its ``num_key_value_heads``), and
there the export probe prunes a copy and pins what actually breaks.
"""

from __future__ import annotations

from .schema import Group

__all__ = ["pin_shared_sizes"]


def pin_shared_sizes(groups: list[Group]) -> list[Group]:
    """``groups`` with every prunable group that shares a size attribute with a pinned one pinned."""
    changed = True
    while changed:
        changed = False
        fixed = {(r.owner, r.attr): g.name for g in groups if not g.prunable for r in g.sizes}
        if not fixed:
            return groups
        out = []
        for g in groups:
            hit = next(((r.owner, r.attr) for r in g.sizes if (r.owner, r.attr) in fixed), None) if g.prunable else None
            if hit is not None:
                owner, attr = hit
                reason = f"size attribute {owner or 'model'}.{attr} also sizes pinned group {fixed[hit]}: it cannot change"
                g = g.model_copy(update={"prunable": False, "reason": reason})
                changed = True
            out.append(g)
        groups = out
    return groups
