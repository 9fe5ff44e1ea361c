"""``torch.fx.Tracer`` with two of its hooks at lower cost; the graph it records is the same.

Planning a ResNet at 32x32 is mostly symbolic tracing. Two of the tracer's per-call costs are
bookkeeping rather than tracing: ``create_arg`` runs ``Tracer``'s tensor and parameter checks
on every plain number and Proxy before torch's own fast path, and ``call_module`` copies the
scope object (``copy.copy``) on every module call. Together they were ~20% of tracing a
ResNet-50. A third: every node gets ``copy.copy`` of the module stack, an ``OrderedDict`` that
``copy`` rebuilds through ``__reduce_ex__`` (~10% of tracing); the stack here copies itself
directly into an equal ``OrderedDict``. A fourth grows with the process, not the model:
``fx.Tracer.trace`` sets ``nn.Module.__call__`` and ``__getattr__`` and restores them, and CPython
updates a slot of every subclass of ``nn.Module`` on each of those four writes (~0.3 ms per 1,000
subclasses: ~5 ms a trace once timm is imported, 3,600 subclasses with transformers' models). Here
calls are caught one level down, at ``nn.Module._call_impl`` (no slot, so no walk), and
``__getattr__`` is set on the root's own module classes only, wherever that is the same
(``_CheapPatcher``). ``tests/test_fast_tracer.py`` checks graphs and node metadata against
``fx.Tracer``.
"""

from __future__ import annotations

import functools
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx import _symbolic_trace

from .forward_modes import code_reads
from .rules import TRACED_CALL

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

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """``fx.Tracer.trace``, its ``nn.Module`` patches made by ``_CheapPatcher`` where that is the same."""
        made = getattr(_symbolic_trace, "_Patcher", None)
        if not isinstance(root, nn.Module) or not isinstance(made, type):
            return super().trace(root, concrete_args)
        calls, classes = _catchable_calls(root), _getattr_classes(root)

        def cheap() -> _CheapPatcher:  # fx makes one patcher per trace; nested traces get fx's own
            _symbolic_trace._Patcher = made
            return _CheapPatcher(self, calls, classes)

        _symbolic_trace._Patcher = cheap
        leaves = self._catch_forward_calls(root)
        try:
            return super().trace(root, concrete_args)
        finally:
            _symbolic_trace._Patcher = made
            for m in leaves:
                m.__dict__.pop("forward", None)

    def _catch_forward_calls(self, root: nn.Module) -> list[nn.Module]:
        """``self.norm.forward(h)`` calls a leaf layer as ``self.norm(h)`` does: while traced,
        each leaf's ``forward`` is its module call (an instance attribute, removed after)."""
        leaves: list[nn.Module] = []
        if "forward" not in code_reads(root, frozenset({"forward"})):  # the common case: no code to catch
            return leaves
        for path, m in root.named_modules():
            hooked = m._forward_hooks or m._forward_pre_hooks  # its forward runs no hook: traced through, as before
            if m is not root and "forward" not in m.__dict__ and not hooked and self.is_leaf_module(m, path):
                m.__dict__["forward"] = _leaf_forward(self, m)
                leaves.append(m)
        return leaves

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


def _leaf_forward(tracer: FastTracer, module: nn.Module) -> Callable[..., Any]:
    """``leaf.forward`` while traced: the tracer's module call of the leaf, with the signature of
    the forward it stands for (``inspect.signature(layer.forward)`` reads the same)."""
    forward = type(module).forward.__get__(module)

    @functools.wraps(forward)
    def call(*args: Any, **kwargs: Any) -> Any:
        return tracer.call_module(module, forward, args, kwargs)

    setattr(call, TRACED_CALL, True)  # not the instance's own forward (``rules.patched_on_instance``)
    return call


_ORIG_CALL_IMPL = nn.Module._call_impl
_WRAPPED_CALL = nn.Module._wrapped_call_impl.__code__  # ``nn.Module.__call__``: the one caller fx sees
_MISSING = object()


class _OwnAttr(_symbolic_trace._PatchedFn):
    """``cls.name = new_fn``, reverted to the class's own entry (or its absence) as it was.
    Recorded once made (``_CheapPatcher._own``): a refused write is not undone."""

    def patch(self) -> None:
        setattr(self.frame_dict, self.fn_name, self.new_fn)

    def revert(self) -> None:
        if self.orig_fn is _MISSING:
            delattr(self.frame_dict, self.fn_name)
        else:
            setattr(self.frame_dict, self.fn_name, self.orig_fn)


