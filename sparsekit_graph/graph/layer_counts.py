"""Which axes of a torch.nn layer a size attribute of it counts (``conv.out_channels``: axis 0
of its weight and bias; ``norm.normalized_shape``: the norm's weight; ``mha.num_heads``: its
heads). Surgery rewrites such an attribute whenever the layer loses channels, so an axis the
model's code sized by reading it (``h.view(b, self.norm.normalized_shape[0], -1)``) must lose
the same channels: ``size_pins`` links the two, and pins both where this table does not say
which axes the attribute counts (``kdim``, ``groups``, ``head_dim``: never a channel count
that pruning keeps in step)."""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from torch import Tensor, nn

from .axes import AxisGraph, AxisId

__all__ = ["counted_axes", "sized_tensors"]


def sized_tensors(layer: nn.Module, attr: str) -> list[tuple[str, int]]:
    """(tensor, axis) pairs of a layer that ``attr`` counts, where the layer type says so
    (``in_channels`` is a conv weight's axis 1, or 0 when transposed); empty where it does not."""
    t = int(bool(getattr(layer, "transposed", False)))
    if attr == "normalized_shape":
        shape = getattr(layer, attr, ())
        return [(k, d) for d in range(len(shape) if isinstance(shape, tuple) else 0) for k in ("weight", "bias")]
    table: dict[str, list[tuple[str, int]]] = {
        "out_channels": [("weight", t), ("bias", 0)],
        "in_channels": [("weight", 1 - t)],
        "out_features": [("weight", 0), ("bias", 0)],
        "in_features": [("weight", 1)],
        "in1_features": [("weight", 1)],
        "in2_features": [("weight", 2)],
        "embedding_dim": [("weight", 1)],
        "num_embeddings": [("weight", 0)],
        "num_features": [("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)],
        "num_channels": [("weight", 0), ("bias", 0)],
        "num_parameters": [("weight", 0)],
    }
    return table.get(attr, [])


def counted_axes(
    graph: AxisGraph, nodes: Iterable[fx.Node], layer: nn.Module, path: str, attr: str, size: int, prefix: str
) -> list[AxisId]:
    """The axes of ``layer`` (at ``path``) of length ``size`` that ``attr`` counts; empty where
    none is known (an attribute no table names, or a length that is not the attribute's: a
    grouped conv's ``in_channels``). Several dims of one ``normalized_shape`` of that length:
    which one the code meant is unknown, so none."""
    if isinstance(layer, nn.MultiheadAttention) and attr == "num_heads":
        heads = [("v", f"{prefix}{n.name}:heads", 0) for n in nodes if n.op == "call_module" and str(n.target) == path]
        return [a for a in heads if a in graph.sizes and graph.size(a) == size]
    found: list[AxisId] = []
    dims: set[int] = set()  # of a ``normalized_shape``
    for k, d in sized_tensors(layer, attr):
        t = getattr(layer, k, None)
        if not isinstance(t, Tensor) or t.ndim <= d or t.shape[d] != size:
            continue
        axis = ("p", graph.canonical.get(id(t), f"{path}.{k}" if path else k), d)
        if axis in graph.sizes:
            found.append(axis)
            dims.add(d)
    return found if attr != "normalized_shape" or len(dims) == 1 else []
