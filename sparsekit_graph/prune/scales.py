"""After surgery: keep attention scores exact when head_dim shrank (``Group.scales``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..plan.schema import Plan

__all__ = ["rescale_queries"]


def rescale_queries(model: nn.Module, plan: Plan, masks: dict[str, Tensor]) -> None:
    """For each attention whose head size a group pruned from ``d`` to ``d'`` elements, multiply
    its query projection by ``sqrt(d' / d)`` and set the scale attribute it passes to
    ``d' ** -0.5``: ``q k^T / sqrt(d')`` then equals the masked model's ``q k^T / sqrt(d)``, and so
    does a model rebuilt from the rewritten config. Tensors are replaced, never changed in place."""
    modules = dict(model.named_modules())
    for g in plan.groups:
        mask = masks.get(g.name)
        removed = int(mask.sum()) if mask is not None else 0
        for s in g.scales if removed else ():
            new_dim, factor = s.factor(removed)
            for name in s.query:
                owner, _, attr = name.rpartition(".")
                module = modules[owner]
                old = getattr(module, attr)
                with torch.no_grad():
                    scaled = old * factor
                store = module._parameters if attr in module._parameters else module._buffers
                store[attr] = nn.Parameter(scaled, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else scaled
            if s.owner is not None and s.attr is not None:
                setattr(modules[s.owner], s.attr, new_dim**-0.5)
