"""Integer tensors whose values are positions along an axis: their *domain*.

``h.argmax(1)``, ``h.max(1).indices``, ``logits.topk(2)[1]``, ``h.sort(1).indices``: each value
counts positions along ``h``'s axis 1. Pruning that axis renumbers the positions after a removed
channel, so whatever reads the values (an embedding lookup, ``idx == e``, ``w[idx]``,
``one_hot``) would read another row or expert than the dense model. The domain is recorded on
the positions' node; shape-only ops pass it on; an index into an axis of the domain's length
makes the two one axis (``w[idx]``: the router's rows and the experts' slabs go together, whole
experts); any other read, the model's output included, pins the domain.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from .aten import NO_EFFECT_OPS, is_aten
from .axes import AxisId
from .context import RuleContext
from .sizes import SizeSource, module_stack

__all__ = ["EXPERT_COUNT_ATTRIBUTES", "count_experts", "follow_domains", "index_by_positions", "record_positions"]

# Attributes (of layers or configs) that count experts: rewritten when whole experts go.
EXPERT_COUNT_ATTRIBUTES: set[str] = {"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"}

# op -> which of its outputs holds positions along ``dim`` (None: its only output).
_POSITIONS: dict[Callable[..., Any], int | None] = {
    torch.argmax: None, torch.argmin: None, torch.argsort: None, torch.topk: 1, torch.sort: 1, torch.max: 1,
    torch.min: 1, torch.median: 1, torch.nanmedian: 1, torch.mode: 1, torch.kthvalue: 1, torch.cummax: 1,
    torch.cummin: 1,
}  # fmt: skip
_PARTS = {k for k in _POSITIONS.values() if k is not None}  # the outputs of a tuple that may hold positions
_DEFAULT_LAST = {torch.topk, torch.sort, torch.argsort, torch.mode, torch.kthvalue}  # ``dim`` defaults to -1

# Ops that move integer positions around without reading them as numbers (``torch.export``'s slices too).
_PASS = {torch.Tensor.view, torch.reshape, torch.Tensor.reshape, torch.flatten, torch.clone, torch.Tensor.to,
         torch.Tensor.contiguous, torch.unsqueeze, torch.squeeze, torch.Tensor.unsqueeze, torch.Tensor.squeeze,
         torch.select, torch.ops.aten.slice, torch.Tensor.expand, torch.Tensor.long, torch.Tensor.int,
         torch.Tensor.detach, torch.detach}  # fmt: skip
_READ_SHAPE = {torch.Tensor.size, torch.Tensor.numel, torch.numel, torch.Tensor.dim}
_METADATA = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}  # ``idx.shape``: no value read
_FIELDS = {"values": 0, "indices": 1}  # ``h.max(1).indices``


def record_positions(ctx: RuleContext) -> None:
    """After the rule of an op that returns positions along ``dim`` (``argmax``, ``topk``'s
    indices): the input's axis there is the positions' domain. Positions over the flattened
    input (``h.argmax()``) count every axis: those pin."""
    op = ctx.call.op
    if op not in _POSITIONS or ctx.arg("other") is not None:  # ``torch.max(a, b)``: elementwise
        return
    src = ctx.axes(ctx.input)
    dim = ctx.arg("dim", -1 if op in _DEFAULT_LAST else None)
    if src is None or (dim is None and op not in (torch.argmax, torch.argmin)):
        return  # ``h.max()``: a value, no positions
    if not isinstance(dim, int) or isinstance(dim, bool):
        ctx.pin(src, f"positions over every axis at {ctx.where()}")
        return
    k = _POSITIONS[op]
    key = ctx.prefix + ctx.node.name + ("" if k is None else f".{k}")
    ctx.graph.domains[key] = src[dim % len(src)]


def index_by_positions(ctx: RuleContext, index: object, axis: AxisId) -> bool:
    """``x[idx]`` with ``idx`` positions of a known axis, indexing ``axis`` of ``x``: the two are
    one axis (True). False where ``idx`` holds no known positions or ``axis`` has another length
    (then ``follow_domains`` pins the domain)."""
    graph = ctx.graph
    domain = graph.domains.get(ctx.prefix + index.name) if isinstance(index, fx.Node) else None
    if domain is None or graph.size(domain) != graph.size(axis):
        return False
    graph.link(domain, axis)
    graph.domain_reads.add(ctx.prefix + ctx.node.name)
    if axis[0] == "p" and axis[2] == 0:  # stacked experts: whole slabs go with the router's rows
        graph.gathered[axis[1]] = domain
        count_experts(ctx, axis)
    return True


def follow_domains(ctx: RuleContext) -> None:
    """After a node's rule: pass positions' domains through shape-only ops and tuple unpacking;
    pin a domain that any other op reads (or the model returns), except where the node's rule
    linked it (``index_by_positions``)."""
    graph = ctx.graph
    if not graph.domains:
        return
    node, prefix = ctx.node, ctx.prefix
    inputs: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: inputs.append(n) or n)
    part = _tuple_part(ctx, node)
    if part is not None:
        key = f"{prefix}{part[0].name}.{part[1]}"
        if key in graph.domains:
            graph.domains[prefix + node.name] = graph.domains[key]
        return
    held = {prefix + n.name for n in inputs} | {f"{prefix}{n.name}.{k}" for n in inputs for k in _PARTS}  # a tuple read whole too
    found = [graph.domains[key] for key in held if key in graph.domains]
    if not found or prefix + node.name in graph.domain_reads or (node.target is getattr and node.args[1] in _METADATA):
        return
    if node.op != "output":
        op = ctx.call.op
        if (is_aten(node.target) and node.target.overloadpacket.__name__ in NO_EFFECT_OPS) or op in _READ_SHAPE:
            return
        out = ctx.out_value
        if isinstance(out, Tensor) and not out.is_floating_point() and (op in _PASS or _shape_only_index(node)):
            graph.domains[prefix + node.name] = found[0]
            return
    for axis in found:
        graph.pin(axis, f"positions along it read by {ctx.where()}")


def _tuple_part(ctx: RuleContext, node: fx.Node) -> tuple[fx.Node, int] | None:
    """``(t, k)`` where ``node`` takes output ``k`` of a node ``t`` that returns several
    (``topk(...)[1]``, ``h.max(1).indices``), else None."""
    if node.op != "call_function" or node.target not in (operator.getitem, getattr) or len(node.args) != 2:
        return None
    source, key = node.args
    if not isinstance(source, fx.Node) or not isinstance(ctx.meta(source), (tuple, list)):
        return None
    k = _FIELDS.get(key) if isinstance(key, str) else key
    return (source, k) if isinstance(k, int) and not isinstance(k, bool) else None


def _shape_only_index(node: fx.Node) -> bool:
    """``idx[:, 0]``, ``idx[..., None]``: indexing by numbers and slices only."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return False
    items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items) and not any(
        isinstance(e, fx.Node) for i in items if isinstance(i, slice) for e in (i.start, i.stop, i.step)
    )


def count_experts(ctx: RuleContext, axis: AxisId) -> None:
    """Expert-count attributes equal to the axis's size, on the modules running the node and
    on the config: surgery rewrites them when whole experts go."""
    n = ctx.graph.size(axis)
    root = getattr(ctx.modules.get(""), "config", None)
    found = []
    for path in module_stack(ctx.node):
        module = ctx.modules.get(path)
        config = getattr(module, "config", None)
        holders = [(module, path)] + ([(config, "config" if config is root else f"{path}.config")] if config is not None else [])
        for holder, owner in holders:
            for attr in sorted(EXPERT_COUNT_ATTRIBUTES):
                v = getattr(holder, attr, None)
                if isinstance(v, int) and not isinstance(v, bool) and v == n:
                    found.append(SizeSource(owner, attr))
    if found:
        ctx.graph.size_refs.setdefault(axis, set()).update(found)
        for src in found:
            ctx.graph.size_values[src] = n
