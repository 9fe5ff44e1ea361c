"""Which plans the planner made, and for which model.

``prune`` trusts a plan ``plan()`` returned for a model of the same structure (module types,
parameter and buffer names, shapes and dtypes) as it is; any other plan (loaded from a file,
edited in Python, made for another model or dtype) it plans again to compare
(``planner.check_planned``).
"""

from __future__ import annotations

import weakref

from torch import nn

from .schema import Plan

__all__ = ["made_for", "remember"]

_MADE: dict[int, tuple[int, int]] = {}  # id(plan) -> (model signature, plan signature)


def remember(plan: Plan, model: nn.Module) -> None:
    """Note that the planner made ``plan`` for ``model`` as it is now."""
    _MADE[id(plan)] = (_model_signature(model), _plan_signature(plan))
    weakref.finalize(plan, _MADE.pop, id(plan), None)


def made_for(plan: Plan, model: nn.Module) -> bool:
    """Did the planner make ``plan``, unchanged, for a model like ``model``?"""
    return _MADE.get(id(plan)) == (_model_signature(model), _plan_signature(plan))


def _model_signature(model: nn.Module) -> int:
    modules = tuple((name, type(m)) for name, m in model.named_modules(remove_duplicate=False))
    tensors = tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    )
    return hash((type(model), modules, tensors))


def _plan_signature(plan: Plan) -> int:
    """Cheap, but changed by any edit of a group's lists in place (``plan.groups.pop()``)."""
    return hash(tuple((g.name, g.size, g.prunable, g.zero_invariant, g.ratio, g.keep, len(g.members)) for g in plan.groups))
