"""Multiply-accumulate counts read off a traced graph (convolutions and linear layers)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.fx as fx
from torch import Tensor, nn

from ..graph.meta import META
from ..registry import by_type

__all__ = ["count_macs", "count_params"]

_COUNTERS: dict[type, Callable[[nn.Module, Tensor], int]] = {
    nn.modules.conv._ConvNd: lambda m, out: (
        out.numel()
        * (m.in_channels if not m.transposed else m.out_channels)  # type: ignore[attr-defined]
        // m.groups  # type: ignore[attr-defined]
        * math.prod(m.kernel_size)
    ),  # type: ignore[attr-defined]
    nn.Linear: lambda m, out: out.numel() * m.in_features,  # type: ignore[attr-defined]
}


def count_macs(gm: fx.GraphModule, model: nn.Module) -> int:
    """MACs of one forward, from the shapes stored on a traced graph's nodes."""
    modules = dict(model.named_modules())
    total = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m, out = modules[str(node.target)], node.meta.get(META)
        count = by_type(_COUNTERS, m)
        if count is not None and isinstance(out, Tensor):
            total += count(m, out)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
