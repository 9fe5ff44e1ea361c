"""Trace a model with torch.fx and give every node its shape from a meta-tensor pass."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import TraceError
from .config_reads import config_reads, recording_config_reads
from .eager_check import disagreement, model_attribute
from .eager_gate import asks_what_values_are
from .export import clear_method_caches, export_graph
from .forward_modes import Autograd, autograd_mode, recording_grad_reads
from .hidden_writes import HiddenWrites
from .meta import (
    EXPORTED,
    GRAD_MODE_READ,
    HIDDEN_SOURCES,
    HIDDEN_WRITES,
    KEPT_STATE,
    TO_CHECK,
    TRACED_CONSTANT,
    is_exported,
    output_node,
)
from .meta_pass import NoMetaKernel, to_meta
from .ops_vision import register_library_rules
from .param_reads import recording_param_reads
from .size_reads import finish as finish_size_reads
from .size_reads import recording_size_reads
from .size_tracer import CaughtRefusal, SizeTracer, runs_autocast
from .trace_inputs import Inputs, fixed_forward_args, normalize_inputs, propagate
from .trace_mode import Undo, model_mode, unfused_attention
from .untraced_hooks import mark_hooked_layers, own_forward, recording_hooks

__all__ = ["Inputs", "is_exported", "normalize_inputs", "trace", "trace_graph"]


def trace(model: nn.Module, example_inputs: Inputs, *, train: bool = False, shapes: bool = True) -> fx.GraphModule:
    """``trace_graph`` as a runnable ``GraphModule`` over ``model`` (which it does not change:
    the tensor constants of the graph live in the ``GraphModule``)."""
    return graph_module(model, trace_graph(model, example_inputs, train=train, shapes=shapes))


def graph_module(model: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """``graph`` as a runnable ``GraphModule`` over ``model``'s layers, parameters and buffers
    (the tensor constants the trace made live in the ``GraphModule``)."""
    root = {
        str(n.target): n.meta[TRACED_CONSTANT] if TRACED_CONSTANT in n.meta else model_attribute(model, str(n.target))
        for n in graph.nodes
        if n.op in ("get_attr", "call_module")
    }
    gm = fx.GraphModule(root, graph, type(model).__name__)
    gm.train(model.training)
    return gm


def trace_graph(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    train: bool = False,
    shapes: bool = True,
    dynamic: bool = True,
    autograd: Autograd | None = None,
    verify: bool = False,
    export: bool = False,
) -> fx.Graph:
    """Symbolically trace ``model`` (standard layers are leaves) and propagate shapes on meta.

    Every node gets ``node.meta["skg.value"]``: its output as meta tensors (or a structure
    of them, or a plain Python value). The model's weights are never read.

    Args:
        model: The model; left unchanged (its train/eval flags are restored).
        example_inputs: Real or meta tensors: a tensor, a tuple or a dict of keyword inputs.
        train: Trace the training-mode forward (auxiliary heads, stochastic depth).
        shapes: Propagate shapes (skip to only compare graph structure).
        dynamic: Under ``torch.export``, batch and length as dynamic dimensions (False: static,
            cheaper, for a graph compared with one that has them: ``prune.checks``).
        autograd: Trace the forward with autograd ``"on"``, ``"off"`` or under
            ``torch.inference_mode()`` (what ``torch.is_grad_enabled()`` and its kin answer);
            None: torch.fx in the caller's mode, torch.export with autograd off.
        verify: Where the forward's code asks a value what it is (``type(h)``,
            ``callable(h)``), run the graph and the eager forward on the example: where
            torch.fx's graph computes another output, trace with torch.export; where that one
            does too, raise (``eager_check``: ``type(h) is torch.Tensor`` is False for either
            tracer's value).
        export: Trace with torch.export at once (a pruned copy of a model torch.export
            traced: the two graphs are compared op by op).

    Raises:
        TraceError: The model cannot be traced, or the inputs do not fit it; the message
            names the failing node or layer.
    """
    asked: set[str] = set()  # the model's calls of ``torch.is_grad_enabled()`` and kin, by either tracer
    with autograd_mode(autograd) if autograd else nullcontext(), recording_grad_reads(asked):
        try:
            skip = _ExportAsked("torch.export was asked for") if export else None
            if skip is None and own_forward(model):  # torch.fx traces ``type(model).forward``
                skip = _ExportAsked(f"{type(model).__name__} has a forward set on the instance, which torch.fx does not trace")
            graph = _traced(model, example_inputs, train, shapes, dynamic, autograd, skip)
        except NoMetaKernel as e:  # ``nonzero``: its shape needs values; torch.export gives it a symbol
            graph = _traced(model, example_inputs, train, shapes, dynamic, autograd, e)
        if verify:
            graph = _verified(graph, model, example_inputs, train, shapes, dynamic, autograd)
    if asked:  # the graph is this autograd mode's forward: ``forward_modes`` has the others traced too
        output_node(graph).meta[GRAD_MODE_READ] = tuple(sorted(asked))
    return graph


def _verified(
    graph: fx.Graph, model: nn.Module, example_inputs: Inputs, train: bool, shapes: bool, dynamic: bool, autograd: Autograd | None
) -> fx.Graph:
    """``graph`` where it computes the eager forward's output; else torch.export's trace where
    that one does; else a ``TraceError`` naming the output that differs."""
    reason = output_node(graph).meta.get(TO_CHECK)  # a dynamic sign the trace went astray, else the code's questions
    if reason is None and not asks_what_values_are(model):
        return graph
    args, kwargs = normalize_inputs(example_inputs)
    differs = disagreement(model, graph, args, kwargs, train=train, autograd=autograd)
    if differs is None:
        return graph
    if not is_exported(graph):
        unfaithful = Unfaithful(f"its graph is not the forward's: {differs}")
        graph = _traced(model, example_inputs, train, shapes, dynamic, autograd, unfaithful)
        differs = disagreement(model, graph, args, kwargs, train=train, autograd=autograd)
        if differs is None:
            return graph
    why = reason or (
        "the forward asks a traced value something only a real tensor answers, such as type(h) is torch.Tensor, "
        "type(h).__name__ or callable(h); ask isinstance(h, torch.Tensor)"
    )
    raise TraceError(
        f"the traced graph of {type(model).__name__} does not compute what its forward computes on the example "
        f"({differs}): {why}, or make that part a leaf module"
    )


class Unfaithful(Exception):
    """torch.fx's graph computes another output than the eager forward (``_verified``)."""


class _ExportAsked(Exception):
    """``trace_graph(..., export=True)``: torch.fx is not tried."""


def _traced(
    model: nn.Module,
    example_inputs: Inputs,
    train: bool,
    shapes: bool,
    dynamic: bool,
    autograd: Autograd | None,
    skip_fx: Exception | None,
) -> fx.Graph:
    """``trace_graph``; with ``skip_fx`` (why torch.fx's graph will not do: its shape pass
    failed, or it computes another output), by ``torch.export`` at once."""
    register_library_rules()  # torchvision/timm layers become leaves once those libraries are loaded
    args, kwargs = normalize_inputs(example_inputs)
    concrete = fixed_forward_args(model, args, kwargs)
    modules = list(model.modules())
    clear_method_caches(model)  # one graph whatever the model ran before
    casts = skip_fx is None and runs_autocast(model)
    with model_mode(model, train, modules) as undo, recording_config_reads(modules) as reads, unfused_attention():
        before = set(model.__dict__)
        with recording_size_reads(model, modules) as sizes:
            tracer: SizeTracer | None = None
            try:
                if skip_fx is not None:
                    raise skip_fx
                with recording_param_reads(model, sizes):  # ``next(m.parameters()).shape[0]``
                    tracer = SizeTracer(model, args, kwargs, sizes.sinks, casts=casts)
                    sizes.conversions = tracer.conversions  # ``h * (1.0 / n)``: a read's number followed too
                    with HiddenWrites(model) as hidden, recording_hooks() as hooked:  # ``p.clamp_(...)``; hooks
                        graph = tracer.trace(model, concrete_args=concrete)
                    _mark_kept_state(undo)
                    _refuse_data_reads(graph)
                    if hidden.written:
                        output_node(graph).meta[HIDDEN_WRITES] = hidden.written
                    if hidden.fed:
                        output_node(graph).meta[HIDDEN_SOURCES] = hidden.fed
            except Exception as fx_error:  # noqa: BLE001 - fall back to torch.export
                sizes.narrow()  # what the failed attempt read does not count
                undo()  # nor what it left in the model (a Proxy appended to a list)
                with sizes.reaching():
                    graph = _exported(model, args, kwargs, fx_error, dynamic, autograd or "off")
                if isinstance(fx_error, CaughtRefusal):  # torch.export's fake values refuse alike, perhaps caught alike
                    output_node(graph).meta[TO_CHECK] = str(fx_error)
                elif tracer is not None and tracer.to_check:  # ``if not h.is_meta``: a fake tensor on meta says True
                    output_node(graph).meta[TO_CHECK] = tracer.to_check[0]
                finish_size_reads(graph, sizes)
                config_reads(graph, reads)
                return graph
        mark_hooked_layers(graph, model, hooked)  # before ``model_mode`` removes hooks the forward registered
        finish_size_reads(graph, sizes)
        created = undo.created()  # ``register_buffer`` on a first call: made again, at its literal size, by each call
        for n in graph.nodes:  # tensors torch.fx (or the forward) made attributes of the model; model_mode removes them
            if n.op != "get_attr":
                continue
            if str(n.target) not in before and str(n.target) in model.__dict__:
                n.meta[TRACED_CONSTANT] = model.__dict__[str(n.target)]
            elif created and id(value := model_attribute(model, str(n.target))) in created:
                n.meta[TRACED_CONSTANT] = value
        config_reads(graph, reads)
        undo.replaced()
        if shapes:
            propagate(graph, model, args, kwargs)
    return graph


def _mark_kept_state(undo: Undo) -> None:
    """Mark the traced values the forward left in the model's attributes (``self.h = h``, a
    state for its next call; ``model_mode`` puts the attributes back): their channels leave
    the graph as an output's do."""
    for m, k, v in undo.set_attributes():
        for p in v if type(v) in (list, tuple) else (v,):
            if isinstance(p, fx.Proxy):
                p.node.meta[KEPT_STATE] = f"{type(m).__name__}.{k}"


_DATA_READS = frozenset({"item", "tolist"})  # a tensor's values as Python numbers


def _refuse_data_reads(graph: fx.Graph) -> None:
    """``h * h.max().item()`` traces under torch.fx, but meta tensors hold no values to read,
    so shapes cannot propagate; torch.export gives the number a symbol and traces on."""
    for n in graph.nodes:
        if n.op == "call_method" and n.target in _DATA_READS:
            raise TraceError(f"{n.name}: Tensor.{n.target}() reads a tensor's values, which meta shapes do not hold")


def _exported(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], fx_error: Exception, dynamic: bool, autograd: Autograd
) -> fx.Graph:
    """``torch.export`` of the model in its current mode, or a ``TraceError`` naming both failures."""
    try:
        with autograd_mode(autograd):
            devices = [p.device for p in model.parameters()] or [torch.device("cpu")]
            meta = any(d.type == "meta" for d in devices)
            place = to_meta if meta else partial(_materialize, device=devices[0])
            graph = export_graph(model, place(args), place(kwargs), dynamic=dynamic)
    except Exception as e:  # noqa: BLE001 - every tracing failure becomes a TraceError
        raise TraceError(
            f"could not trace {type(model).__name__}: torch.fx: {type(fx_error).__name__}: {_first_line(fx_error)}; "
            f"torch.export: {type(e).__name__}: {_first_line(e)}. "
            "Make the data-dependent part a leaf module, or register a rule for it."
        ) from e
    next(n for n in reversed(graph.nodes) if n.op == "output").meta[EXPORTED] = True
    return graph


def _materialize(x: Any, device: torch.device) -> Any:
    """Meta inputs as zeros on the device of the model's real weights (export runs on fake
    copies of both, which must agree on the device)."""
    if isinstance(x, Tensor):
        return torch.zeros(x.shape, dtype=x.dtype, device=device) if x.device.type == "meta" else x
    if isinstance(x, (tuple, list)):
        return type(x)(_materialize(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _materialize(v, device) for k, v in x.items()}
    return x


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
