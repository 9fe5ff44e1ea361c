"""Count ties: parts of groups that must lose equal numbers of channels.

A stacked expert tensor ``(E, 2I, H)`` stays rectangular only if every expert keeps the same
width; ``gqa="query_heads"`` removes the same number of query heads from every key/value
group. The plan records such constraints as ``Tie``s; this module validates them, checks
overrides and masks against them, and snaps ranked masks to them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import PlanError
from ..graph.sizes import SizeSource

if TYPE_CHECKING:  # schema imports this module; no runtime import back
    from .schema import Group, Plan, SizeRef, Tie, TiePart

__all__ = ["check_tied_masks", "check_tied_overrides", "shared_size_ties", "snap_tied", "validate_ties"]


def part_channels(part: TiePart, group: Group) -> list[int]:
    """The channel indices of one part."""
    return list(range(group.size)) if part.channels is None else part.channels


def shared_size_ties(groups: list[Group], read: Collection[Any], exported: bool = True) -> list[Tie]:
    """Prunable groups that one config attribute in ``read`` counts (Phi-3's layers slice their
    fused ``qkv_proj`` at ``config.num_attention_heads * head_dim``): a config holds one value,
    so every such group must lose the same number of channels. ``read``: the ``SizeSource``s
    the forward is known to compute with (slice bounds), not literals that merely equal them
    (LLaMA's ``repeat_kv`` reshape equals ``num_attention_heads`` but is read off shapes, and
    its layers may keep different counts). Unless ``exported``, a module's own attribute
    (``self.num_heads``) or a config's (``self.config.n_heads``, one object shared by blocks)
    counts every group whose axes the code sized by reading it, and ties them too. One tie per
    attribute whose groups are equally sized and count it alike (otherwise
    ``shared_sizes.pin_untied_sizes`` pins them on torch.fx graphs, and ``prune`` rejects counts
    that disagree under torch.export, as before)."""
    from .schema import Tie, TiePart  # schema imports this module
    from .shared_sizes import segment_sizes

    summed = segment_sizes(groups)  # segments of one axis: each lowers the sum by its own share
    by_attr: dict[tuple[str, str], list[Group]] = {}
    for g in (g for g in groups if g.prunable):
        for ref in g.sizes:
            if (ref.owner, ref.attr) in summed:
                continue
            if not exported or (_is_config(ref.owner) and _source(ref) in read):
                found = by_attr.setdefault((ref.owner, ref.attr), [])
                if g not in found:
                    found.append(g)
    ties, seen = [], set()
    for (owner, attr), tied in by_attr.items():
        names = tuple(g.name for g in tied)
        refs = {(r.per_channel, r.every) for g in tied for r in g.sizes if (r.owner, r.attr) == (owner, attr)}
        if len(tied) < 2 or names in seen or len({g.size for g in tied}) > 1 or len(refs) > 1:
            continue
        seen.add(names)
        reason = f"{owner or 'model'}.{attr} counts these channels in every group that reads it: one value for all"
        ties.append(Tie(parts=[TiePart(group=n) for n in names], reason=reason))
    return ties


def _is_config(owner: str) -> bool:
    return owner == "config" or owner.endswith(".config")


def _source(ref: SizeRef) -> SizeSource:
    return SizeSource(ref.owner, ref.attr)


def _names(tie: Tie) -> str:
    names = list(dict.fromkeys(p.group for p in tie.parts))
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return shown


def validate_ties(ties: list[Tie], groups: Mapping[str, Group]) -> None:
    """Raise ``ValueError`` (the plan loader turns it into ``PlanError``) for a tie naming a
    group the plan lacks, channels out of range, or parts of unequal sizes."""
    for tie in ties:
        sizes = set()
        for part in tie.parts:
            g = groups.get(part.group)
            if g is None:
                raise ValueError(f"tie of {_names(tie)}: plan has no group named {part.group!r}")
            chans = part_channels(part, g)
            if len(set(chans)) != len(chans) or not chans or max(chans) >= g.size:
                raise ValueError(f"tie of {_names(tie)}: channels of group {part.group} must be distinct and below {g.size}")
            sizes.add(len(chans))
        if len(sizes) != 1:
            raise ValueError(f"tie of {_names(tie)}: parts have unequal sizes {sorted(sizes)}")


def check_tied_overrides(plan: Plan) -> None:
    """Raise ``PlanError`` naming the groups of a tie whose ``ratio``/``keep`` overrides differ,
    or a ``keep`` that cannot leave every part of its group the same count."""
    groups = {g.name: g for g in plan.groups}
    for tie in plan.ties:
        tied = [groups[n] for n in dict.fromkeys(p.group for p in tie.parts)]
        overrides = {(g.ratio, g.keep) for g in tied}
        if len(overrides) > 1:
            raise PlanError(f"tie of groups {_names(tie)} ({tie.reason}): their ratio/keep overrides differ")
        for g in tied:
            parts = sum(1 for p in tie.parts if p.group == g.name)
            if g.keep is not None and parts > 1 and (g.size - g.keep) % parts:
                raise PlanError(f"group {g.name}: keep {g.keep} cannot remove equally from its {parts} tied parts ({tie.reason})")
        if len({g.prunable for g in tied}) > 1:
            raise PlanError(f"tie of groups {_names(tie)} ({tie.reason}): some are pinned, some prunable")


def _removed(tie: Tie, groups: Mapping[str, Group], masks: Mapping[str, Tensor]) -> list[int]:
    out = []
    for part in tie.parts:
        mask = masks.get(part.group)
        out.append(0 if mask is None else int(mask[part_channels(part, groups[part.group])].sum()))
    return out


def check_tied_masks(plan: Plan, masks: Mapping[str, Tensor]) -> None:
    """Raise ``PlanError`` naming the groups of the first tie the masks break (a group absent
    from ``masks`` removes nothing)."""
    groups = {g.name: g for g in plan.groups}
    for tie in plan.ties:
        removed = _removed(tie, groups, masks)
        if len(set(removed)) > 1:
            raise PlanError(
                f"masks break the tie of groups {_names(tie)}: they remove {removed} channels from its parts, "
                f"which must lose equal numbers ({tie.reason})"
            )


def snap_tied(plan: Plan, masks: dict[str, Tensor], scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Masks where every tie's parts lose the same number of channels (the rounded mean of
    what ranking gave them), each part its lowest-scored channels; never a whole group, nor
    fewer channels than a group's ``min_keep`` where its parts cover it."""
    groups = {g.name: g for g in plan.groups}
    out = dict(masks)
    for tie in plan.ties:
        if not all(groups[p.group].prunable and p.group in scores for p in tie.parts):
            continue
        removed = _removed(tie, groups, out)
        if len(set(removed)) == 1:
            continue
        per_group: dict[str, int] = {}
        for p in tie.parts:
            per_group[p.group] = per_group.get(p.group, 0) + 1
        size = len(part_channels(tie.parts[0], groups[tie.parts[0].group]))
        cap = min(size - (1 if per_group[p.group] * size == groups[p.group].size else 0) for p in tie.parts)
        cap = min([cap] + [(groups[g].size - groups[g].fewest) // n for g, n in per_group.items()])  # min_keep
        target = max(0, min(cap, round(sum(removed) / len(removed))))
        for p in tie.parts:
            chans = torch.as_tensor(part_channels(p, groups[p.group]))
            mask = out[p.group].clone() if p.group in out else torch.zeros(groups[p.group].size, dtype=torch.bool)
            mask[chans] = False
            mask[chans[torch.argsort(scores[p.group][chans], stable=True)[:target]]] = True
            out[p.group] = mask
    return out
