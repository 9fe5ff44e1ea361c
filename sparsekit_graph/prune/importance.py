"""Channel importance: a registry of criteria, and the masks a pruning ratio gives.

A criterion maps an ``ImportanceContext`` (the model, its plan, the prunable groups' couplings,
optional calibration data) to one score per channel for each group it ranks: higher = keep.
``l2``, ``l1`` and ``random`` read the weights; ``taylor`` and ``activation`` (in
``prune/data_importance.py``) read calibration batches. Register your own with
``@register_importance("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import BlockCoupling
from ..errors import PlanError
from ..plan.schema import Group, Plan
from ..registry import registrar

__all__ = [
    "IMPORTANCE",
    "Criterion",
    "ImportanceContext",
    "group_scores",
    "masks_from_scores",
    "register_importance",
]


@dataclass(frozen=True)
class ImportanceContext:
    """What a criterion may read. ``couplings`` holds the bound prunable groups (a group of
    buffers only has none); ``calibration`` and ``loss_fn`` are the user's, as given to ``prune``."""

    model: nn.Module
    plan: Plan
    couplings: Mapping[str, BlockCoupling]
    calibration: Iterable[Any] | None = None
    loss_fn: Callable[[Any, Any], Tensor] | None = None
    generator: torch.Generator | None = None


Criterion = Callable[[ImportanceContext], Mapping[str, Tensor]]
"""Group name -> scores ``(size,)`` (higher = keep); groups left out keep their first channels."""

IMPORTANCE: dict[str, Criterion] = {}
register_importance = registrar(IMPORTANCE)
"""``@register_importance("name")`` adds a criterion that ``prune(importance="name")`` uses."""


def _per_coupling(fn: Callable[[BlockCoupling, ImportanceContext], Tensor]) -> Criterion:
    def criterion(ctx: ImportanceContext) -> dict[str, Tensor]:
        return {name: fn(c, ctx).reshape(-1) for name, c in ctx.couplings.items()}

    return criterion


@register_importance("l2")
@_per_coupling
def _l2(c: BlockCoupling, ctx: ImportanceContext) -> Tensor:
    """Weight L2 norm per channel over every member, per element (comparable across groups)."""
    return c.norms(p=2) / math.sqrt(c.numel_per_block())


@register_importance("l1")
@_per_coupling
def _l1(c: BlockCoupling, ctx: ImportanceContext) -> Tensor:
    return c.norms(p=1) / c.numel_per_block()


@register_importance("random")
@_per_coupling
def _random(c: BlockCoupling, ctx: ImportanceContext) -> Tensor:
    return torch.rand(c.numblk(), generator=ctx.generator)


def group_scores(importance: str | Criterion, ctx: ImportanceContext) -> dict[str, Tensor]:
    """Scores for every prunable group of ``ctx.plan`` (CPU, float32), checked.

    A group the criterion leaves out keeps its first channels (descending scores).
    """
    if callable(importance):
        criterion, label = importance, getattr(importance, "__name__", repr(importance))
    else:
        criterion = IMPORTANCE.get(importance)  # type: ignore[assignment]
        label = importance
        if criterion is None:
            raise PlanError(f"importance must be one of {sorted(IMPORTANCE)} or a callable, got {importance!r}")
    got = criterion(ctx)
    if not isinstance(got, Mapping):
        raise PlanError(f"importance {label!r} must return a dict of group name -> scores, got {type(got).__name__}")
    out = {}
    for g in ctx.plan.prunable:
        s = got.get(g.name)
        if s is None:
            out[g.name] = -torch.arange(g.size, dtype=torch.float32)
            continue
        if not isinstance(s, Tensor) or s.numel() != g.size:
            raise PlanError(f"importance {label!r}: group {g.name} needs {g.size} scores, got {getattr(s, 'shape', s)!r}")
        s = s.detach().reshape(-1).float().cpu()
        if not bool(torch.isfinite(s).all()):
            raise PlanError(f"importance {label!r}: group {g.name} has non-finite scores (check the calibration loss)")
        out[g.name] = s
    return out


def keep_count(group: Group, ratio: float, round_to: int | None) -> int:
    """Channels a group keeps: its own ``keep``/``ratio`` override the uniform ``ratio``;
    never fewer than its ``min_keep``."""
    if group.keep is not None:
        keep = group.keep
    else:
        r = group.ratio if group.ratio is not None else ratio
        keep = group.size - int(group.size * r)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(group.fewest, min(group.size, keep))


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
    channels across all groups without an override, each group keeping at least its ``min_keep``.
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
                if left[i] > free[i].fewest:
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
        n = max(max(g.fewest for g in like), round(sum(keep[g.name] for g in like) / len(like)))
        out.update({g.name: n for g in like})
    return out
