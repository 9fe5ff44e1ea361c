"""Trace a model with torch.fx and give every node its shape from a meta-tensor pass."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules import module as _module

from ..errors import TraceError
from .export import export_graph
from .meta import EXPORTED, META
from .ops_layers import SAME_SHAPE_MODULES
from .ops_vision import register_library_rules
from .rules import inherits_forward, module_rule_for

# Layers whose output has their input's shape: no need to run them, even on meta.
_SAME_SHAPE = (*SAME_SHAPE_MODULES, nn.modules.batchnorm._BatchNorm)

__all__ = ["Inputs", "has_hooks", "is_exported", "normalize_inputs", "trace", "trace_graph"]

Inputs = Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def normalize_inputs(example_inputs: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Tensor, tuple/list or dict of tensors -> (args, kwargs)."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    raise TraceError(f"example_inputs must be a tensor, tuple or dict of tensors, got {type(example_inputs).__name__}")


@contextmanager
def _mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put every submodule in train/eval mode; afterwards restore each one's own flag, and any
    buffer that tracing changed in place (e.g. a norm layer counting ``num_batches_tracked``
    while its Python code runs under the tracer)."""
    modules = list(model.modules())
    flags = [m.training for m in modules]
    buffers = [b for b in model.buffers() if not b.is_meta]
    versions = [b._version for b in buffers]
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    attributes = [(m, dict(m.__dict__)) for m in modules]
    caches = [(v, dict(v)) for m in modules for k, v in m.__dict__.items() if type(v) is dict and not k.startswith("_")]
    # model.train() only where it changes something: some flag differs, or a layer overrides train()
    switch = any(flag != train or type(m).train is not nn.Module.train for m, flag in zip(modules, flags))
    if switch:
        model.train(train)
    try:
        yield
    finally:
        if switch:
            for m, flag in zip(modules, flags):
                object.__setattr__(m, "training", flag)  # a plain attribute: skip Module.__setattr__
        with torch.no_grad():
            for b, version, copy in zip(buffers, versions, saved):
                if b._version != version:
                    b.copy_(copy)
        _restore_attributes(attributes)
        for cache, before in caches:  # filled in place while traced (timm LeViT's bias cache, holding a Proxy)
            if cache.keys() != before.keys() or any(cache[k] is not v for k, v in before.items()):
                cache.clear()
                cache.update(before)


