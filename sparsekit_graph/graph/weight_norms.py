"""The forward pre-hook of ``nn.utils.weight_norm`` (the hook-based API, kept by WavLM, SEW and
older checkpoints): it sets ``module.<name>`` to ``torch._weight_norm(<name>_v, <name>_g, dim)``
before every call. That is all it does, so a layer holding only such hooks is planned as if its
weight were that op (``RuleContext.param``), and surgery recomputes the weight after slicing
``<name>_v`` and ``<name>_g`` (``refresh_weight_norms``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["only_weight_norm_pre_hooks", "refresh_weight_norms", "weight_norm_hook"]


def weight_norm_hook(module: nn.Module, name: str) -> WeightNorm | None:
    """The ``WeightNorm`` pre-hook that computes ``module.<name>``, or None."""
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm) and h.name == name), None)


def only_weight_norm_pre_hooks(module: nn.Module) -> bool:
    """Are all of ``module``'s forward pre-hooks ``WeightNorm``s (and it has some)?"""
    hooks = module._forward_pre_hooks.values()
    return bool(hooks) and all(isinstance(h, WeightNorm) for h in hooks)


def refresh_weight_norms(model: nn.Module) -> None:
    """Recompute every weight-normed tensor from its (sliced) ``_v`` and ``_g``, as the hook would."""
    for m in model.modules():
        for h in list(m._forward_pre_hooks.values()):
            if isinstance(h, WeightNorm):
                with torch.no_grad():
                    setattr(m, h.name, h.compute_weight(m))
