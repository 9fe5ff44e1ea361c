"""Channel importance and the masks a pruning ratio gives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine import BlockCoupling
from ..errors import PlanError
from ..plan.schema import Group

__all__ = ["IMPORTANCE", "channel_scores", "masks_from_scores"]

IMPORTANCE = ("l2", "l1", "random")


def channel_scores(coupling: BlockCoupling, importance: str, generator: torch.Generator | None = None) -> Tensor:
    """One score per channel, comparable across groups (per-element scale)."""
    n = coupling.numel_per_block()
    if importance == "l2":
        return coupling.norms(p=2).reshape(-1) / math.sqrt(n)
    if importance == "l1":
        return coupling.norms(p=1).reshape(-1) / n
    if importance == "random":
        return torch.rand(coupling.numblk(), generator=generator)
    raise PlanError(f"importance must be one of {IMPORTANCE}, got {importance!r}")


def keep_count(group: Group, ratio: float, round_to: int | None) -> int:
    """Channels a group keeps: its own ``keep``/``ratio`` override the uniform ``ratio``."""
    if group.keep is not None:
        keep = group.keep
    else:
        r = group.ratio if group.ratio is not None else ratio
        keep = group.size - int(group.size * r)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(1, min(group.size, keep))


def masks_from_scores(
    groups: list[Group],
    scores: dict[str, Tensor],
    ratio: float,
    *,
    round_to: int | None,
    global_ranking: bool,
    uniform: bool = False,
) -> dict[str, Tensor]:
    """``True`` = removed. Per group: each group drops its lowest channels. Global: the lowest
    channels across all groups without an override, each group keeping at least one.
    ``uniform``: groups of one shape (the same layer in every block) then keep one count, the
    rounded mean of theirs, each its own best channels (so a config can describe the model)."""
    keep = {g.name: keep_count(g, ratio, round_to) for g in groups}
    if global_ranking:
        free = [g for g in groups if g.keep is None and g.ratio is None]
        if free:
            flat = torch.cat([scores[g.name] for g in free])
            owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(free)])
            budget = int(flat.numel() * ratio)
            left = [g.size for g in free]
            for idx in torch.argsort(flat, stable=True).tolist():
                if budget == 0:
                    break
                i = int(owner[idx])
                if left[i] > 1:
                    left[i] -= 1
                    budget -= 1
            for g, n in zip(free, left):
                keep[g.name] = keep_count(g.model_copy(update={"keep": n}), 0.0, round_to)
    if uniform:
        keep.update(_snapped(groups, keep))
    masks = {}
    for g in groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        drop = g.size - keep[g.name]
        if drop:
            mask[torch.argsort(scores[g.name], stable=True)[:drop]] = True
        masks[g.name] = mask
    return masks


def _snapped(groups: list[Group], keep: dict[str, int]) -> dict[str, int]:
    """One count per class of like groups (same size and member layout), overrides aside."""
    classes: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.keep is None and g.ratio is None:
            shape = tuple(sorted((m.axis, m.block, m.stop - m.start) for m in g.members))
            classes.setdefault((g.size, shape), []).append(g)
    out = {}
    for like in classes.values():
        n = max(1, round(sum(keep[g.name] for g in like) / len(like)))
        out.update({g.name: n for g in like})
    return out
