"""Walk a traced graph and apply each node's rule to build the axis graph."""

from __future__ import annotations

import torch.fx as fx
from torch import Tensor, nn

from . import ops_layers, ops_tensor, ops_vision  # noqa: F401  (registers the built-in rules)
from .axes import AxisGraph
from .rules import RuleContext, find_rule
from .trace import META

__all__ = ["add_traced_graph"]


def add_traced_graph(graph: AxisGraph, gm: fx.GraphModule, model: nn.Module, prefix: str = "") -> None:
    """Add the axes and couplings of one traced forward to ``graph``.

    Values are named ``prefix + node name``; parameters by their qualified names, so the
    training and evaluation traces of one model share parameter axes.
    """
    every = dict((*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)))
    for n, t in every.items():  # a tied tensor keeps its first name
        graph.canonical.setdefault(id(t), n)
    aliases = {
        n.name: graph.canonical[id(every[str(n.target)])] for n in gm.graph.nodes if n.op == "get_attr" and str(n.target) in every
    }
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        ctx = RuleContext(graph, node, prefix, module, str(node.target) if module is not None else "", aliases)
        if node.op == "placeholder":
            for axes in ctx.outputs():
                ctx.pin(axes, "model input")
        elif node.op == "output":
            for n in ctx.tensor_args():
                ctx.pin(ctx.axes(n) or [], "model output")
        elif node.op == "get_attr":
            if node.name not in aliases:
                for axes in ctx.outputs():
                    ctx.pin(axes, f"constant tensor {node.target}")
            elif isinstance(node.meta.get(META), Tensor):
                ctx.axes(node)
        else:
            _apply(ctx, module)


def _apply(ctx: RuleContext, module: nn.Module | None) -> None:
    rule = find_rule(ctx.node, module)
    ctx.graph.rule_applications += 1
    if rule is None:
        ctx.pin_everything(f"unknown op {ctx.where()}")
        return
    try:
        rule(ctx)
    except Exception as e:  # noqa: BLE001 - a rule that cannot handle a case falls back to pinning
        ctx.pin_everything(f"rule for {ctx.where()} failed ({type(e).__name__}: {e})")
