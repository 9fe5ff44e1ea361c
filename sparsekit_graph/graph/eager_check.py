"""Does a traced graph compute what the model's forward computes on the example?

Neither tracer's value is a plain tensor: under torch.fx it is a Proxy, under torch.export a
fake tensor. A forward that asks (``type(h) is torch.Tensor``, ``type(h).__name__``,
``callable(h)``) is traced down a branch the eager forward does not take, and a plan of that
branch is wrong however well its rules hold. No list of spellings closes that, so where the
code the forward reaches asks a value what it is (``asks_what_values_are``) the graph is run
on the example and compared with the eager forward, with the model's weights, the same train
flags, autograd mode and random seed. Where they differ the graph is not the model's.

Meta inputs (a plan's example) are drawn from a seeded normal (floats) or zero. Weights on the
meta device have no values: a model of up to ``REAL_COPY_ELEMENTS`` values is compared on a
real copy (``real_copy``: seeded random weights, ties kept; the graph's ``device=meta`` read
as the copy's). A larger one's graph is compared with the forward by the ATen ops each runs
on tensors (views, copies, constants and torch.export's assertions aside), in order, and by
its outputs' shapes (``h - h.mean(1)`` taken eagerly and not traced runs a ``mean`` and a
``sub`` the graph does not). Against an exported graph the forward runs as torch.export sees
it (``torch.compiler.is_compiling()`` and ``is_exporting()`` True: Hugging Face's code builds
its masks there without reading values), so a forward that computes otherwise when exported
is not caught on meta weights. A forward that writes its own parameters in place
(``w.clamp_()``) runs with them copied first and put back after; an output that changes with
the seed (noise drawn in forward) is compared by the ATen ops each runs. The comparison is
skipped (None) where a forward or graph fails on the example.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from .export import no_cache
from .forward_modes import Autograd, autograd_mode
from .hidden_writes import written_tensors
from .meta import TRACED_CONSTANT, is_exported
from .op_log import OpLog, first_other_op
from .param_reads import storage_key
from .real_weights import real_copy
from .trace_inputs import flat_inputs
from .trace_mode import model_mode, unfused_attention

__all__ = ["disagreement", "model_attribute"]

# Of the output's largest magnitude (5e-2 for other dtypes). Graphs of 28 HF, 7 timm and 4 torchvision models
# differ from their forwards by <= 3e-7 of it in float32; a branch not traced may change it by little
# (a mean taken off LayerNorm-ed states: 8e-3 of it), so nothing looser.
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}
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
            for name, _, t in written_tensors(func, given):
                if storage_key(t) in self.storages:
                    raise _WritesParameter(name)
        return func(*args, **kwargs)


class _GraphRun(fx.Interpreter):
    """``graph`` run over the model's own layers, parameters and buffers (their flags as they
    are), the constants the trace made from their nodes; a graph traced on meta weights run
    over a real copy names the copy's device where it named ``meta`` (``arange(device=...)``)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, device: torch.device) -> None:
        super().__init__(model, graph=graph)
        self.device = device

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "get_attr" and TRACED_CONSTANT in n.meta:
            return n.meta[TRACED_CONSTANT]
        return super().run_node(n)

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if self.device.type == "meta":
            return args, kwargs
        here = lambda v: self.device if isinstance(v, torch.device) and v.type == "meta" else v  # noqa: E731
        return tree_map(here, (args, kwargs))


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
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        real = None if _meta_constants(graph) else real_copy(model)
        verdict = _UNCOMPARED if real is None else _compared(real, graph, args, kwargs, train, autograd, copied=True)
        if verdict is not _UNCOMPARED:
            return verdict  # else: the ATen ops each runs on meta
    verdict = _compared(model, graph, args, kwargs, train, autograd)
    return None if verdict is _UNCOMPARED else verdict


_UNCOMPARED = "not compared"  # a run failed, draws random values, or (on a real copy) made NaN or inf


