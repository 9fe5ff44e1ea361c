"""User edits of a plan (per-group ``ratio``, ``keep``, ``prunable``): can they be applied?

A plan file is meant to be edited: a group may get its own ``ratio`` or ``keep``, and a prunable
group may be pinned (``prunable: false`` with a ``reason``). What the planner decided for
safety cannot be undone: a group it pinned (an unknown op, an argument no rule reads, a model
output...) stays pinned, and the structure (sizes, members, size attributes) is the planner's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import PlanError

if TYPE_CHECKING:  # schema imports check, which imports this module
    from .schema import Group, Plan

__all__ = ["STRUCTURE_FIELDS", "check_against", "check_edits", "pin_ignored"]

# Fields the planner owns; an edited plan must keep them as planned.
STRUCTURE_FIELDS = ("size", "members", "sizes", "scales", "follows", "zero_invariant", "min_keep")


def check_edits(plan: Plan) -> None:
    """Raise ``PlanError`` naming the first group and field whose edit cannot be applied.

    Without the planner's plan to compare with, a planner pin is recognised by its ``reason``:
    the planner gives a reason to every group it pins and to no prunable group, so a group
    marked ``prunable: true`` that still carries a reason was unpinned by hand.
    """
    for g in plan.groups:
        if g.prunable and g.reason is not None:
            raise PlanError(
                f"group {g.name!r} field prunable: the planner pinned this group ({g.reason}); a safety pin cannot be lifted"
            )
        if not g.prunable:
            _no_override_on_pinned(g)
        if g.ratio is not None and g.keep is not None and g.keep != g.size - int(g.size * g.ratio):
            raise PlanError(
                f"group {g.name!r} fields ratio and keep disagree ({g.ratio} keeps {g.size - int(g.size * g.ratio)}, "
                f"keep is {g.keep}): set one of them"
            )
        if g.ratio is not None and g.size - int(g.size * g.ratio) < 1:
            raise PlanError(f"group {g.name!r} field ratio: {g.ratio} would remove every one of its {g.size} channels")
        if g.keep is not None and g.keep < g.fewest:
            raise PlanError(f"group {g.name!r} field keep: {g.keep} is below min_keep {g.min_keep} ({g.min_keep_reason})")


def _no_override_on_pinned(g: Group) -> None:
    if g.ratio is not None and int(g.size * g.ratio) > 0:
        raise PlanError(f"group {g.name!r} field ratio: the group is pinned ({g.reason}); it keeps all {g.size} channels")
    if g.keep is not None and g.keep < g.size:
        raise PlanError(f"group {g.name!r} field keep: the group is pinned ({g.reason}); it keeps all {g.size} channels")


def check_against(edited: Plan, base: Plan) -> None:
    """Raise ``PlanError`` unless ``edited`` is ``base`` (the planner's plan of the same model)
    with applicable edits: the same groups and structure, no planner pin lifted."""
    check_edits(edited)
    planned = {g.name: g for g in base.groups}
    names = [g.name for g in edited.groups]
    extra = [n for n in names if n not in planned]
    if extra:
        raise PlanError(f"group {extra[0]!r}: the planner finds no such group in this model (is the plan for another model?)")
    missing = [n for n in planned if n not in set(names)]
    if missing:
        raise PlanError(f"group {missing[0]!r}: missing from the plan (the planner finds it in this model)")
    if getattr(edited, "ties", None) != getattr(base, "ties", None):
        raise PlanError("plan field ties: differs from the planner's (ties are not edits)")
    for g in edited.groups:
        b = planned[g.name]
        for field in STRUCTURE_FIELDS:
            if getattr(g, field) != getattr(b, field):
                raise PlanError(f"group {g.name!r} field {field}: differs from the planner's (edit only ratio, keep, prunable)")
        if g.prunable and not b.prunable:
            raise PlanError(
                f"group {g.name!r} field prunable: the planner pinned this group ({b.reason}); a safety pin cannot be lifted"
            )


def pin_ignored(plan: Plan, names: Sequence[str]) -> Plan:
    """``plan`` with every group that owns a slice of a parameter under ``names`` (module or
    parameter names) pinned, as ``plan(..., ignore=names)`` would.

    Raises:
        PlanError: A name covers no parameter of the plan.
    """
    if not names:
        return plan
    groups = list(plan.groups)
    for name in names:
        hit = [i for i, g in enumerate(groups) if any(m.param == name or m.param.startswith(name + ".") for m in g.members)]
        if not hit:
            raise PlanError(f"ignore: no parameter of the plan is named {name!r} or lies under it")
        for i in hit:
            if groups[i].prunable:
                pin = {"prunable": False, "reason": f"ignored: {name}", "ratio": None, "keep": None}
                groups[i] = groups[i].model_copy(update=pin)
    return plan.model_copy(update={"groups": groups})
