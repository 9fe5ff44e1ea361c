"""``torch.fx.Tracer`` with two of its hooks at lower cost; the graph it records is the same.

Planning a ResNet at 32x32 is mostly symbolic tracing. Two of the tracer's per-call costs are
bookkeeping rather than tracing: ``create_arg`` runs ``Tracer``'s tensor and parameter checks
on every plain number and Proxy before torch's own fast path, and ``call_module`` copies the
scope object (``copy.copy``) on every module call. Together they were ~20% of tracing a
ResNet-50. A third: every node gets ``copy.copy`` of the module stack, an ``OrderedDict`` that
``copy`` rebuilds through ``__reduce_ex__`` (~10% of tracing); the stack here copies itself
directly into an equal ``OrderedDict``. ``tests/test_fast_tracer.py`` checks graphs and node
metadata against ``fx.Tracer``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["FastTracer"]

# Values ``fx.Tracer.create_arg`` returns unchanged: none of them is a tensor, parameter,
# module, named tuple or opaque object, so torch's own checks would all fail first.
_LITERALS = frozenset(
    {int, float, bool, str, complex, type(None), type(...), torch.dtype, torch.device, torch.memory_format, torch.layout}
)


class _ModuleStack(OrderedDict[str, tuple[str, Any]]):
    """``Tracer.module_stack``, whose ``copy.copy`` (one per node) is a plain ``OrderedDict``
    of the same items, made without ``copy``'s generic ``__reduce_ex__`` path."""

    def __copy__(self) -> OrderedDict[str, tuple[str, Any]]:
        return OrderedDict(self)


class FastTracer(fx.Tracer):
    """``fx.Tracer`` recording the same graph, with cheaper argument lowering and module calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module_stack = _ModuleStack()

    def create_arg(self, a: Any) -> Any:
        """Literals, Proxies and plain tuples/lists of them directly; everything else as ``fx.Tracer``."""
        kind = type(a)
        if kind in _LITERALS:
            return a
        if isinstance(a, fx.Proxy):
            return a.node
        if kind is tuple:
            return tuple(self.create_arg(e) for e in a)
        if kind is list:
            return [self.create_arg(e) for e in a]
        if kind is dict and not a:
            return {}
        return super().create_arg(a)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fx.Tracer.call_module``: the same scope, module stack and call counts, with the
        previous scope kept as two locals instead of a copied ``Scope``."""
        path = self.path_of_module(m)
        scope = self.scope
        before = scope.module_path, scope.module_type
        scope.module_path, scope.module_type = path, type(m)
        try:
            calls = self.num_calls.get(path, 0)
            key = f"{path}@{calls}" if calls > 0 else path
            self.module_stack[key] = (path, type(m))
            self.num_calls[path] = calls + 1
            if self.is_leaf_module(m, path):
                out = self.create_proxy("call_module", path, args, kwargs)
            else:
                out = forward(*args, **kwargs)
            last, _ = self.module_stack.popitem(last=True)
            if last != key:
                raise RuntimeError(f"torch.fx module stack out of order: {last!r}, expected {key!r}")
        finally:
            scope.module_path, scope.module_type = before
        return out