def _restore_attributes(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Python attributes that ``forward`` set while traced (``self.calls += 1``, ``self.last = h``
    left holding a Proxy) get their values back; the plain tensors torch.fx adds to the root as
    constants for its ``get_attr`` nodes stay."""
    for m, before in saved:
        now = m.__dict__
        for k in [k for k, v in now.items() if k not in before and type(v) is not Tensor]:
            del now[k]
        for k, v in before.items():
            if k not in now or now[k] is not v:
                now[k] = v


def trace(model: nn.Module, example_inputs: Inputs, *, train: bool = False, shapes: bool = True) -> fx.GraphModule:
    """``trace_graph`` as a runnable ``GraphModule`` over ``model``."""
    return fx.GraphModule(model, trace_graph(model, example_inputs, train=train, shapes=shapes), type(model).__name__)


def trace_graph(model: nn.Module, example_inputs: Inputs, *, train: bool = False, shapes: bool = True) -> fx.Graph:
    """Symbolically trace ``model`` (standard layers are leaves) and propagate shapes on meta.

    Every node gets ``node.meta["skg.value"]``: its output as meta tensors (or a structure
    of them, or a plain Python value). The model's weights are never read.

    Args:
        model: The model; left unchanged (its train/eval flags are restored).
        example_inputs: Real or meta tensors: a tensor, a tuple or a dict of keyword inputs.
        train: Trace the training-mode forward (auxiliary heads, stochastic depth).
        shapes: Propagate shapes (skip to only compare graph structure).

    Raises:
        TraceError: The model cannot be traced, or the inputs do not fit it; the message
            names the failing node or layer.
    """
    register_library_rules()  # torchvision/timm layers become leaves once those libraries are loaded
    args, kwargs = normalize_inputs(example_inputs)
    concrete = _concrete_args(model, args, kwargs)
    with _mode(model, train):
        try:
            graph = _Tracer().trace(model, concrete_args=concrete)
        except Exception as fx_error:  # noqa: BLE001 - fall back to torch.export
            return _exported(model, args, kwargs, fx_error)
        if shapes:
            _propagate(graph, model, args, kwargs)
    return graph


def is_exported(graph: fx.Graph) -> bool:
    """Was this graph traced by ``torch.export`` (ATen ops, eval forward only)?"""
    return any(n.op == "output" and n.meta.get(EXPORTED) for n in reversed(graph.nodes))


def _exported(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], fx_error: Exception) -> fx.Graph:
    """``torch.export`` of the model in its current mode, or a ``TraceError`` naming both failures."""
    try:
        with torch.no_grad():
            place = _to_meta if _on_meta(model) else _materialize
            graph = export_graph(model, place(args), place(kwargs))
    except Exception as e:  # noqa: BLE001 - every tracing failure becomes a TraceError
        raise TraceError(
            f"could not trace {type(model).__name__}: torch.fx: {type(fx_error).__name__}: {_first_line(fx_error)}; "
            f"torch.export: {type(e).__name__}: {_first_line(e)}. "
            "Make the data-dependent part a leaf module, or register a rule for it."
        ) from e
    next(n for n in reversed(graph.nodes) if n.op == "output").meta[EXPORTED] = True
    return graph


def _materialize(x: Any) -> Any:
    """Meta inputs as zeros beside real weights (export runs on fake copies of both)."""
    if isinstance(x, Tensor):
        return torch.zeros(x.shape, dtype=x.dtype) if x.device.type == "meta" else x
    if isinstance(x, (tuple, list)):
        return type(x)(_materialize(v) for v in x)
    if isinstance(x, dict):
        return {k: _materialize(v) for k, v in x.items()}
    return x


def _on_meta(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


class _Tracer(fx.Tracer):
    """torch.nn layers and every layer type with a registered rule stay leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return has_hooks(m) or module_rule_for(type(m)) is not None or super().is_leaf_module(m, qualname)


def has_hooks(m: nn.Module) -> bool:
    """Forward hooks change what a layer returns, and torch.fx does not trace them."""
    return bool(m._forward_hooks or m._forward_pre_hooks or _module._global_forward_hooks or _module._global_forward_pre_hooks)


def _concrete_args(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Fix the forward parameters the caller does not pass (e.g. HF's many optional kwargs)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    passed = {p.name for p in params[: len(args)]} | set(kwargs)
    fixed = {
        p.name: p.default
        for p in params
        if p.name not in passed and p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    return fixed or None


def _to_meta(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.to("meta") if x.device.type != "meta" else x
    if isinstance(x, (tuple, list)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


class _MetaRunner:
    """Runs the graph on meta tensors; modules run with meta copies of their own state.

    A plain loop over the nodes: ``fx.Interpreter`` also indexes every submodule and enters two
    context managers per node, which cost more than the meta work on a ResNet."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.graph = graph
        self._state: dict[str, dict[str, Tensor]] = {}

    def run(self, *inputs: Any) -> None:
        env: dict[fx.Node, Any] = {}
        given = list(inputs)
        for n in self.graph.nodes:
            try:
                out = self._node(n, env, given)
            except TraceError:
                raise
            except Exception as e:  # noqa: BLE001
                where = f"layer {n.target}" if n.op == "call_module" else f"node {n.name} ({_describe(n)})"
                raise TraceError(f"shape propagation failed at {where}: {type(e).__name__}: {e}") from e
            n.meta[META] = out
            env[n] = out

    def _node(self, n: fx.Node, env: dict[fx.Node, Any], given: list[Any]) -> Any:
        if n.op == "placeholder":
            if str(n.target).startswith("**"):  # **kwargs: the dict _propagate gathered
                return _to_meta(given.pop(0))
            if str(n.target).startswith("*"):  # *args: everything left but what later placeholders take
                k, later = 0, n.next
                while later.op == "placeholder":  # a **kwargs or keyword-only input after *args
                    k, later = k + 1, later.next
                rest, given[:] = tuple(given[: len(given) - k]), given[len(given) - k :]
                return _to_meta(rest)
            return _to_meta(given.pop(0))
        if n.op == "get_attr":
            return _to_meta(self._attr(str(n.target)))
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
        if n.op == "call_function":
            fast = _broadcast_only(n.target, args, kwargs)
            return fast if fast is not None else n.target(*args, **kwargs)
        if n.op == "call_method":
            fast = _broadcast_only(n.target, args, kwargs)
            return fast if fast is not None else getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_module":
            return self._module(str(n.target), args, kwargs)
        return args[0]  # output

    def _attr(self, target: str) -> Any:
        obj: Any = self.model
        for atom in target.split("."):
            if not hasattr(obj, atom):
                raise TraceError(f"shape propagation failed: the model has no attribute {target!r}")
            obj = getattr(obj, atom)
        return obj

    def _module(self, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mod = self._attr(target)
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
            fast = _shape_only(mod, args[0], target)
            if fast is not None:
                return fast
        state = self._state.get(target)
        if state is None:
            state = {k: _to_meta(v) for k, v in (*mod.named_parameters(), *mod.named_buffers())}
            self._state[target] = state
        return torch.func.functional_call(mod, state, args, kwargs, tie_weights=False, strict=False)


# Arithmetic whose result is just the broadcast of its operands: meta kernels for these run
# through Python reference implementations (slow); the shape and dtype are all we need.
_BROADCAST_OPS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, "add", "sub", "mul"}
_BROADCAST_INPLACE = {operator.iadd, operator.isub, operator.imul, "add_", "sub_", "mul_"}


def _broadcast_only(target: Any, args: Any, kwargs: Any) -> Tensor | None:
    """The result of a broadcasting add/sub/mul on meta tensors, without running it (or None)."""
    try:
        kind = "out" if target in _BROADCAST_OPS else "inplace" if target in _BROADCAST_INPLACE else None
    except TypeError:  # unhashable target
        return None
    if kind is None or kwargs or len(args) != 2 or not isinstance(args[0], Tensor):
        return None
    a, b = args
    if not isinstance(b, (Tensor, int, float)) or isinstance(b, bool):
        return None
    shape = _broadcast(a.shape, b.shape) if isinstance(b, Tensor) else a.shape
    if kind == "inplace":
        return a if shape == a.shape else None
    return torch.empty(shape, dtype=torch.result_type(a, b), device=_META_DEVICE)


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for two shapes (which costs ~30 us a call)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def _shape_only(mod: nn.Module, x: Tensor, target: str) -> Tensor | None:
    """The output of common layers from shapes alone, checking what the layer would check."""
    kind = _shape_kind(type(mod))
    if kind == "conv":
        return _conv_shape(mod, x, target)  # type: ignore[arg-type]
    if kind == "linear":
        if x.shape[-1:] != mod.weight.shape[1:]:
            raise TraceError(
                f"shape propagation failed at layer {target}: expected {mod.weight.shape[1]} features, got input {tuple(x.shape)}"
            )
        return _meta_empty((*x.shape[:-1], mod.weight.shape[0]), x)
    if kind == "layer_norm" and mod.weight is not None:
        width = tuple(mod.weight.shape)
        if tuple(x.shape[-len(width) :]) != width:
            raise TraceError(
                f"shape propagation failed at layer {target}: normalised shape {width} does not fit input {tuple(x.shape)}"
            )
        return _meta_empty(x.shape, x)
    if kind == "adaptive_pool" and not getattr(mod, "return_indices", False):
        return _adaptive_pool_shape(mod, x)
    if kind == "same":
        n = getattr(mod, "num_features", None)
        if n is not None and (x.ndim < 2 or x.shape[1] != n):
            raise _layer_error(target, f"expected {n} channels, got input {tuple(x.shape)}")
        return _meta_empty(x.shape, x)
    return None


@cache
def _shape_kind(cls: type) -> str | None:
    """Which shape shortcut a layer class takes: it runs that layer's ``forward`` unchanged."""
    if any(inherits_forward(cls, c) for c in _PLAIN_CONVS):
        return "conv"
    if inherits_forward(cls, nn.Linear):
        return "linear"
    if inherits_forward(cls, nn.LayerNorm):
        return "layer_norm"
    if any(inherits_forward(cls, c) for c in _ADAPTIVE_POOLS):
        return "adaptive_pool"
    return "same" if any(inherits_forward(cls, k) for k in _SAME_SHAPE) else None


def _meta_empty(shape: tuple[int, ...] | torch.Size, like: Tensor) -> Tensor:
    """A meta tensor of this shape and ``like``'s dtype (``empty_like`` on meta costs ~50x more)."""
    return torch.empty(shape, dtype=like.dtype, device=_META_DEVICE)


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_META_DEVICE = torch.device("meta")
_ADAPTIVE_POOLS = {
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}  # fmt: skip


def _conv_shape(mod: nn.modules.conv._ConvNd, x: Tensor, target: str) -> Tensor:
    """A convolution's output from its hyperparameters, with the checks the layer makes."""
    k = len(mod.kernel_size)
    if x.ndim not in (k + 1, k + 2) or x.shape[-k - 1] != mod.in_channels:
        raise _layer_error(target, f"expected {mod.in_channels} input channels, got input {tuple(x.shape)}")
    spatial = []
    for i, n in enumerate(x.shape[-k:]):
        span = mod.dilation[i] * (mod.kernel_size[i] - 1) + 1
        if mod.padding == "same":
            spatial.append(n)
            continue
        pad = 0 if mod.padding == "valid" else 2 * mod.padding[i]  # type: ignore[index]
        if n + pad < span:
            raise _layer_error(target, f"input {tuple(x.shape)} is smaller than the kernel")
        spatial.append((n + pad - span) // mod.stride[i] + 1)
    return _meta_empty((*x.shape[: -k - 1], mod.out_channels, *spatial), x)


def _adaptive_pool_shape(mod: nn.Module, x: Tensor) -> Tensor | None:
    """An adaptive pool's output, its ``output_size``; None for inputs the layer may refuse and
    sizes left to the input (``None``), which then run on meta (that kernel costs ~0.4 ms)."""
    k = next(k for c, k in _ADAPTIVE_POOLS.items() if inherits_forward(type(mod), c))
    size = mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size,) * k
    if x.ndim not in (k + 1, k + 2) or len(size) != k or 0 in x.shape or None in size:
        return None
    return _meta_empty((*x.shape[:-k], *size), x)


def _layer_error(target: str, detail: str) -> TraceError:
    return TraceError(f"shape propagation failed at layer {target}: {detail}")


def _describe(n: fx.Node) -> str:
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
    return f"{n.op} {target}"


def _propagate(graph: fx.Graph, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    named = {n.target for n in placeholders}
    flat: list[Any] = list(args)
    for n in placeholders[len(args) :]:
        if n.target in kwargs:
            flat.append(kwargs[n.target])
        elif str(n.target).startswith("**"):  # forward(x, **extra): the keyword inputs no parameter takes
            flat.append({k: v for k, v in kwargs.items() if k not in named})
            named |= set(kwargs)
        elif n.args:
            flat.append(n.args[0])
        else:
            raise TraceError(f"no example input for model input {n.target!r}")
    unknown = set(kwargs) - named
    if unknown:
        raise TraceError(f"example inputs {sorted(unknown)} are not inputs of the model's forward")
    if len(flat) > len(placeholders):
        raise TraceError(f"{len(flat)} example inputs given, the model's forward takes {len(placeholders)}")
    with torch.no_grad():
        _MetaRunner(model, graph).run(*flat)
