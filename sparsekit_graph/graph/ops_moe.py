"""Mixture-of-experts routing: ``topk`` over router scores, and stacked expert weights
gathered by the chosen indices (``gate_up_proj[expert_ids]``: transformers' ``batched_mm``).

The integer tensor ``topk`` returns indexes an axis (the experts of the router's scores): its
*domain*. Shape-only ops pass a domain on; a parameter indexed by it on axis 0 has that axis
linked to the domain, so the router's rows and the experts' slabs form one group (whole
experts). Any other use of the indices pins the domain: the code might depend on the count.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import Tensor

from .aten import NO_EFFECT_OPS, is_aten
from .axes import AxisId
from .context import RuleContext
from .ops_gather import pick_fixed_positions
from .ops_matmul import is_weight
from .rules import register_function_rule
from .sizes import SizeSource, module_stack, register_size_attribute

__all__ = ["EXPERT_COUNT_ATTRIBUTES", "follow_domains"]

# Attributes (of layers or configs) that count experts: rewritten when whole experts go.
EXPERT_COUNT_ATTRIBUTES: set[str] = {"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"}
register_size_attribute("moe_intermediate_size", "shared_expert_intermediate_size")  # expert and shared-expert widths

# Ops that move integer indices around without reading them as numbers.
_PASS = {torch.Tensor.view, torch.reshape, torch.Tensor.reshape, torch.flatten, torch.clone, torch.Tensor.to,
         torch.Tensor.contiguous, torch.unsqueeze, torch.squeeze, torch.Tensor.unsqueeze, torch.Tensor.squeeze}  # fmt: skip
_INDEX = torch.Tensor.index
_READ_SHAPE = {torch.Tensor.size, torch.Tensor.numel, torch.Tensor.dim}


@register_function_rule(torch.topk)
def topk(ctx: RuleContext) -> None:
    """``values, indices = x.topk(k, dim)``: the other axes pass to both outputs; the ``k``
    picks follow no input axis; selecting mixes ``dim`` (not zero-invariant: a removed channel's
    zero can be picked over negative values), needs ``k`` indices of it (``min_keep``), and the
    indices' values range over it (their domain)."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    d = ctx.arg("dim", -1) % len(src)
    ctx.arg("largest"), ctx.arg("sorted")
    ctx.needs(src[d], "k", "top-k selection")
    values, indices = ctx.out(0), ctx.out(1)
    for o in (values, indices):
        ctx.same(src[:d] + src[d + 1 :], o[:d] + o[d + 1 :])
    ctx.fresh([values[d], indices[d]])
    ctx.mix([src[d]], f"top-k selection at {ctx.where()}")
    ctx.graph.domains[f"{ctx.prefix}{ctx.node.name}.1"] = src[d]
    _count_attributes(ctx, src[d])


@register_function_rule(torch.Tensor.index)
def index(ctx: RuleContext) -> None:
    """``x[idx]`` with one integer index tensor: the output is ``idx``'s axes then ``x``'s
    others. When ``idx`` holds positions of a known axis (``topk``'s indices), ``x``'s axis 0
    is that axis; otherwise it pins (a lookup by unknown positions)."""
    if pick_fixed_positions(ctx):  # x[..., [-2], :]: constant positions on one axis
        return
    src, out = ctx.axes(ctx.input), ctx.out()
    idx = ctx.arg("indices")
    parts = list(idx) if isinstance(idx, (list, tuple)) else []
    value = ctx.meta(parts[0]) if len(parts) == 1 else None
    if src is None or not isinstance(value, Tensor) or value.dtype in (torch.bool, torch.uint8) or value.is_floating_point():
        ctx.pin_everything(f"indexing at {ctx.where()}")
        return
    i_axes = ctx.axes(parts[0]) or []
    n = len(i_axes)
    ctx.same(i_axes, out[:n])
    weight = is_weight(ctx, ctx.input)
    for a, o in zip(src[1:], out[n:]):
        if ctx.graph.size(a) > 1:
            (ctx.produce if weight else ctx.graph.link)(a, o)
    domain = ctx.graph.domains.get(ctx.prefix + parts[0].name)
    if domain is None or ctx.graph.size(domain) != ctx.graph.size(src[0]):
        ctx.pin([src[0]], f"indexing by unknown positions at {ctx.where()}")
        return
    ctx.graph.link(domain, src[0])
    if src[0][0] == "p":
        ctx.graph.gathered[src[0][1]] = domain
        _count_attributes(ctx, src[0])


def follow_domains(ctx: RuleContext) -> None:
    """After a node's rule: pass index domains through shape-only ops; pin a domain that any
    other op reads (it could depend on how many there are), except the ops that model it."""
    graph = ctx.graph
    if not graph.domains:
        return
    op = ctx.call.op
    inputs: list[fx.Node] = []
    fx.node.map_arg((ctx.node.args, ctx.node.kwargs), lambda n: inputs.append(n) or n)
    if op is operator.getitem and inputs:
        key = f"{ctx.prefix}{inputs[0].name}.{ctx.node.args[1]}"
        if key in graph.domains:
            graph.domains[ctx.prefix + ctx.node.name] = graph.domains[key]
        return
    found = [graph.domains[ctx.prefix + n.name] for n in inputs if ctx.prefix + n.name in graph.domains]
    quiet = is_aten(ctx.node.target) and ctx.node.target.overloadpacket.__name__ in NO_EFFECT_OPS
    if not found or quiet or op is _INDEX or op in _READ_SHAPE:
        return
    out = ctx.out_value
    if op in _PASS and isinstance(out, Tensor) and not out.is_floating_point():
        graph.domains[ctx.prefix + ctx.node.name] = found[0]
        return
    for axis in found:
        graph.pin(axis, f"expert indices read by {ctx.where()}")


def _count_attributes(ctx: RuleContext, axis: AxisId) -> None:
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
