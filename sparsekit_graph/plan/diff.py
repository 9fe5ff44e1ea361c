"""What changed between two plans: groups added or removed, and per-group field changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import Group, Plan

__all__ = ["Change", "diff_plans"]

_FIELDS = ("size", "prunable", "reason", "zero_invariant", "ratio", "keep", "min_keep", "min_keep_reason")


@dataclass(frozen=True)
class Change:
    """One difference: ``field`` of group ``group`` went from ``old`` to ``new``.

    ``field`` is ``"group"`` for a group only one plan has (``old``/``new`` is ``None`` on the
    side that lacks it), ``"members"``/``"sizes"`` when those lists differ (shown as counts)."""

    group: str
    field: str
    old: Any
    new: Any


def diff_plans(a: Plan, b: Plan) -> list[Change]:
    """Differences from plan ``a`` to plan ``b``, in ``a``'s group order then ``b``'s new groups."""
    changes: list[Change] = []
    if a.model != b.model:
        changes.append(Change("", "model", a.model, b.model))
    if a.inputs != b.inputs:
        changes.append(Change("", "inputs", _inputs(a), _inputs(b)))
    theirs = {g.name: g for g in b.groups}
    ours = {g.name for g in a.groups}
    for g in a.groups:
        other = theirs.get(g.name)
        if other is None:
            changes.append(Change(g.name, "group", _summary(g), None))
            continue
        changes += [Change(g.name, f, getattr(g, f), getattr(other, f)) for f in _FIELDS if getattr(g, f) != getattr(other, f)]
        for f in ("members", "sizes"):
            if getattr(g, f) != getattr(other, f):
                changes.append(Change(g.name, f, f"{len(getattr(g, f))} entries", f"{len(getattr(other, f))} entries"))
    changes += [Change(g.name, "group", None, _summary(g)) for g in b.groups if g.name not in ours]
    return changes


def _summary(g: Group) -> str:
    return f"size {g.size}, {'prunable' if g.prunable else 'pinned'}"


def _inputs(p: Plan) -> str:
    return ", ".join(f"{i.name}{i.shape}" if i.tensor else f"{i.name}={i.value!r}" for i in p.inputs)
