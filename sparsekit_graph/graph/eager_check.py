"""Does a traced graph compute what the model's forward computes on the example?

Neither tracer's value is a plain tensor: under torch.fx it is a Proxy, under torch.export a
fake tensor. A forward that asks (``type(h) is torch.Tensor``, ``type(h).__name__``,
``callable(h)``) is traced down a branch the eager forward does not take, and a plan of that
branch is wrong however well its rules hold. No list of spellings closes that, so the graph
is run on the example and compared with the eager forward, with the model's weights, the same
train flags, autograd mode and random seed. Where they differ the graph is not the model's.

Meta inputs (a plan's example) are drawn from a seeded normal (floats) or zero. The comparison
is skipped (None) where it cannot be made without changing the model or running it for
nothing: weights on the meta device, a forward that writes its own
parameters in place (``w.clamp_()``: stopped before the write), a forward or graph that fails
on the example, an output that depends on random draws the two make in a different order.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .export import no_cache
from .forward_modes import Autograd, autograd_mode
from .meta import TRACED_CONSTANT, is_exported
from .param_reads import storage_key
from .trace_inputs import flat_inputs
from .trace_mode import model_mode

__all__ = ["disagreement", "graph_module", "model_attribute"]

_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}  # of the output's largest magnitude; 5e-2 for the rest
_SEED = 0x5EED


class _WritesParameter(Exception):
    """The eager forward was about to write one of the model's parameters in place."""


class _NoParameterWrites(TorchDispatchMode):
    """Stop any op that writes in place into the storage of one of ``storages``."""

    def __init__(self, storages: set[int]) -> None:
        super().__init__()
        self.storages = storages

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func._schema.is_mutable:
            given = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
            for a in func._schema.arguments:
                v = given.get(a.name)
                written = a.alias_info is not None and a.alias_info.is_write
                if written and isinstance(v, Tensor) and storage_key(v) in self.storages:
                    raise _WritesParameter(a.name)
        return func(*args, **kwargs)


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


def model_attribute(model: nn.Module, target: str) -> Any:
    """``model``'s attribute at a dotted path (``"layer1.0.conv1.weight"``)."""
    obj: Any = model
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def disagreement(
    model: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any], *, train: bool, autograd: Autograd | None
) -> str | None:
    """Where ``graph`` (a trace of ``model`` on ``args`` / ``kwargs``) computes another output
    than the eager forward: a sentence naming the first output that differs; None where they
    agree or cannot be compared (see the module docstring). The model is left as it was."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        return None
    args, kwargs = _real(args, kwargs, tensors[0].device if tensors else torch.device("cpu"))
    if is_exported(graph):  # the export's own inputs (``use_cache=False``) for both
        kwargs = kwargs | no_cache(model, kwargs)
    autograd = autograd or ("off" if is_exported(graph) else None)  # None: the caller's, as torch.fx traced
    eager = _eager(model, args, kwargs, train, autograd)
    if eager is None:
        return None
    try:
        gm = graph_module(model, graph)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(_SEED)
            traced = _leaves(fx.Interpreter(gm).run(*flat_inputs(graph, *_fresh(args, kwargs))))
    except Exception:  # noqa: BLE001 - a graph that cannot run here is not judged by its output
        return None
    differs = _first_difference(eager, traced)
    if differs is None:
        return None
    again = _eager(model, args, kwargs, train, autograd, seed=_SEED + 1)
    if again is None or _first_difference(eager, again) is not None:
        return None  # the output depends on random draws: the order the two make them in may differ
    return differs


def _eager(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], train: bool, autograd: Autograd | None, seed: int = _SEED
) -> list[Tensor] | None:
    """The eager forward's output tensors, or None where it fails or would write a parameter."""
    modules = list(model.modules())
    storages = {k for p in model.parameters() if (k := storage_key(p)) is not None}
    try:
        with model_mode(model, train, modules), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with autograd_mode(autograd) if autograd else nullcontext(), _NoParameterWrites(storages):
                fresh_args, fresh_kwargs = _fresh(args, kwargs)
                out = model(*fresh_args, **fresh_kwargs)
    except Exception:  # noqa: BLE001 - nothing to compare with
        return None
    return [t.detach() for t in _leaves(out)]


def _fresh(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copies of the example's tensors: a forward that writes its input in place (``x.relu_()``)
    must not change what the other run sees."""
    copy = lambda v: v.clone() if isinstance(v, Tensor) else v  # noqa: E731
    return torch.utils._pytree.tree_map(copy, (args, kwargs))


def _leaves(out: Any) -> list[Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]


def _real(args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Meta inputs (a plan's ``example_inputs()``) as real ones on the weights' device: floats
    drawn from a seeded normal, integers and booleans zero."""
    generator = torch.Generator().manual_seed(_SEED)

    def real(v: Any) -> Any:
        if not isinstance(v, Tensor) or not v.is_meta:
            return v
        if v.is_floating_point():
            return torch.randn(v.shape, generator=generator, dtype=v.dtype).to(device)
        return torch.zeros(v.shape, dtype=v.dtype, device=device)

    return torch.utils._pytree.tree_map(real, (args, kwargs))


def _first_difference(eager: list[Tensor], traced: list[Tensor]) -> str | None:
    if len(eager) != len(traced):
        return f"the forward returns {len(eager)} tensors, the traced graph {len(traced)}"
    for i, (e, t) in enumerate(zip(eager, traced)):
        if e.shape != t.shape or e.dtype != t.dtype:
            return f"output {i} is {e.dtype} {list(e.shape)} in the forward, {t.dtype} {list(t.shape)} in the traced graph"
        if not (e.is_floating_point() or e.is_complex()):
            if not torch.equal(e, t):
                return f"output {i} differs"
            continue
        finite = e[e.isfinite()].abs()
        magnitude = float(finite.max()) if finite.numel() else 0.0
        off = (e - t).abs()
        tolerance = _TOLERANCE.get(e.dtype, 5e-2) * max(magnitude, 1.0)
        bad = ~(off <= tolerance) & ~(e == t) & ~(e.isnan() & t.isnan())  # NaN, inf alike
        if bool(bad.any()):
            return f"output {i} differs by up to {float(off[bad].max()):.3g} (its largest magnitude: {magnitude:.3g})"
    return None
