"""One spelling per op: every call bound to one canonical op and torch's own argument names.

``x.mean(axis=(2, 3), keepdims=True)``, ``torch.mean(input=x, dim=(2, 3), keepdim=True)`` and
``torch.mean(x, (2, 3), True)`` all become ``Call(torch.mean, {"input": x, "dim": (2, 3),
"keepdim": True, ...})``. Methods map to their torch functions, numpy aliases to torch names
(``axis``/``dim``, ``keepdims``/``keepdim``, ``x``/``a``/``x1``/``self``/``input``,
``x2``/``other``), in-place variants (``add_``) to their op with ``inplace=True``, and tensor
attributes read through ``getattr`` (``x.T``, ``x.shape``) to ``torch.Tensor.<attr>``; a named
element of a returned tuple (``x.max(1).values``) is ``getitem`` by its position.
Arguments are bound against the Python signature where torch has one, else against the
operator schemas, choosing the overload whose argument types fit the traced values; the
plan for each spelling is cached. The primary tensor is always called ``input``.
"""

from __future__ import annotations

import builtins
import inspect
import operator
import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from .aten import OP_ALIASES, aten_op, is_aten
from .meta import CALL
from .same_as import same_as
from .schema_args import PRIMARY, RENAME, bind_schema, schemas, traced_value

__all__ = ["CALL", "Call", "bind_call", "canonical_op", "normalize", "traced_call"]


_KW_ALIASES = {"axis": "dim", "keepdims": "keepdim", "x2": "other"}
_OPERATOR_INPLACE = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod, operator.ipow,
    operator.iand, operator.ior, operator.ixor, operator.imatmul, operator.ilshift, operator.irshift,
}  # fmt: skip
_OPERATOR_NAMES = {operator.getitem: ("input", "index"), operator.setitem: ("input", "index", "value")}
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")
# ``g.__iadd__(t)``, ``g.__add__(t)``, ``g.__neg__()``: the operator Python calls for ``g += t``, ``g + t``, ``-g``.
_DUNDERS: dict[str, Callable[..., Any]] = {
    f"__{n}__": getattr(operator, f"{n}_" if n in ("and", "or") else n)
    for n in (*_BINARY, *(f"i{b}" for b in _BINARY), "neg", "pos", "abs", "invert", "lt", "le", "gt", "ge", "eq", "ne", "getitem")
}
# ``g.__radd__(t)`` is ``t + g``: the operator with its operands swapped.
_REFLECTED: dict[str, Callable[..., Any]] = {f"__r{b}__": _DUNDERS[f"__{b}__"] for b in _BINARY}
# torch keeps Python 2's ``__div__``, ``__idiv__`` and ``__rdiv__`` as true division (``1 / g`` calls ``__rdiv__``).
_DUNDERS.update(__div__=operator.truediv, __idiv__=operator.itruediv)
_REFLECTED["__rdiv__"] = operator.truediv


@dataclass(frozen=True)
class Call:
    """A node's op and arguments in one spelling.

    Attributes:
        op: The canonical op: a torch function (``torch.cat``), a tensor method or attribute
            (``torch.Tensor.view``, ``torch.Tensor.T``), an ``operator`` function, the module
            type for ``call_module`` nodes, or the raw target when nothing is known about it.
        args: Canonical argument name -> value (``fx.Node`` or literal), defaults filled in.
        passed: The names the call gave explicitly.
        inplace: The call mutates its input (``x.add_(y)``, ``x.relu_()``).
        bound: False when the arguments could not be matched to any signature of ``op``.
    """

    op: Hashable
    args: Mapping[str, Any] = field(default_factory=dict)
    passed: frozenset[str] = frozenset()
    inplace: bool = False
    bound: bool = True


def normalize(node: fx.Node, module: torch.nn.Module | None = None) -> Call:
    """The node's ``Call`` (cached on ``node.meta["skg.call"]``)."""
    call = node.meta.get(CALL)
    if call is None:
        call = _normalize(node, module)
        if node.op != "call_module" or module is not None:  # a layer's, bound without it, is asked again
            node.meta[CALL] = call
    return call


def canonical_op(target: Any) -> tuple[Hashable, Callable[..., Any] | str | None, bool]:
    """(canonical op, what to bind arguments against, in-place?) for a call target or method name."""
    if isinstance(target, str):  # a method name
        inplace = target.endswith("_") and not target.startswith("_") and hasattr(Tensor, target)  # fill_, copy_ too
        base = target[:-1] if inplace and hasattr(Tensor, target[:-1]) else target
        fn = getattr(torch, base, None)
        if not callable(fn) or isinstance(fn, type):
            fn = getattr(Tensor, base, target)  # a method torch has no function of (``nelement``)
        op = OP_ALIASES.get(fn, fn)
        return op, getattr(Tensor, target, None) or target, inplace
    name = getattr(target, "__name__", "")
    method = getattr(Tensor, name, None) if isinstance(name, str) else None
    if method is not None and method is target:  # torch.Tensor.contiguous called as a function
        return canonical_op(target.__name__)
    if isinstance(name, str) and name.endswith("_") and getattr(torch, name, None) is target:
        if callable(getattr(torch, name[:-1], None)):
            return canonical_op(name[:-1])[0], target, True  # torch.relu_(x): in place
    try:
        return OP_ALIASES.get(target, target), target, False
    except TypeError:  # unhashable target
        return target, target, False


