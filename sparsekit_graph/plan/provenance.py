"""Which plans the planner made, and for which model.

``prune`` trusts a plan ``plan()`` returned, unchanged, for a model of the same structure
(module types and the plain values set on them, parameter and buffer names, shapes and dtypes)
as it is; any other plan (loaded from a file, edited, made for another model, flag or dtype) it
plans again to compare (``planner.check_planned``).
"""

from __future__ import annotations

import weakref

from torch import Tensor, nn

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
    """Module types, the plain values and functions set on each (what forward may branch on:
    ``self.norm = True``, a config's flags), and every tensor's name, shape and dtype."""
    modules = tuple((name, type(m), _plain_values(m)) for name, m in model.named_modules(remove_duplicate=False))
    tensors = tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    )
    return hash((type(model), modules, tensors))


_PLAIN = (bool, int, float, str, type(None))


def _plain_values(obj: object, depth: int = 0) -> tuple:
    found = []
    for key, v in vars(obj).items():
        if isinstance(v, _PLAIN) or (type(v) in (tuple, list) and all(isinstance(e, _PLAIN) for e in v)):
            found.append((key, v if type(v) is not list else tuple(v)))
        elif isinstance(v, (nn.Module, Tensor, dict, set)):
            continue  # submodules and tensors are listed apart; hook tables hold no forward
        elif callable(v):
            found.append((key, id(v)))  # ``model.forward = ...`` on the instance
        elif depth == 0 and hasattr(v, "__dict__"):
            found.append((key, _plain_values(v, 1)))  # a config object the forward reads
    return tuple(found)


def _plan_signature(plan: Plan) -> int:
    """The whole plan: any edit in place (``plan.groups[i] = ...``) changes it."""
    return hash(plan.model_dump_json())
