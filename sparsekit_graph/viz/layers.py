"""The model's graph at layer level: one node per layer call, edges as data flows, each layer
tagged with the plan's groups that own its parameters' channels.

A torch.fx graph is already at layer level (a node per module call or function). A graph from
``torch.export`` (ATen ops) is folded back: the ops of one leaf module become that layer, ops
that join two data paths (residual adds, attention products) stay, and single-input plumbing
(views, transposes, casts) is skipped with its edges passed through.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ..graph.meta import META
from ..graph.sizes import module_stack
from ..graph.trace import is_exported, trace_graph
from ..plan.schema import Plan

__all__ = ["Layer", "LayerGraph", "layer_graph"]

# Callables that only unpack values (fx graphs): skipped, their edges passed through.
_PLUMBING: set[Any] = {operator.getitem}


@dataclass
class Layer:
    """One drawn node: ``name`` (module path or op), ``kind`` (layer type and output shape),
    the groups (indices into ``plan.groups``) of its output and input channels."""

    key: str
    name: str
    kind: str
    out_groups: list[int] = field(default_factory=list)
    in_groups: list[int] = field(default_factory=list)
    inherited: bool = False  # coloured after the layer feeding it (no parameters of its own)


@dataclass
class LayerGraph:
    """Layers in execution order and ``(source, target)`` edges between their keys."""

    plan: Plan
    layers: dict[str, Layer]
    edges: list[tuple[str, str]]

    def groups_of(self, key: str) -> list[int]:
        layer = self.layers[key]
        return sorted({*layer.out_groups, *layer.in_groups})


def layer_graph(model: nn.Module, example_inputs: Any, plan: Plan) -> LayerGraph:
    """Trace ``model`` (shapes on meta; weights never read) and fold its graph to layers."""
    graph = trace_graph(model, example_inputs)
    exported = is_exported(graph)
    data = _on_data_path(graph)
    owner: dict[fx.Node, str | None] = {}
    layers: dict[str, Layer] = {}
    leaves = {name for name, m in model.named_modules() if not any(True for _ in m.children())}
    segments = _Segments()
    for n in graph.nodes:
        key, name, kind = _classify(n, exported, data, leaves, segments)
        owner[n] = key
        if key is not None and key not in layers:
            layers[key] = Layer(key, name, kind)
        elif key is not None and key.startswith("ops:"):
            layers[key].kind = _join_kinds(layers[key].kind, kind)
    edges = _edges(graph, owner)
    _tag_groups(model, plan, graph, owner, layers, edges)
    return LayerGraph(plan, layers, edges)


def _value(n: fx.Node) -> Any:
    return n.meta.get(META, n.meta.get("val"))


def _shape(n: fx.Node) -> str:
    v = _value(n)
    if isinstance(v, Tensor) and v.ndim:
        return "x".join(str(s) for s in v.shape[1:]) if v.ndim > 1 else str(v.shape[0])
    return ""


def _on_data_path(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that depend on a tensor input of the model."""
    out: set[fx.Node] = set()
    for n in graph.nodes:
        if (n.op == "placeholder" and isinstance(_value(n), Tensor)) or any(i in out for i in n.all_input_nodes):
            out.add(n)
    return out