def _compared(
    model: nn.Module,
    graph: fx.Graph,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    train: bool,
    autograd: Autograd | None,
    *,
    copied: bool = False,
) -> str | None:
    """``disagreement`` on ``model``'s own weights: by value, or on meta by the ATen ops run;
    ``_UNCOMPARED`` where that says nothing (``copied``: a real copy's NaN or inf output may
    hide any difference)."""
    run = _Runs(model, train, autograd or ("off" if is_exported(graph) else None))  # None: the caller's, as torch.fx traced
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    args, kwargs = _on(args, kwargs, device)
    if is_exported(graph):  # the export's own inputs (``use_cache=False``) for both
        kwargs = kwargs | no_cache(model, kwargs)

    def traced_forward(*a: Any, **k: Any) -> Any:  # no autograd: the graph holds no ``torch.no_grad()`` block
        with torch.no_grad():
            return _GraphRun(model, graph, device).run(*flat_inputs(graph, a, k))

    eager = run(model, args, kwargs, as_exported=run.meta and is_exported(graph))
    traced = run(traced_forward, args, kwargs)
    if eager is None or traced is None or (copied and not all(bool(t.isfinite().all()) for t in eager.outputs)):
        return _UNCOMPARED
    if run.meta:
        return _first_difference(eager.outputs, traced.outputs) or first_other_op(eager.ops, traced.ops)
    differs = _first_difference(eager.outputs, traced.outputs)
    if differs is None:
        return None
    for forward, first in ((model, eager), (traced_forward, traced)):  # output changing with the seed: random draws
        again = run(forward, args, kwargs, seed=_SEED + 1)
        if again is None or _first_difference(first.outputs, again.outputs) is not None:  # compared by the ops they run
            eager = run(model, args, kwargs, as_exported=is_exported(graph), log_ops=True)
            traced = run(traced_forward, args, kwargs, log_ops=True)
            return _UNCOMPARED if eager is None or traced is None else first_other_op(eager.ops, traced.ops)
    return differs


def _meta_constants(graph: fx.Graph) -> bool:
    """Does ``graph`` hold a constant traced on meta (``torch.tensor(0.5)`` in forward, lifted
    by torch.export)? A real copy cannot run it: its value is unknown."""
    return any(isinstance(v := n.meta.get(TRACED_CONSTANT), Tensor) and v.is_meta for n in graph.nodes if n.op == "get_attr")


@dataclasses.dataclass(frozen=True)
class _Run:
    outputs: list[Tensor]
    ops: list[str]  # the ATen ops run on tensors (views, copies, constants aside), in order


class _Runs:
    """Runs of the model's forward or its graph on the example: the graph's train flags and
    autograd mode, one seed, the model left as it was (its parameters never written)."""

    def __init__(self, model: nn.Module, train: bool, autograd: Autograd | None) -> None:
        self.model, self.train, self.autograd = model, train, autograd
        self.modules = list(model.modules())
        self.storages = {k for p in model.parameters() if (k := storage_key(p)) is not None}
        self.meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        self.writes = False  # the forward writes its parameters (``w.clamp_()``): they are restored after each run

    def __call__(
        self,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        seed: int = _SEED,
        as_exported: bool = False,
        log_ops: bool = False,
    ) -> _Run | None:
        """The output tensors of ``forward`` and the ATen ops it ran (on meta, or ``log_ops``),
        or None where it fails; ``as_exported``: with torch's tracing questions answered as
        under torch.export. A forward that writes the model's parameters is stopped before the
        write, then run again with the parameters copied first and put back after."""
        log = OpLog()
        buffers = [b for b in self.model.buffers() if b.numel()]
        params = [p for p in self.model.parameters() if not p.is_meta] if self.writes else []
        with torch.no_grad():
            saved = [t.clone() for t in (*buffers, *params)]  # buffers: ops that bump no version (``batch_norm``)
        try:
            with model_mode(self.model, self.train, self.modules), _seeded(seed, self.model):
                with (
                    autograd_mode(self.autograd) if self.autograd else nullcontext(),
                    _NoParameterWrites(set() if self.writes else self.storages),
                    _as_exported() if as_exported else nullcontext(),
                    unfused_attention(),  # as traced: the fast path zeroes padded positions
                ):
                    fresh_args, fresh_kwargs = _fresh(args, kwargs)
                    with log if self.meta or log_ops else nullcontext():
                        out = forward(*fresh_args, **fresh_kwargs)
        except _WritesParameter:
            self.writes = True
            return self(forward, args, kwargs, seed, as_exported, log_ops)
        except Exception:  # noqa: BLE001 - nothing to compare with
            return None
        finally:
            with torch.no_grad():
                for t, kept in zip((*buffers, *params), saved):
                    if t.shape == kept.shape and not t.is_meta and not torch.equal(t, kept):
                        t.copy_(kept)
                    if t.grad_fn is not None:  # written in place from values that need grad
                        t.detach_()
        return _Run([t.detach() for t in _leaves(out)], log.ops)


