"""Trace with ``torch.export`` where ``symbolic_trace`` fails (e.g. Hugging Face models).

The exported ATen graph is rewritten into the form the rest of the planner reads: parameters
and buffers become ``get_attr`` nodes named by their qualified names, every node gets its value
as meta tensors on ``node.meta["skg.value"]``, and the output lists the user outputs only.
Batch and sequence axes are exported as dynamic dimensions, so a literal size left in the graph
(``view(b, s, 4, 16)``) is a size of the model, never the example's batch or length.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .export_bound import EXPORT_SECONDS, timed_export
from .export_sizes import meta_value, real_run
from .fresh_sizes import carry
from .meta import CONSTANT, META, TRACED_CONSTANT

SMALL_CONSTANT = 64  # integer constants up to this many elements keep their values
# On a lifted constant of at most ``SMALL_CONSTANT`` elements, any dtype: its value, which the
# export probe compares between traces (``torch.tensor(h.size(-1))`` is a number of the model).
CONSTANT_VALUE = "skg.constant_value"

__all__ = ["CONSTANT_VALUE", "batched_experts", "clear_method_caches", "export_graph", "no_cache"]


def export_graph(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, dynamic: bool = True) -> fx.Graph:
    """The model's forward as an ATen-level ``fx.Graph`` over ``model``'s own parameters.

    ``dynamic=False`` keeps batch and length static: the same code with plain ints for them
    and no symbolic size nodes, in about half the time (the export probe's retrace).
    Raises whatever ``torch.export`` raises; the caller turns it into a ``TraceError``.
    """
    kwargs = {**kwargs, **no_cache(model, kwargs)}
    clear_method_caches(model)
    with batched_experts(model), _data_as_detach():
        with timed_export() as seconds:  # a pruned copy's is stopped where the model's code runs away
            ep = _exported(model, args, kwargs, dynamic)
        graph = _as_model_graph(ep, real_run(ep, args, kwargs))
    next(n for n in reversed(graph.nodes) if n.op == "output").meta[EXPORT_SECONDS] = seconds[0]
    return graph


def _exported(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic: bool) -> torch.export.ExportedProgram:
    if not dynamic:
        return torch.export.export(model, args, kwargs, strict=False)
    try:
        return torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=_dynamic(args, kwargs))
    except Exception:  # noqa: BLE001 - a model that cannot take dynamic sizes is exported as it is
        return torch.export.export(model, args, kwargs, strict=False)


def clear_method_caches(model: nn.Module) -> None:
    """Empty the ``functools`` caches of the model's methods (Hugging Face's
    ``compile_compatible_method_lru_cache``: BEiT's relative position index), so every trace
    runs what they compute: after an eager call, a cached tensor let torch.fx trace code it
    otherwise fails on, and a plan made before the call named nodes of another graph than
    ``prune``'s retrace after it. A cache only recomputes."""
    seen: set[int] = set()
    for cls in {c for m in model.modules() for c in type(m).__mro__ if not c.__module__.startswith("torch.")}:
        for attr in vars(cls).values():
            fn = getattr(attr, "__func__", attr)
            cells = [c.cell_contents for c in getattr(fn, "__closure__", None) or () if _cell_filled(c)]
            for cache in (fn, *cells):
                if callable(getattr(cache, "cache_clear", None)) and hasattr(cache, "cache_info") and id(cache) not in seen:
                    seen.add(id(cache))
                    cache.cache_clear()


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True


_DATA: Any = torch._C.TensorBase.data  # the getset descriptor of ``Tensor.data``


@contextmanager
def _data_as_detach() -> Iterator[None]:
    """While exporting, ``t.data`` reads as ``t.detach()`` (the same values, no autograd
    history): non-strict export refuses the fake tensor ``.data`` of a parameter hands back
    ("a fake tensor in the exported program constant's list"), where torch.fx traces it as a
    read of the parameter. Writes (``p.data = x``) are ``Tensor.data``'s own."""
    saved = torch.Tensor.__dict__.get("data")
    torch.Tensor.data = property(lambda t: t.detach(), _DATA.__set__)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        if saved is None:
            del torch.Tensor.data
        else:
            torch.Tensor.data = saved  # type: ignore[method-assign]


@contextmanager
def batched_experts(model: nn.Module) -> Iterator[None]:
    """Hugging Face mixture-of-experts layers read ``config._experts_implementation`` at every
    call. The eager loop (``nonzero`` over routed tokens) and ``grouped_mm`` (offsets) do not
    export as plain tensor algebra; ``batched_mm`` gathers each token's expert weights
    (``gate_up_proj[expert_ids]``), which rules can read. Every config is restored after."""
    configs = {id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "_experts_implementation_internal")}
    saved = {k: c._experts_implementation_internal for k, c in configs.items()}
    try:
        for c in configs.values():
            c._experts_implementation_internal = "batched_mm"
        yield
    finally:
        for k, c in configs.items():
            c._experts_implementation_internal = saved[k]


def no_cache(model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``use_cache=False`` for models whose forward takes it (no KV cache in the graph): by
    name, or through ``**kwargs`` where the model's config has ``use_cache`` (GraniteMoe)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    config = getattr(model, "config", None)
    through_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values()) and hasattr(config, "use_cache")
    return {"use_cache": False} if ("use_cache" in params or through_kwargs) and "use_cache" not in kwargs else {}