def _normalize(node: fx.Node, module: torch.nn.Module | None) -> Call:
    if node.op == "call_module" and module is not None:
        return _bind_module(type(module), node.args, node.kwargs)
    if node.op == "call_function" and node.target is builtins.getattr and len(node.args) == 2:
        obj, attr = node.args
        if isinstance(attr, str) and isinstance(traced_value(obj), Tensor) and hasattr(Tensor, attr):
            case = same_as(getattr(Tensor, attr), {"input": obj}, frozenset({"input"}))  # x.mH of a real x: x.mT
            fn = getattr(torch, attr, None)  # ``x.real`` is ``torch.real(x)``
            op = fn if isinstance(fn, types.BuiltinFunctionType) else getattr(Tensor, attr)
            return Call(*case) if case else Call(op, {"input": obj}, frozenset({"input"}))
        fields = getattr(type(traced_value(obj)), "__match_args__", ())  # x.max(1).values: a named element
        if isinstance(traced_value(obj), tuple) and attr in fields:
            return Call(operator.getitem, {"input": obj, "index": fields.index(attr)}, frozenset({"input", "index"}))
        return Call(builtins.getattr, {"input": obj, "name": attr}, frozenset({"input", "name"}))
    if node.op not in ("call_function", "call_method"):
        return Call(node.target, {}, frozenset(), bound=False)
    if is_aten(node.target):
        op, inplace = aten_op(node.target)
        bound = bind_schema(node.target._schema, node.args, dict(node.kwargs), check_types=False)
        if bound is None:
            return Call(op, {"input": node.args[0]} if node.args else {}, frozenset(), inplace, bound=False)
        case = same_as(op, bound[0], bound[1])  # aten.conj_physical of a real tensor: contiguous
        return Call(*case, inplace) if case else Call(op, bound[0], bound[1], inplace)
    return bind_call(node.target, node.args, dict(node.kwargs))