@contextmanager
def _as_exported() -> Iterator[None]:
    """``torch.compiler.is_compiling()`` and ``is_exporting()`` answer True, as they do while
    torch.export traces (Hugging Face's code builds its masks there without reading values)."""
    saved = torch.compiler.is_compiling, torch.compiler.is_exporting
    torch.compiler.is_compiling = torch.compiler.is_exporting = lambda: True
    try:
        yield
    finally:
        torch.compiler.is_compiling, torch.compiler.is_exporting = saved


def _fresh(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copies of the example's tensors: a forward that writes its input in place (``x.relu_()``)
    must not change what the other run sees."""
    copy = lambda v: v.clone() if isinstance(v, Tensor) else v  # noqa: E731
    return tree_map(copy, (args, kwargs))


def _leaves(out: Any, depth: int = 4) -> list[Tensor]:
    """The output's tensors, a dataclass's fields' too (pytree sees one opaque leaf)."""
    found: list[Tensor] = []
    for v in tree_flatten(out)[0]:
        if isinstance(v, Tensor):
            found.append(v)
        elif depth and dataclasses.is_dataclass(v) and not isinstance(v, type):
            found += _leaves([getattr(v, f.name) for f in dataclasses.fields(v)], depth - 1)
    return found


@contextmanager
def _seeded(seed: int, model: nn.Module) -> Iterator[None]:
    """Inside, the CPU's and the model's GPUs' default generators start from ``seed``; after,
    they, Python's and numpy's global states and the generators the model's layers hold are
    as they were (``torch.manual_seed`` would reseed every GPU, saved or not)."""
    gpus = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"})
    own = [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Generator)]
    states = [g.get_state() for g in own]
    python = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with torch.random.fork_rng(devices=gpus, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            for i in gpus:
                torch.cuda.default_generators[i].manual_seed(seed)
            yield
    finally:
        for g, state in zip(own, states):
            g.set_state(state)
        random.setstate(python)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def _on(args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example's tensors for weights on ``device``: all on the meta device for meta weights;
    else meta ones (a plan's ``example_inputs()``) made real on ``device``, floats drawn from a
    seeded normal, integers and booleans zero."""
    generator = torch.Generator().manual_seed(_SEED)

    def moved(v: Any) -> Any:
        if not isinstance(v, Tensor) or v.device == device:
            return v
        if device.type == "meta":
            return v.to(device)
        if not v.is_meta:
            return v
        if v.is_floating_point():
            return torch.randn(v.shape, generator=generator, dtype=v.dtype).to(device)
        return torch.zeros(v.shape, dtype=v.dtype, device=device)

    return tree_map(moved, (args, kwargs))


def _first_difference(eager: list[Tensor], traced: list[Tensor]) -> str | None:
    if len(eager) != len(traced):
        return f"the forward returns {len(eager)} tensors, the traced graph {len(traced)}"
    for i, (e, t) in enumerate(zip(eager, traced)):
        if e.shape != t.shape or e.dtype != t.dtype:
            return f"output {i} is {e.dtype} {list(e.shape)} in the forward, {t.dtype} {list(t.shape)} in the traced graph"
        if e.is_meta or t.is_meta:
            continue
        if not (e.is_floating_point() or e.is_complex()):
            if not torch.equal(e, t):
                return f"output {i} differs"
            continue
        finite = e[e.isfinite()].abs()
        magnitude = float(finite.max()) if finite.numel() else 0.0
        off = (e - t).abs()
        tolerance = _TOLERANCE.get(e.dtype, 5e-2) * magnitude
        bad = ~(off <= tolerance) & ~(e == t) & ~(e.isnan() & t.isnan())  # NaN, inf alike
        if bool(bad.any()):
            return f"output {i} differs by up to {float(off[bad].max()):.3g} (its largest magnitude: {magnitude:.3g})"
    return None