def _dynamic(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Dynamic batch axis for every tensor input, and dynamic length for integer inputs
    (token ids, attention masks); ``Dim.AUTO`` lets export keep a size static where the model
    needs it. An example size of 1 stays static (export specialises it)."""

    def spec(x: Any) -> Any:
        if not isinstance(x, Tensor) or x.ndim == 0:
            return None
        dims = [0] + ([1] if x.ndim >= 2 and not x.is_floating_point() else [])
        return {d: torch.export.Dim.AUTO for d in dims if x.shape[d] > 1}  # size 1 would specialise anyway

    if args and kwargs:
        return None  # export names dynamic shapes by forward's parameters: keep this mix static
    return {k: spec(v) for k, v in kwargs.items()} if kwargs else tuple(spec(a) for a in args)


def _as_model_graph(ep: torch.export.ExportedProgram, real: dict[str, Any]) -> fx.Graph:
    """``ep``'s graph as the planner reads it; ``real``: values of nodes of unbacked sizes
    (``export_sizes.real_run``)."""
    sig = ep.graph_signature
    qualified = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    user_outputs = [i for i, s in enumerate(sig.output_specs) if s.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]
    graph = fx.Graph()
    env: Env = {}
    tokens: dict[int, fx.Node] = {}  # the nodes whose axes fresh tensors' sizes were read off (``fresh_sizes``)
    for node in ep.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in qualified:
            new = graph.get_attr(qualified[node.name])
        elif node.op == "placeholder" and node.name in sig.inputs_to_lifted_tensor_constants:
            fqn = sig.inputs_to_lifted_tensor_constants[node.name]
            new = graph.get_attr(f"<constant {fqn}>")
            value = ep.constants.get(fqn)
            if isinstance(value, Tensor):
                new.meta[TRACED_CONSTANT] = value  # what the graph reads there (``eager_check`` runs it)
            if isinstance(value, Tensor) and value.numel() <= SMALL_CONSTANT and not value.is_floating_point():
                new.meta[CONSTANT] = value.detach().cpu().clone()  # positions a rule may read (``x[..., [-2]]``)
            if isinstance(value, Tensor) and value.numel() <= SMALL_CONSTANT and not value.is_meta:
                new.meta[CONSTANT_VALUE] = value.detach().cpu().clone()  # ``torch.tensor(h.size(-1))``: the probe compares
        elif node.op == "output":
            outs = node.args[0]
            graph.output(tuple(env[outs[i]] if isinstance(outs[i], fx.Node) else outs[i] for i in user_outputs))
            continue
        else:
            _copy(graph, node, ep.graph_module, env, tokens, real)
            continue
        new.meta = {**node.meta, **new.meta}
        new.meta[META] = meta_value(node.meta.get("val"), real.get(node.name))
        carry(node, new, tokens)
        env[node] = new
    return graph


# Blocks torch.export keeps as a subgraph called in place, and the position of the body among
# the call's arguments (its inputs follow): ``with torch.autocast(...)``, ``with torch.no_grad()``.
_BLOCKS = {torch.ops.higher_order.wrap_with_autocast: 4, torch.ops.higher_order.wrap_with_set_grad_enabled: 1}
Env = dict[fx.Node, Any]  # a node of the exported graph -> its copy (a tuple of them for an inlined body's outputs)


def _copy(
    graph: fx.Graph, node: fx.Node, owner: fx.GraphModule, env: Env, tokens: dict[int, fx.Node], real: dict[str, Any]
) -> None:
    """Copy ``node`` (of ``owner``'s graph, not a placeholder or output) into ``graph``; the
    body of an autocast or grad-mode block inlined where it is called, as on the torch.fx path
    (autocast changes the dtype ops compute in, grad mode what autograd records: neither what
    they compute or which channels they read)."""
    if node.op == "get_attr" and isinstance(getattr(owner, str(node.target), None), fx.GraphModule):
        return  # a block's body: copied where the block is called
    at = _BLOCKS.get(node.target)  # type: ignore[call-overload]
    if at is not None:
        body = getattr(owner, str(node.args[at].target))  # type: ignore[union-attr]
        inner: Env = dict(
            zip((n for n in body.graph.nodes if n.op == "placeholder"), (env[a] for a in node.args[at + 1 :]), strict=True)  # type: ignore[index]
        )
        for n in body.graph.nodes:
            if n.op == "output":
                env[node] = tuple(inner[o] for o in n.args[0])
            elif n.op != "placeholder":
                _copy(graph, n, body, inner, tokens, {})  # ``real`` names the outer graph's nodes
        return
    if node.target is operator.getitem and isinstance(env.get(node.args[0]), tuple):  # type: ignore[arg-type]
        env[node] = env[node.args[0]][node.args[1]]  # type: ignore[index]
        return
    new = graph.node_copy(node, lambda n: env[n])
    new.meta = {**node.meta, **new.meta}
    new.meta[META] = meta_value(node.meta.get("val"), real.get(node.name))
    carry(node, new, tokens)
    env[node] = new
