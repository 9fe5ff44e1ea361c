"""Does a plan fit a model? Names, axes, slices, and no element owned twice."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from ..errors import PlanError
from ..graph.list_attributes import int_list, read_size, size_holder
from .edits import check_edits
from .layout import strided_layout

if TYPE_CHECKING:  # schema imports this module for ``Plan.check``; no runtime import back
    from .schema import Plan

__all__ = ["check_plan"]


def check_plan(plan: Plan, model: object) -> None:
    """Raise ``PlanError`` naming the first group/member that does not fit ``model``.

    Args:
        plan: The plan (public entry point: ``Plan.check(model)``).
        model: The module it should describe.

    Raises:
        PlanError: A member names a missing tensor, an axis or slice out of range, indices the
            engine cannot view, overlapping slices, or an axis the plan does not cover fully;
            or an edit that cannot be applied (a planner pin lifted, ``ratio``/``keep`` on a
            pinned group, ``ratio`` and ``keep`` that disagree).
    """
    if not isinstance(model, nn.Module):
        raise PlanError(f"check needs an nn.Module, got {type(model).__name__}")
    check_edits(plan)
    tensors = {n: t for n, t in (*model.named_parameters(), *model.named_buffers())}
    owned: dict[tuple, np.ndarray] = {}
    first: dict[tuple, str] = {}
    fixed: dict[tuple[str, int], set[tuple]] = {}  # (param, axis) -> the fixed indices members cover
    for g in plan.groups:
        for m in g.members:
            where = f"group {g.name!r} member {m.param} axis {m.axis}"
            t = tensors.get(m.param)
            if t is None:
                raise PlanError(f"{where}: the model has no parameter or buffer {m.param!r}")
            if m.axis >= t.ndim:
                raise PlanError(f"{where}: axis out of range for shape {tuple(t.shape)}")
            if m.stop > t.shape[m.axis]:
                raise PlanError(f"{where}: slice {m.start}:{m.stop} exceeds axis size {t.shape[m.axis]}")
            layout = strided_layout(m.positions())
            if layout is None and g.prunable:
                raise PlanError(f"{where}: indices are not a strided pattern the engine can view")
            if layout is not None and len(m.order) != 3 + len(layout.sizes):
                raise PlanError(f"{where}: order {m.order} has the wrong length for its view")
            fix = tuple(tuple(f) for f in m.fix or ())
            if any(i >= t.shape[a] for a, i in fix):
                raise PlanError(f"{where}: fixed index {fix} out of range for shape {tuple(t.shape)}")
            if fix:
                fixed.setdefault((m.param, m.axis), set()).add(tuple(i for _, i in fix))
            key = (m.param, m.axis, fix, m.factor)  # an inner factor (head_dim) overlaps its axis's members
            mask = owned.setdefault(key, np.zeros(t.shape[m.axis], dtype=bool))
            idx = (np.asarray(m.positions())[:, None] * m.block + np.arange(m.block)).ravel()
            if mask[idx].any():
                raise PlanError(f"{where}: overlaps a slice owned by another member")
            mask[idx] = True
            first.setdefault(key, where)
    for (name, axis), seen in fixed.items():
        want = int(np.prod(tensors[name].shape[: len(next(iter(seen)))]))
        if len(seen) != want or (name, axis, (), 0) in owned:
            raise PlanError(f"member {name} axis {axis}: members fixed to single experts cover {len(seen)} of {want}")
    for key, mask in owned.items():
        if not mask.all():
            raise PlanError(
                f"{first[key]}: the plan covers {int(mask.sum())} of {mask.size} indices of this axis "
                "(is it a plan for another model?)"
            )
    _check_attributes(plan, model, tensors)


def _check_attributes(plan: Plan, model: nn.Module, tensors: dict[str, object]) -> None:
    """Every size attribute and attention scale a group names exists in ``model``."""
    modules = dict(model.named_modules())
    for g in plan.groups:
        for ref in g.sizes:
            holder = size_holder(modules, ref.owner)
            value = read_size(holder, ref.attr) if holder is not None else None
            if not (isinstance(value, int) or int_list(value)) or isinstance(value, bool):
                raise PlanError(f"group {g.name!r} size {ref.owner or 'model'}.{ref.attr}: the model has no such count")
        for s in g.scales:
            missing = [q for q in s.query if q not in tensors]
            if missing or (s.owner is not None and s.owner not in modules):
                what = f"tensor {missing[0]!r}" if missing else f"module {s.owner!r}"
                raise PlanError(f"group {g.name!r} attention scale: the model has no {what}")
