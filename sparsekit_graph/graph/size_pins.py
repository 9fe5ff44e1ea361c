"""Pinning what the recorded size reads say (``size_reads`` records them while tracing): each
attribute that decided control flow or was used as a number pins, or costs zero-invariance of,
the axes it sizes; layer size attributes are linked to the axes they size."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from .attribute_sizes import pin_unfollowed_reads, read_only_where_literal, torch_layer
from .axes import AxisGraph, AxisId
from .computed_sizes import computed_sizes
from .layer_counts import counted_axes, sized_tensors
from .meta import SIZE_CONTROL
from .number_args import SizeUse
from .size_reads import CONFIG, READ_ATTRIBUTES
from .size_values import VALUE, Site

__all__ = ["pin_read_sizes"]


def pin_read_sizes(
    graph: AxisGraph, nodes: Any, modules: dict[str, nn.Module], uses: dict[Site, SizeUse | str], prefix: str = ""
) -> None:
    """Pin the axes each attribute in ``SIZE_CONTROL`` sizes (``_sized_axes``); an attribute
    used only as a number (``VALUE``) costs them their zero-invariance. ``uses``: how ops take
    the numbers made from sizes (``number_uses.size_arguments``)."""
    from .sizes import SIZE_ATTRIBUTES  # sizes -> config_reads -> this module

    nodes = list(nodes)
    out = next((n for n in reversed(nodes) if n.op == "output"), None)
    unknown = _link_layer_sizes(graph, nodes, modules, prefix)
    pin_unfollowed_reads(graph, nodes, modules, READ_ATTRIBUTES | SIZE_ATTRIBUTES, SIZE_ATTRIBUTES, prefix)
    control: dict[Site, Any] = dict(out.meta.get(SIZE_CONTROL, {})) if out is not None else {}
    for found in (uses, computed_sizes(graph, nodes, prefix), unknown):
        for site, use in found.items():
            if control.get(site) in (None, VALUE):
                control[site] = use
    if not control:
        return
    for (path, attr), kind in sorted(control.items()):
        layer = modules.get(path)
        if layer is None:
            _pin_config_reads(graph, modules, path, attr, kind)
            continue
        value = getattr(layer, attr, None)
        name = f"{path}.{attr}" if path else attr
        reason = _reason(name, value, kind)
        plain = read_only_where_literal(layer, attr, READ_ATTRIBUTES | SIZE_ATTRIBUTES, SIZE_ATTRIBUTES)  # its value changes too
        for a in _sized_axes(graph, nodes, layer, path, attr, prefix):
            if kind != VALUE or plain:
                graph.pin(a, reason)
            graph.mix(a, reason)


def _pin_config_reads(graph: AxisGraph, modules: dict[str, nn.Module], site: str, attr: str, kind: str) -> None:
    """A plain config's attribute that decided control flow pins the axes it sizes (its
    ``SizeSource``s, under the names ``sizes.size_sources`` gives the config)."""
    if not site.startswith(CONFIG):
        return
    key = int(site.removeprefix(CONFIG))
    root = modules.get("")
    owners = {
        ("config" if m is root or getattr(root, "config", None) is c else f"{p}.config")
        for p, m in modules.items()
        if id(c := m.__dict__.get("config")) == key
    }
    if not owners:
        return
    value = next(getattr(m.__dict__["config"], attr, None) for m in modules.values() if id(m.__dict__.get("config")) == key)
    reason = _reason(f"config.{attr}", value, kind)
    for a, refs in graph.size_refs.items():
        if any(r.owner in owners and r.attr == attr for r in refs):
            if kind != VALUE:
                graph.pin(a, reason)
            graph.mix(a, reason)


def _reason(name: str, value: Any, kind: Any) -> str:
    """Why the axes ``name`` sizes pin (or, ``VALUE``, are not zero-invariant)."""
    if kind == VALUE:
        return f"forward uses {name} = {value} as a number: removing a channel changes it"
    if isinstance(kind, SizeUse):
        return f"forward passes a number made from {name} = {value} as a size ({kind}): pruning changes the shape it gives"
    return f"python control flow on {name} = {value} ({kind}): the traced code would not follow a pruned size"


def _link_layer_sizes(graph: AxisGraph, nodes: list[fx.Node], modules: dict[str, nn.Module], prefix: str) -> dict[Site, Any]:
    """An axis shaped by a layer attribute (``view(b, self.a.out_channels, -1)``) is linked to
    the layer's axes it counts (``layer_counts``): surgery rewrites the attribute to the
    layer's new count, so the shaped axis must lose the same channels (another group of equal
    size, read by mistake or on purpose, is pruned with it). A torch.nn layer's attribute that
    counts no axis known to be its own (``mha.embed_dim``, ``conv.groups``, a grouped conv's
    ``in_channels``) is returned, to pin both sides (the layer's own rule may size its output
    by it: those axes are its business)."""
    unknown: dict[Site, Any] = {}
    own: dict[str, set] = {}
    for axis, sources in list(graph.size_refs.items()):
        for src in sources:
            layer = modules.get(src.owner)
            if layer is None or not src.attr or axis not in graph.sizes:
                continue
            counted = counted_axes(graph, nodes, layer, src.owner, src.attr, graph.size(axis), prefix)
            for sized in counted:
                graph.link(axis, sized)
            if counted or not torch_layer(type(layer)) or src.attr not in READ_ATTRIBUTES:
                continue
            if src.owner not in own:
                own[src.owner] = {a for n in _runs(nodes, src.owner) for a in _axes_of(graph, prefix + n.name)}
            if axis not in own[src.owner] and not _reaches(graph, axis, _tensor_axes(graph, layer, src.owner)):
                unknown[(src.owner, src.attr)] = SizeUse(f"of another axis: no axis of {src.owner} it counts is known")
    return unknown


def _runs(nodes: list[fx.Node], path: str) -> list[fx.Node]:
    """The nodes computing layer ``path``: its calls, or, for a layer traced through (a subclass
    with its own forward: timm's ``LayerNorm``), the nodes its forward runs directly."""
    from .sizes import module_stack  # sizes -> config_reads -> this module

    calls = [n for n in nodes if n.op == "call_module" and str(n.target) == path]
    return calls or [n for n in nodes if n.op == "call_function" and module_stack(n)[-1] == path]


def _tensor_axes(graph: AxisGraph, layer: nn.Module, path: str) -> set[AxisId]:
    """Every axis of the layer's own parameters and buffers."""
    owned = (*layer._parameters.items(), *layer._buffers.items())
    names = [(graph.canonical.get(id(t), f"{path}.{k}" if path else k), t) for k, t in owned if isinstance(t, Tensor)]
    return {a for name, t in names for d in range(t.ndim) if (a := ("p", name, d)) in graph.sizes}


def _reaches(graph: AxisGraph, axis: AxisId, targets: set[AxisId]) -> bool:
    """Is ``axis`` linked, through any chain of links, to one of ``targets`` (a rule that knew
    the layer linked them: ``F.conv2d(h, dw.weight, groups=dw.groups)``)?"""
    if not targets:
        return False
    seen, todo = {axis}, [axis]
    while todo:
        for b in graph.adj.get(todo.pop(), ()):
            if b in targets:
                return True
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return False


def _axes_of(graph: AxisGraph, name: str) -> list[AxisId]:
    """The axes of node ``name``'s value (every tensor of a tuple)."""
    found = list(graph.values.get(name, ()))
    i = 0
    while (f"{name}.{i}") in graph.values:
        found += graph.values[f"{name}.{i}"]
        i += 1
    return found


def _sized_axes(graph: AxisGraph, nodes: list[fx.Node], layer: nn.Module, path: str, attr: str, prefix: str) -> list:
    """The axes ``layer.attr`` counts: those its layer type names (``_sized``), else the
    layer's tensors' axes of that length, plus the axes a literal of it shaped; where none
    is found, the layer's output axes of that length, else every axis of its tensors."""
    from .sizes import SIZE_ATTRIBUTES  # sizes -> config_reads -> this module

    referenced = [a for a, refs in graph.size_refs.items() if any((r.owner, r.attr) == (path, attr) for r in refs)]
    if read_only_where_literal(layer, attr, READ_ATTRIBUTES | SIZE_ATTRIBUTES, SIZE_ATTRIBUTES):
        return referenced
    value = getattr(layer, attr, None)
    lengths = set(value) if isinstance(value, tuple) else {value}
    owned = (*layer._parameters.items(), *layer._buffers.items())
    tensors = {k: (graph.canonical.get(id(t), f"{path}.{k}" if path else k), t) for k, t in owned if isinstance(t, Tensor)}
    axes = [("p", tensors[k][0], d) for k, d in sized_tensors(layer, attr) if k in tensors and tensors[k][1].shape[d] in lengths]
    axes = [a for a in axes if a in graph.sizes]
    if not axes:
        axes = [("p", k, d) for k, t in tensors.values() for d, n in enumerate(t.shape) if n in lengths]
        axes = [a for a in axes if a in graph.sizes]
    axes += referenced
    if not axes:
        own = [n for n in nodes if (n.op == "call_module" and str(n.target) == path) or _innermost(n) == path]
        axes = [a for n in own for a in graph.values.get(prefix + n.name, []) if graph.sizes[a] in lengths]
    if not axes:
        axes = [a for k, t in tensors.values() for d in range(t.ndim) if (a := ("p", k, d)) in graph.sizes]
    return axes


def _innermost(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = str(next(reversed(stack.values()))[0])
    return path.removeprefix("L['self'].").removeprefix("L['self']")