class _Segments:
    """Ops a non-leaf module runs itself (residual adds, attention maths), folded into one layer
    per run between its sub-layers' calls: a decoder block's two residual adds stay two layers."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.open: set[str] = set()

    def leaf_called(self, stack: list[str]) -> None:
        for m in stack:
            if m in self.open:
                self.open.discard(m)
                self.index[m] = self.index.get(m, 0) + 1

    def key(self, module: str) -> str:
        self.open.add(module)
        return f"ops:{module}#{self.index.get(module, 0)}"


def _classify(
    n: fx.Node, exported: bool, data: set[fx.Node], leaves: set[str], segments: _Segments
) -> tuple[str | None, str, str]:
    """The layer key of ``n`` (None: skipped), its display name and kind."""
    if n.op == "placeholder":
        return (f"input:{n.name}", n.name, f"input {_shape(n)}") if n in data else (None, "", "")
    if n.op == "output":
        return "output", "output", ""
    if n.op == "get_attr" or n not in data:
        return None, "", ""
    if n.op == "call_module":
        return f"call:{n.name}", str(n.target), ""
    op = getattr(n.target, "__name__", str(n.target))
    if exported:
        stack = module_stack(n)
        leaf = next((p for p in reversed(stack) if p and p in leaves), None)
        if leaf is not None:
            segments.leaf_called(stack)
            return f"module:{leaf}", leaf, ""
        if sum(i in data for i in n.all_input_nodes) < 2:
            return None, "", ""
        return segments.key(stack[-1]), stack[-1] or "(model)", op.partition(".")[0]
    if n.target in _PLUMBING:
        return None, "", ""
    return f"op:{n.name}", n.name, f"{op} {_shape(n)}".strip()


def _join_kinds(kinds: str, op: str) -> str:
    """``"mul, cat, add, ..."``: the distinct ops of a folded layer, the first three named."""
    names = [k for k in kinds.removesuffix(", ...").split(", ") if k]
    if op in names:
        return kinds
    return ", ".join([*names, op]) if len(names) < 3 else ", ".join(names) + ", ..."


def _edges(graph: fx.Graph, owner: dict[fx.Node, str | None]) -> list[tuple[str, str]]:
    """Edges between layers, through skipped nodes; edges against execution order dropped."""
    sources: dict[fx.Node, set[str]] = {}
    feeds_of: dict[fx.Node, set[str]] = {}
    order: dict[str, int] = {}
    for n in graph.nodes:
        key = owner[n]
        if key is not None:
            order.setdefault(key, len(order))
        feeds: set[str] = set()
        for i in n.all_input_nodes:
            feeds |= {owner[i]} if owner[i] is not None else sources.get(i, set())  # type: ignore[arg-type]
        sources[n] = feeds if key is None else {key}
        feeds_of[n] = feeds
    edges: dict[tuple[str, str], None] = {}
    for n in graph.nodes:
        key = owner[n]
        for s in sorted(feeds_of[n]):
            if key is not None and s != key and order[s] < order[key]:
                edges[(s, key)] = None
    return list(edges)


def _tag_groups(
    model: nn.Module, plan: Plan, graph: fx.Graph, owner: dict[fx.Node, str | None], layers: dict[str, Layer], edges: list
) -> None:
    """Output/input groups of each layer from its parameters; parameter-free layers take the
    output groups of the first layer feeding them when their channel count matches."""
    by_param: dict[str, dict[int, list[int]]] = {}
    for gi, g in enumerate(plan.groups):
        for m in g.members:
            by_param.setdefault(m.param, {}).setdefault(m.axis, []).append(gi)
    params = dict(model.named_parameters())
    last: dict[str, fx.Node] = {}
    for n in graph.nodes:
        if owner[n] is not None:
            last[owner[n]] = n  # type: ignore[index]
    for key, layer in layers.items():
        module = layer.name if key.startswith(("call:", "module:")) else None
        out = _value(last[key]) if key in last else None
        channels = _channels(out)
        if module is not None:
            shapes = {name: p.shape for name, p in params.items() if name.rpartition(".")[0] == module}
            layer.kind = layer.kind or f"{type(model.get_submodule(module)).__name__} {_shape(last[key])}".strip()
            for name, shape in shapes.items():
                axes = by_param.get(name, {})
                out_axis = next((a for a in sorted(axes) if shape[a] == channels), 0)
                for a, gs in axes.items():
                    target = layer.out_groups if a == out_axis else layer.in_groups
                    target.extend(g for g in gs if g not in target)
            layer.in_groups = [g for g in layer.in_groups if g not in layer.out_groups]
    incoming: dict[str, list[str]] = {}
    for s, t in edges:
        incoming.setdefault(t, []).append(s)
    for key, layer in layers.items():  # execution order: feeders are tagged first
        if layer.out_groups or key == "output":
            continue
        channels = _channels(_value(last[key])) if key in last else None
        for s in incoming.get(key, []):
            src = layers[s]
            gs = [g for g in src.out_groups if plan.groups[g].size == channels]
            if gs:
                layer.out_groups, layer.inherited = gs, True
                break


def _channels(v: Any) -> int | None:
    """The channel count of a layer output: dim 1 of an image-like (N, C, H, W), else the last."""
    if not isinstance(v, Tensor) or v.ndim == 0:
        return None
    return int(v.shape[1]) if v.ndim == 4 else int(v.shape[-1])
