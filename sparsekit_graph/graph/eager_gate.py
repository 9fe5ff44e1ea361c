"""Where the eager forward must be compared with its graph: the code it reaches asks a value
what it is (``eager_check`` runs the comparison)."""

from __future__ import annotations

import operator

from torch import nn

from .forward_modes import FORMATS, code_reads

__all__ = ["asks_what_values_are"]

# What a value answers about itself, other than a tensor's shape and data: named, or called under any alias
_INTROSPECTION = frozenset({
    "__class__", "__mro__", "__bases__", "__dict__", "Proxy",  # ``isinstance(h, torch.fx.Proxy)``
    "__builtins__", "__str__", "__repr__", "__format__", FORMATS,  # ``__builtins__["type"]``, ``f"{h}"``
    "__getattribute__", "node", "tracer",  # a Proxy's own attributes, which a tensor lacks (``try: h.node``)
    # tracing and compiling asked of torch (HF's ``is_torchdynamo_compiling()``)
    # (``torch.jit.is_scripting()`` / ``is_tracing()``: False under both tracers, as in eager)
    "is_fx_tracing", "is_fx_symbolic_tracing", "is_compiling", "is_exporting",
    "is_torchdynamo_compiling", "is_torchdynamo_exporting",
    # whether a value overrides torch functions (a Proxy does): ``torch.overrides.has_torch_function((h,))``
    "has_torch_function", "has_torch_function_unary", "has_torch_function_variadic",
    "_has_torch_function", "_has_torch_function_unary", "_has_torch_function_variadic",
})  # fmt: skip
_DEVICE = frozenset({"device", "is_meta", "get_device", "data_ptr"})  # what a meta tensor answers unlike the real one
_INTROSPECTING = (
    type, callable, issubclass, dir, vars, repr, str, format, id, hash, getattr, hasattr, eval, exec, compile,
    operator.attrgetter, operator.methodcaller,  # ``attrgetter("".join(["__cl", "ass__"]))(h)``
)  # fmt: skip


def asks_what_values_are(model: nn.Module) -> bool:
    """Does the code the forward reaches ask a value what it is (``type(h)``, ``callable(h)``,
    ``h.__class__``, ``getattr`` / ``hasattr``, ``issubclass``, ``__mro__``, ``dir``, ``repr``,
    ``id``), or torch whether it is traced (``is_fx_tracing``, ``is_compiling``)? Only then is
    the graph run beside the forward (two forwards: three times a ResNet-18's planning at 32x32).
    On meta weights, also: does it ask a tensor's device (``next(self.parameters()).is_meta``),
    which the real model answers otherwise?"""
    on_meta = getattr(next(model.parameters(), None), "is_meta", False)
    return bool(code_reads(model, _INTROSPECTION | _DEVICE if on_meta else _INTROSPECTION, functions=_INTROSPECTING))
