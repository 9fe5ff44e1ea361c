"""Walk a traced graph and apply each node's rule to build the axis graph, failing closed."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.utils._pytree as pytree
from torch import Tensor, nn

from . import (  # noqa: F401  (registers the built-in rules)
    ops_attention,
    ops_conv,
    ops_index,
    ops_join,
    ops_layers,
    ops_layout,
    ops_matmul,
    ops_mha,
    ops_moe,
    ops_norm_layers,
    ops_norms,
    ops_order,
    ops_reshape,
    ops_rnn,
    ops_sizes,
    ops_tensor,
    ops_transformer,
    ops_vision,
    ops_write,
)
from .axes import AxisGraph
from .context import RuleContext
from .folded_sizes import folded_products
from .hidden_writes import RESHAPES, pin_hidden_writes
from .kept_zeros import write_keeps_zeros
from .length_uses import pin_unmodelled_lengths
from .meta import DATA_SWAPPED, KEPT_STATE, META, WRITTEN_BUFFER, ReadInt
from .number_uses import size_arguments
from .param_reads import pin_param_reads, storage_key
from .positions import follow_domains, record_positions
from .random_draws import draws_random
from .rules import find_rule
from .size_pins import pin_read_sizes
from .trace import is_exported
from .untraced_hooks import hooked, own_forward
from .value_reads import pin_value_reads
from .zeros import aliased_input

__all__ = ["HARMLESS_ARGUMENTS", "LAYER_SIZE_ATTRIBUTES", "add_traced_graph"]

# Arguments that never change which channels move together.
HARMLESS_ARGUMENTS = frozenset(
    {"dtype", "memory_format", "non_blocking", "copy", "device", "layout", "pin_memory", "requires_grad", "inplace",
     "_stacklevel", "generator", "eps", "training", "momentum", "cudnn_enable", "implicit", "train"}
)  # fmt: skip


def add_traced_graph(graph: AxisGraph, traced: fx.Graph | fx.GraphModule, model: nn.Module, prefix: str = "") -> None:
    """Add the axes and couplings of one traced forward to ``graph``.

    Values are named ``prefix + node name``; parameters by their qualified names, so the
    training and evaluation traces of one model share parameter axes.
    """
    nodes = traced.graph.nodes if isinstance(traced, fx.GraphModule) else traced.nodes
    every, modules = _tensors_and_modules(model)
    for n, t in every.items():  # a tied tensor keeps its first name
        graph.canonical.setdefault(id(t), n)
    for n in every:  # members are listed in the model's own order, whatever order ops use them in
        graph.order.setdefault(graph.canonical[id(every[n])], len(graph.order))
    aliases = {
        n.name: graph.canonical[id(every[str(n.target)])]
        for n in nodes
        if n.op == "get_attr" and str(n.target) in every and not n.meta.get(WRITTEN_BUFFER)  # written: a constant
    }
    exported = is_exported(traced.graph if isinstance(traced, fx.GraphModule) else traced)
    graph.exported = graph.exported or exported
    views: dict = {}  # nodes that are views of a parameter (``w.detach()``), shared by every rule
    params: dict[int, fx.Node] = {}  # the storage of a parameter's meta value -> its node
    for node in nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        name = str(node.target) if module is not None else ""
        ctx = RuleContext(graph, node, prefix, module, name, aliases, modules, exported=exported, views=views)
        if node.op == "placeholder":
            for axes in ctx.outputs():
                ctx.pin(axes, "model input")
        elif node.op == "output":
            for axes in ctx.tensor_axes():
                ctx.pin(axes, "model output")
            follow_domains(ctx)
            graph.numbers += [(v, node) for v in _returned_numbers(node)]  # ``return y, self.a.out_channels``
        elif node.op == "get_attr":  # a parameter's axes appear where an op uses them
            if node.name in aliases and isinstance(value := node.meta.get(META), Tensor):
                params[storage_key(value)] = node  # what its views and in-place results share
            if node.name not in aliases:
                what = "buffer {} written in forward" if node.meta.get(WRITTEN_BUFFER) else "constant tensor {}"
                for axes in ctx.outputs():
                    ctx.pin(axes, what.format(node.target))
        else:
            _apply(ctx, module, params)
            record_positions(ctx)
            follow_domains(ctx)
        if kept := node.meta.get(KEPT_STATE):  # ``self.h = h``: read by the next call, as the model's output
            for axes in ctx.tensor_axes():
                ctx.pin(axes, f"kept by the forward as {kept} for its next call")
    if exported:
        _lengths_as_numbers(graph, nodes)
    _layer_sizes_as_numbers(graph, modules)
    uses = size_arguments(nodes, modules)  # torch.fx: the ops taking floats made from sizes
    pin_read_sizes(graph, nodes, modules, uses, prefix)
    pin_param_reads(graph, nodes, every, uses)
    pin_value_reads(graph, nodes, every)
    pin_hidden_writes(graph, nodes, every, _data_swaps(nodes, params, modules))
    reader = RuleContext(graph, next(iter(nodes)), prefix, None, "", aliases, modules, exported=exported, views=views)
    pin_unmodelled_lengths(graph, nodes, reader.axes)


def _data_swaps(nodes: Any, params: dict[int, fx.Node], modules: dict[str, nn.Module]) -> dict[str, str]:
    """The parameters whose ``.data`` the forward set (``DATA_SWAPPED``), by path -> where."""
    swaps = {}
    for n in nodes:
        if DATA_SWAPPED in n.meta and (param := _parameter_of(n, params, modules)) is not None:
            swaps[str(param.target)] = n.meta[DATA_SWAPPED]
    return swaps


def _returned_numbers(output: fx.Node) -> list[int]:
    """The layer sizes a forward returns as they are (``self.a.out_channels``: a ``ReadInt``),
    which pruning changes; other numbers (``len(self.blocks)``, a step count) it does not."""
    return [v for v in pytree.tree_leaves(output.args) if isinstance(v, ReadInt)]


def _written_parameter(ctx: RuleContext, params: dict[int, fx.Node]) -> fx.Node | None:
    """The parameter an in-place call writes, through any views of it or earlier in-place
    results (``w[:].clamp_(...)``, ``w.abs_().add_(0.1)``): its meta value shares the storage."""
    name = getattr(ctx.call.op, "__name__", "")
    in_place = ctx.call.inplace or ctx.call.args.get("inplace") is True or (name.endswith("_") and not name.startswith("_"))
    if not in_place or ctx.node.op == "call_module":  # ``F.hardtanh_``: torch's own in-place functions
        return None
    return _parameter_of(ctx.input, params, ctx.modules)


def _parameter_of(node: object, params: dict[int, fx.Node], modules: dict[str, nn.Module]) -> fx.Node | None:
    """The parameter node whose storage ``node``'s value is: by its meta value's storage (the
    torch.fx path), or up the views and identity layers it was made by (torch.export's meta
    values share no storage)."""
    while isinstance(node, fx.Node):
        value = node.meta.get(META)
        found = params.get(storage_key(value)) if isinstance(value, Tensor) else None  # type: ignore[arg-type]
        if found is not None:
            return found
        node = aliased_input(node, modules)
    return None


def _tensors_and_modules(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, nn.Module]]:
    """Every parameter then every buffer under each of its names (as ``named_parameters`` and
    ``named_buffers`` with ``remove_duplicate=False``), and each module under its first name
    (as ``named_modules()``), in one walk of the model."""
    params: list[tuple[str, Tensor]] = []
    buffers: list[tuple[str, Tensor]] = []
    modules: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for path, m in model.named_modules(remove_duplicate=False):
        if id(m) not in seen:
            seen.add(id(m))
            modules[path] = m
        prefix = f"{path}." if path else ""
        params += [(prefix + k, v) for k, v in m._parameters.items() if v is not None]
        buffers += [(prefix + k, v) for k, v in m._buffers.items() if v is not None]
    return dict(params + buffers), modules


# Layer attributes that count channels and that surgery rewrites from the pruned weights.
LAYER_SIZE_ATTRIBUTES = (
    "in_channels", "out_channels", "in_features", "out_features", "in1_features", "in2_features", "num_features",
    "num_channels", "embedding_dim", "num_parameters",
)  # fmt: skip


def _layer_sizes_as_numbers(graph: AxisGraph, modules: dict[str, nn.Module]) -> None:
    """``h / self.bn.num_features``: fx writes a layer's size attribute read in ``forward`` as a
    literal. Surgery rewrites that attribute, so a whole number that scales a tensor and equals
    one of them may be it: the layer's parameter axes of that length are not zero-invariant.
    Conservative: a constant that merely equals such an attribute costs those axes as well."""
    used = {n: node.name for n, node in graph.numbers}
    if not used:
        return
    for path, m in modules.items():
        for attr in LAYER_SIZE_ATTRIBUTES:
            size = getattr(m, attr, None)
            if not isinstance(size, int) or isinstance(size, bool) or size not in used:
                continue
            prefix = f"{path}." if path else ""
            for pname, p in m.named_parameters(recurse=False):
                name = graph.canonical.get(id(p), prefix + pname)
                for d, n in enumerate(p.shape):
                    axis = ("p", name, d)
                    if n == size and axis in graph.sizes:
                        graph.mix(axis, f"the number {size} at node {used[size]} may be {prefix}{attr}, which pruning rewrites")


def _lengths_as_numbers(graph: AxisGraph, nodes: list[fx.Node]) -> None:
    """torch.export writes a length used as a value (``h.sum(-1) / h.shape[-1]``) as a literal:
    a whole number that scales a tensor may be the length of any axis of that size, whose
    channels then do not vanish with their members (not zero-invariant). Conservative: a
    constant that happens to equal an axis's length costs that axis its zero-invariance, and
    a product of lengths folded into symbolic-size arithmetic (``h.numel()`` with a dynamic
    batch: ``folded_products``) costs every axis whose length divides it."""
    used = {n: node.name for n, node in graph.numbers}
    folded = folded_products(list(nodes))
    for axis, size in graph.sizes.items():
        if axis[0] == "v" and size in used:
            graph.mix(axis, f"the number {size} at node {used[size]} may be this axis's length used as a value")
        elif axis[0] == "v" and size > 1 and (hit := next((k for k in folded if k % size == 0), None)) is not None:
            graph.mix(axis, f"the number {hit} at node {folded[hit]} may be a product of sizes including this axis's length")


def _apply(ctx: RuleContext, module: nn.Module | None, params: dict[int, fx.Node]) -> None:
    """Run the node's rule, then enforce what every rule must guarantee (see ``RuleContext``)."""
    rule = find_rule(ctx.node, module)
    ctx.graph.rule_applications += 1
    if hooked(ctx.node, module):
        what = "a forward set on the instance" if own_forward(module) else "forward hooks"  # type: ignore[arg-type]
        ctx.pin_everything(f"{what} of {ctx.where()} are not traced")
        return
    if rule is None:
        ctx.pin_everything(f"unknown op {ctx.where()}")
        return
    label = getattr(rule, "__name__", "rule")
    if not ctx.call.bound:
        ctx.pin_everything(f"arguments of {ctx.where()} could not be read")
        return
    written = ctx.node.op != "call_module" and isinstance(ctx.call.args.get("out"), fx.Node)
    if written and "out" in ctx.call.passed:  # later reads of the buffer would see values no link explains
        ctx.pin_everything(f"{ctx.where()} writes its result into a given tensor (out=), which no rule models")
        return
    try:
        rule(ctx)
    except Exception as e:  # noqa: BLE001 - a rule that cannot handle a case falls back to pinning
        ctx.pin_everything(f"rule {label} failed at {ctx.where()} ({type(e).__name__}: {e})")
        return
    unread = sorted(k for k in ctx.call.passed - ctx.read if k not in HARMLESS_ARGUMENTS)
    if unread:
        ctx.pin_everything(f"rule {label} does not model argument(s) {', '.join(unread)} of {ctx.where()}")
    if ctx.node.op != "call_module" and draws_random(ctx.call, ctx.node.target):
        ctx.mix([a for axes in ctx.outputs() for a in axes], f"random values drawn per channel at {ctx.where()}")
    written = _written_parameter(ctx, params)
    reshaped = f"{getattr(ctx.call.op, '__name__', '').removesuffix('_')}_" in RESHAPES  # ``w.t_()``: normalised to ``t``
    if written is not None and reshaped:  # later readers see other axes
        ctx.pin(ctx.axes(written) or [], f"a parameter's axes changed in place at {ctx.where()}")
    elif written is not None and not write_keeps_zeros(ctx.call):  # the layers that read the parameter see the write
        ctx.mix(ctx.axes(written) or [], f"a parameter written in place at {ctx.where()} by an op that does not keep zeros")
    g = ctx.graph
    if ctx.node.name in ctx.views:  # a view of a parameter has the parameter's axes
        return
    for axes in ctx.outputs():
        for i, a in enumerate(axes):
            if g.size(a) > 1 and not g.adj[a] and not g.nodes[a]["pins"] and a not in ctx.fresh_axes | g.diverted:
                ctx.pin_everything(f"rule {label} left axis {i} of {ctx.where()} unlinked")
                return
