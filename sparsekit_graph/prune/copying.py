"""The working copy ``prune`` operates on."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["copy_model"]


def copy_model(model: nn.Module, *, weights: bool = True) -> nn.Module:
    """A deep copy of ``model``.

    A tensor a layer computes and keeps as a plain attribute (``module.weight`` under the old
    ``nn.utils.weight_norm``, recomputed by a pre-hook before every forward) is no graph leaf,
    and torch refuses to deep-copy it: it is copied detached. Nothing of ``model`` changes.
    ``weights=False``: parameters are uninitialised tensors of their shapes, dtypes and devices
    (nothing copied; enough to trace the copy), buffers are copied.
    """
    memo: dict[int, object] = {}
    if not weights:
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)
    for m in model.modules():
        for v in m.__dict__.values():
            if isinstance(v, Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)