def _catchable_calls(root: nn.Module) -> bool:
    """Whether catching ``_call_impl`` sees every call ``nn.Module.__call__`` would: no
    compiled module (its ``__call__`` skips ``_call_impl``), no class or module with its own ``_call_impl``."""
    return nn.Module.__call__ is nn.Module._wrapped_call_impl and all(
        m._compiled_call_impl is None and type(m)._call_impl is _ORIG_CALL_IMPL and "_call_impl" not in vars(m)
        for m in root.modules()
    )


def _getattr_classes(root: nn.Module) -> tuple[type, ...] | None:
    """The root's module classes, if none of them has a ``__getattr__`` of its own (which would
    call ``nn.Module.__getattr__`` itself, so only patching that one catches its reads) or a
    metaclass that sees writes to the class (``__setattr__`` refusing them, counting them)."""
    classes = tuple({type(m): None for m in root.modules()})
    if any(
        c.__getattr__ is not nn.Module.__getattr__
        or type(c).__setattr__ is not type.__setattr__
        or type(c).__delattr__ is not type.__delattr__
        for c in classes
    ):
        return None
    return classes


class _CheapPatcher(_symbolic_trace._Patcher):
    """fx's patcher, placing its two ``nn.Module`` patches where no subclass walk follows.

    ``__call__``: ``nn.Module._call_impl`` becomes fx's module call wrapper (``__call__`` runs
    ``self._call_impl``). ``__getattr__``: set on each of the root's module classes; a module
    of another class (made in forward, kept in a plain list) then reads its attributes as they
    are, which is what fx's wrapper returns for tensors the root does not hold, and ``create_arg``
    still finds the root's own parameters and buffers by identity. Not the same as fx (known,
    left): such a module holding one of the root's parameters (fx reads it as a ``get_attr``,
    here it is the tensor: ``.t()`` on it becomes a constant); a class whose ``__getattribute__``
    calls ``nn.Module.__getattr__`` by name; a compiled module the root does not hold (both
    refuse it, with other errors)."""

    def __init__(self, tracer: fx.Tracer, calls: bool, classes: tuple[type, ...] | None) -> None:
        super().__init__()
        self.tracer, self.calls, self.classes = tracer, calls, classes

    def patch_method(self, cls: type, name: str, new_fn: Any, deduplicate: bool = True) -> None:
        if cls is nn.Module and name == "__call__" and self.calls:
            self._own(nn.Module, "_call_impl", self._call_wrapper())
        elif cls is nn.Module and name == "__getattr__" and self.classes is not None:

            def module_getattr(mod: nn.Module, attr: str) -> Any:  # the planner's own: no override (``rules.inherits_forward``)
                if _symbolic_trace.CURRENT_PATCHER is self:
                    return new_fn(mod, attr)
                now = nn.Module.__getattr__  # a trace nested in this one: its patch, as under fx's
                return (_symbolic_trace._orig_module_getattr if now is module_getattr else now)(mod, attr)

            for c in self.classes:
                self._own(c, name, module_getattr)
        else:
            super().patch_method(cls, name, new_fn, deduplicate)

    def _own(self, cls: type, name: str, new_fn: Any) -> None:
        patch = _OwnAttr(cls, name, cls.__dict__.get(name, _MISSING), new_fn)
        patch.patch()
        self.patches_made.append(patch)

    def _call_wrapper(self) -> Callable[..., Any]:
        """fx's module call wrapper, one level down: the module's own ``_call_impl`` is its forward.
        Only a call through ``nn.Module.__call__`` is caught, as fx catches it (not a class's own
        ``__call__`` running ``self._call_impl``), and only in this trace (not one nested in it)."""
        tracer, patcher = self.tracer, self

        def call_impl(mod: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if _symbolic_trace.CURRENT_PATCHER is not patcher or sys._getframe(1).f_code is not _WRAPPED_CALL:
                return _ORIG_CALL_IMPL(mod, *args, **kwargs)

            def forward(*args: Any, **kwargs: Any) -> Any:
                return _ORIG_CALL_IMPL(mod, *args, **kwargs)

            scope = getattr(getattr(mod, "forward", mod), "__globals__", {})
            _symbolic_trace._autowrap_check(patcher, scope, tracer._autowrap_function_ids)
            return tracer.call_module(mod, forward, args, kwargs)

        return call_impl
