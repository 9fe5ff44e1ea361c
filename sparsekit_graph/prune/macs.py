"""Multiply-accumulate counts read off a traced graph (convolutions and linear layers)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph.meta import META
from ..graph.normalize import normalize
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
_CONVS = (F.conv1d, F.conv2d, F.conv3d)


def count_macs(graph: fx.Graph, model: nn.Module) -> int:
    """MACs of one forward, from the shapes stored on a traced graph's nodes: layers, and the
    functional linear, convolution and ``addmm`` calls of graphs from ``torch.export``."""
    modules = dict(model.named_modules())
    total = 0
    for node in graph.nodes:
        out = node.meta.get(META)
        if not isinstance(out, Tensor):
            continue
        if node.op == "call_module":
            count = by_type(_COUNTERS, modules[str(node.target)])
            total += count(modules[str(node.target)], out) if count is not None else 0
        elif node.op == "call_function":
            total += _function_macs(node, out)
    return total


def _function_macs(node: fx.Node, out: Tensor) -> int:
    call = normalize(node)
    if call.op is F.linear or call.op in _CONVS:
        w = _value(call.args.get("weight"))
        return out.numel() * math.prod(w.shape[1:]) if isinstance(w, Tensor) else 0
    if call.op is torch.addmm:
        a = _value(call.args.get("mat1"))
        return out.numel() * a.shape[-1] if isinstance(a, Tensor) else 0
    return 0


def _value(x: object) -> object:
    return x.meta.get(META) if isinstance(x, fx.Node) else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
