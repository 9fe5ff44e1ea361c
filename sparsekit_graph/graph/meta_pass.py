"""The shape pass: run a traced graph on meta tensors, so every node learns its output's shape
(``node.meta["skg.value"]``) without reading a weight."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import TraceError
from .meta import META, TRACED_CONSTANT
from .shapes import broadcast_only, shape_only
from .tensor_types import move_on_meta

__all__ = ["MetaRunner", "NoMetaKernel", "to_meta"]


class NoMetaKernel(TraceError):
    """An op of the graph has no meta kernel: its output's shape depends on its input's values
    (``nonzero``, ``masked_select``, ``unique``), which meta tensors do not hold."""


# what torch raises for an op whose meta output would depend on values
_NO_KERNEL: tuple[type[Exception], ...] = (
    NotImplementedError,
    torch._subclasses.fake_tensor.DynamicOutputShapeException,
    torch._subclasses.fake_tensor.DataDependentOutputException,
)


def to_meta(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.to("meta") if x.device.type != "meta" else x
    if isinstance(x, (tuple, list)):
        return type(x)(to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: to_meta(v) for k, v in x.items()}
    return x


def _meta_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)``; where it refuses a tensor ``forward`` made on the CPU beside meta
    ones (``torch.linspace(-1, 1, H)`` in CoordConv, ``index_add(1, torch.arange(n), y)``),
    again with every tensor on meta."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if not any(isinstance(v, Tensor) and v.device.type != "meta" for v in leaves):
            raise
        return fn(*to_meta(args), **to_meta(kwargs))


def _method(name: str) -> Any:
    return lambda self, *args, **kwargs: getattr(self, name)(*args, **kwargs)


class MetaRunner:
    """Runs the graph on meta tensors; modules run with meta copies of their own state.

    A plain loop over the nodes: ``fx.Interpreter`` also indexes every submodule and enters two
    context managers per node, which cost more than the meta work on a ResNet."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.graph = graph
        self._state: dict[str, dict[str, Tensor]] = {}

    def run(self, *inputs: Any) -> None:
        self.start(list(inputs))
        self.value(None)

    def start(self, inputs: list[Any]) -> None:
        self._env: dict[fx.Node, Any] = {}
        self._given = inputs

    def value(self, last: fx.Node | None) -> Any:
        """Run the nodes not run yet, up to ``last`` (every node: None); ``last``'s value."""
        env, given = self._env, self._given
        for n in self.graph.nodes:
            if n in env:
                if n is last:
                    break
                continue
            try:
                out = self._node(n, env, given)
            except TraceError:
                raise
            except Exception as e:  # noqa: BLE001
                where = f"layer {n.target}" if n.op == "call_module" else f"node {n.name} ({_describe(n)})"
                error = NoMetaKernel if isinstance(e, _NO_KERNEL) else TraceError
                raise error(f"shape propagation failed at {where}: {type(e).__name__}: {e}") from e
            n.meta[META] = out
            env[n] = out
            if n is last:
                break
        return env.get(last) if last is not None else None

    def _node(self, n: fx.Node, env: dict[fx.Node, Any], given: list[Any]) -> Any:
        if n.op == "placeholder":
            if str(n.target).startswith("**"):  # **kwargs: the dict _propagate gathered
                return to_meta(given.pop(0))
            if str(n.target).startswith("*"):  # *args: everything left but what later placeholders take
                k, later = 0, n.next
                while later.op == "placeholder":  # a **kwargs or keyword-only input after *args
                    k, later = k + 1, later.next
                rest, given[:] = tuple(given[: len(given) - k]), given[len(given) - k :]
                return to_meta(rest)
            return to_meta(given.pop(0))
        if n.op == "get_attr":
            value = n.meta[TRACED_CONSTANT] if TRACED_CONSTANT in n.meta else self._attr(str(n.target))
            if isinstance(value, Tensor) and value.dtype == torch.bool and value.device.type != "meta":
                return value.clone()  # a mask: x[:, mask] has no meta kernel without its values
            return to_meta(value)
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
        if n.op == "call_function":
            fast = broadcast_only(n.target, args, kwargs)
            return fast if fast is not None else _meta_call(n.target, args, kwargs)
        if n.op == "call_method":
            fast = broadcast_only(n.target, args, kwargs)
            if fast is None and args and isinstance(args[0], Tensor) and args[0].device.type == "meta":
                fast = move_on_meta(str(n.target), args[0], args[1:], kwargs)
            return fast if fast is not None else _meta_call(_method(n.target), args, kwargs)
        if n.op == "call_module":
            return self._module(str(n.target), args, kwargs)
        return args[0]  # output

    def _attr(self, target: str) -> Any:
        obj: Any = self.model
        for atom in target.split("."):
            sub = obj._modules.get(atom) if isinstance(obj, nn.Module) else None
            if sub is not None:  # a layer of the graph's path: no Module.__getattr__ (twice per atom)
                obj = sub
                continue
            if not hasattr(obj, atom):
                raise TraceError(f"shape propagation failed: the model has no attribute {target!r}")
            obj = getattr(obj, atom)
        return obj

    def _module(self, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mod = self._attr(target)
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
            fast = shape_only(mod, args[0], target)
            if fast is not None:
                return fast
        state = self._state.get(target)
        if state is None:
            state = {k: to_meta(v) for k, v in (*mod.named_parameters(), *mod.named_buffers())}
            self._state[target] = state
        # a tensor made on the CPU from a boolean buffer (kept real above: ``zeros_like(self.mask)``
        # as an attention mask) beside meta ones: as for functions, again all on meta
        return _meta_call(partial(_call_with, mod, state), args, kwargs)


def _call_with(mod: nn.Module, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """``mod(*args, **kwargs)`` with ``state`` (meta copies) for its parameters and buffers."""
    return torch.func.functional_call(mod, state, args, kwargs, tie_weights=False, strict=False)


def _describe(n: fx.Node) -> str:
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
    return f"{n.op} {target}"