def bind_call(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """The ``Call`` of a call to ``target`` (a function or a method name) with these arguments,
    which may be nodes or the values themselves (``size_reaching.Reaching`` binds the calls it sees)."""
    if isinstance(target, str) and target in _REFLECTED and len(args) == 2:
        target, args = _REFLECTED[target], args[::-1]
    elif isinstance(target, str):
        target = _DUNDERS.get(target, target)
    op, against, inplace = canonical_op(target)
    if target in _OPERATOR_NAMES or getattr(target, "__module__", None) == "_operator":
        names = _OPERATOR_NAMES.get(target, ("input", "other", "third"))
        bound = dict(zip(names, args))
        return Call(op, bound, frozenset(bound), target in _OPERATOR_INPLACE)
    if _aten_packet(target):  # torch.ops.aten.convolution(...): the overload whose schema fits
        op, inplace = aten_op(target)
        against = target.__name__
    kwargs = dict(kwargs)
    written = kwargs.pop("out") if isinstance(kwargs.get("out"), fx.Node) else None  # torch.add(a, b, out=buf)
    call = _bind(op, against, args, kwargs)
    case = same_as(call.op, call.args, call.passed) if call.bound else None  # torch.hsplit: tensor_split
    if case is not None:
        call = Call(*case)
    if written is not None and call.bound:  # bound without it (no schema takes ``out``); rules do not model it
        return Call(call.op, {**call.args, "out": written}, call.passed | {"out"}, inplace)
    return Call(call.op, call.args, call.passed, inplace, call.bound)


def traced_call(func: Any, args: tuple[Any, ...]) -> tuple[str, Any, tuple[Any, ...]]:
    """(node kind, target, arguments) torch.fx records for ``func(*args)`` as a
    ``TorchFunctionMode`` sees it: ``g ** 2`` hands the mode ``Tensor.__pow__`` (named ``pow``),
    ``1 / g`` hands it ``Tensor.__rdiv__``; torch.fx writes them ``operator.pow(g, 2)`` and
    ``operator.truediv(1, g)``. A tensor method is a ``call_method`` by its name, anything else
    the function itself."""
    name = _tensor_attributes().get(id(func))
    if name in _REFLECTED and len(args) == 2:
        return "call_function", _REFLECTED[name], args[::-1]
    if name in _DUNDERS:
        return "call_function", _DUNDERS[name], args
    if name is not None:
        return "call_method", name, args
    return "call_function", func, args


@cache
def _tensor_attributes() -> dict[int, str]:
    """id of each function ``torch.Tensor`` holds -> its name (an operator's name where it has several)."""
    names: dict[int, str] = {}
    for cls in reversed(Tensor.__mro__):
        for name, value in vars(cls).items():
            if callable(value) and (id(value) not in names or name in _DUNDERS or name in _REFLECTED):
                names[id(value)] = name
    return names


def _aten_packet(target: Any) -> bool:
    """``torch.ops.aten.<name>`` called without choosing an overload."""
    return isinstance(target, torch._ops.OpOverloadPacket) and target._qualified_op_name.startswith("aten::")


def _bind(op: Hashable, against: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    kwargs = {_KW_ALIASES.get(k, k): v for k, v in kwargs.items()}
    fn = against if callable(against) else None
    fn = _SIGNATURE_OF.get(fn, fn) if isinstance(fn, Hashable) else fn
    if fn is not None and _python_signature(fn) is not None:
        return _bind_python(op, fn, args, kwargs)
    name = getattr(fn, "__name__", against if isinstance(against, str) else None)
    if name:
        for lenient in (False, True):  # x.flip(1): an int for a list only where nothing else fits
            for schema in schemas(name):
                bound = bind_schema(schema, args, kwargs, lenient=lenient)
                if bound is not None:
                    values, passed = bound
                    return Call(op, values, passed)
    if len(args) == 1 and not kwargs:  # x.float(): nothing to bind but the tensor itself
        return Call(op, {"input": args[0]}, frozenset({"input"}))
    return Call(op, {"input": args[0]} if args else {}, frozenset(), bound=False)


def _new_tensor(
    self: Tensor,
    data: Any,
    *,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
    layout: Any = None,
    pin_memory: bool = False,
) -> None:
    """The signature of ``Tensor.new_tensor``, a builtin with neither a Python signature nor a schema."""


def _type(self: Tensor, dtype: Any = None, non_blocking: bool = False) -> None:
    """The signature of ``Tensor.type`` (``x.type(torch.float16)``; ``x.type()`` names the type)."""


# Builtins bound against a Python function of the same signature (``h.new_tensor(h.size(1))``).
_SIGNATURE_OF: dict[Any, Callable[..., Any]] = {Tensor.new_tensor: _new_tensor, Tensor.type: _type}


@cache
def _python_signature(fn: Any) -> inspect.Signature | None:
    """The signature of a Python-level function (``F.pad``, ``Tensor.split``), or None for builtins."""
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, _MethodOf)):
        return None
    if isinstance(fn, _MethodOf):
        sig = inspect.signature(fn.fn)
        return sig.replace(parameters=list(sig.parameters.values())[1:])
    dispatched = torch._jit_internal.boolean_dispatched.get(fn)  # F.max_pool2d and friends
    if dispatched is not None:
        fn = dispatched["if_false"]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    return None if kinds == {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} else sig


def _bind_module(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """A module call: the common ``forward(x)`` without inspecting anything, else bound."""
    if not kwargs and len(args) == 1 and _single_input(cls):
        return Call(cls, {"input": args[0]}, frozenset({"input"}))
    return _bind_python(cls, _MethodOf(cls.forward), args, kwargs, first_is_input=True)


@cache
def _single_input(cls: type) -> bool:
    """``cls.forward(self, x)`` takes exactly one required argument and nothing else."""
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class _MethodOf:
    """An unbound ``forward`` whose signature drops ``self`` (hashable for the signature cache)."""

    fn: Callable[..., Any]


def _bind_python(op: Hashable, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, first_is_input: bool = False) -> Call:
    sig = _python_signature(fn)
    if sig is None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return Call(op, {"input": args[0]} if args else {}, frozenset(), bound=False)
    params = list(sig.parameters.values())
    first = params[0].name if params else None
    kwargs = {_KW_ALIASES.get(k, k): v for k, v in kwargs.items()}
    if first is not None:
        kwargs = {(first if k in PRIMARY and k not in sig.parameters else k): v for k, v in kwargs.items()}
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return Call(op, {"input": args[0]} if args else {}, frozenset(), bound=False)
    # an argument passed with its default value (F.embedding re-dispatched through
    # __torch_function__ passes every default) is the same call as one that leaves it out
    passed = {k for k, v in bound.arguments.items() if not _is_default(v, sig.parameters[k].default)}
    bound.apply_defaults()
    values: dict[str, Any] = {}
    for i, (k, v) in enumerate(bound.arguments.items()):
        canon = "input" if i == 0 and (k in PRIMARY or first_is_input) else RENAME.get(k, k)
        values[canon] = v
        if k in passed:
            passed.discard(k)
            passed.add(canon)
    return Call(op, values, frozenset(passed))


def _is_default(value: Any, default: Any) -> bool:
    """A literal equal to the parameter's default (same type: ``True`` is not ``1``)."""
    if default is inspect.Parameter.empty or isinstance(value, (fx.Node, Tensor)) or type(value) is not type(default):
        return False
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - an odd type that cannot be compared: keep it as passed
        return False


# -- operator schemas -------------------------------------------------------------------------
