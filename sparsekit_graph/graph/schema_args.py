"""Call arguments bound by an ATen schema's names (``aten::div(Tensor self, Tensor other)``),
with the types checked where several overloads could take them (``normalize`` uses it)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from .meta import META

__all__ = ["PRIMARY", "RENAME", "bind_schema", "is_int", "schemas", "traced_value"]

PRIMARY = ("input", "self", "tensor", "x", "a", "x1")  # names the primary tensor goes by
_SECOND = {"other": "x2"}  # ``x2=`` (read as ``other``) of ``cosine_similarity(x1, x2)``, ``cdist``: its own name there
RENAME = {"self": "input", "split_size_or_sections": "split_size", "split_sizes": "split_size", "axis0": "dim0", "axis1": "dim1"}


@cache
def schemas(name: str) -> tuple[Any, ...]:
    """Overloads of ``aten::name`` without ``out=`` arguments or named dimensions."""
    try:
        found = torch._C._jit_get_schemas_for_operator(f"aten::{name}")
    except RuntimeError:
        return ()
    keep = []
    for s in found:
        if any(a.is_out for a in s.arguments) or "Dimname" in str(s):
            continue
        keep.append(s)
    return tuple(keep)


def bind_schema(
    schema: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, check_types: bool = True, lenient: bool = False
) -> tuple[dict[str, Any], frozenset[str]] | None:
    """Arguments by the schema's names, or None if they do not fit it (``check_types``: also
    the argument types, to choose among overloads; an ATen node's overload is already chosen)."""
    params = list(schema.arguments)
    positional = [p for p in params if not p.kwarg_only]
    names = [p.name for p in params]
    args = _pack_varargs(positional, args, lenient)
    if args is None:
        return None
    given: dict[str, Any] = {p.name: v for p, v in zip(positional, args)}
    primary = next((n for n in names if n in PRIMARY), None)  # where(condition, self, other): not the first
    for k, v in kwargs.items():
        key = k if k in names else (primary if k in PRIMARY else _SECOND.get(k) if _SECOND.get(k) in names else None)
        if key is None or key in given:
            return None
        given[key] = v
    values: dict[str, Any] = {}
    for p in params:
        if p.name in given:
            if check_types and not (_fits(p, given[p.name]) or lenient and _wrapped_number(p, given[p.name])):
                return None
            values[p.name] = given[p.name]
        elif p.has_default_value():
            values[p.name] = p.default_value
        else:
            return None
    out = {("input" if i == 0 and k in PRIMARY else RENAME.get(k, k)): v for i, (k, v) in enumerate(values.items())}
    passed = frozenset(("input" if names.index(k) == 0 and k in PRIMARY else RENAME.get(k, k)) for k in given)
    return out, passed


def _pack_varargs(positional: list[Any], args: tuple[Any, ...], lenient: bool = False) -> tuple[Any, ...] | None:
    """``x.view(2, 3)`` / ``x.permute(0, 2, 1)``: trailing ints fill one list argument.
    ``lenient``: ``x.view(-1)`` / ``x.flip(1)`` / ``torch.zeros(n)``, a lone int last is that list of one."""
    if len(args) <= len(positional):
        k = len(args) - 1
        if lenient and k >= 0 and is_int(args[k]):
            p = positional[k]
            if str(p.real_type) in ("List[int]", "List[SymInt]") and p.N is None:
                return (*args[:k], (args[k],))
        return args
    for k, p in enumerate(positional):
        if str(p.real_type).startswith("List["):
            if len(positional) == k + 1 and all(is_int(a) for a in args[k:]):
                return (*args[:k], tuple(args[k:]))
            return None
    return None


def traced_value(x: Any) -> Any:
    return x.meta.get(META) if isinstance(x, fx.Node) else x


def is_int(x: Any) -> bool:
    v = traced_value(x)
    return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, torch.SymInt)


def _fits(param: Any, x: Any) -> bool:
    """Could this traced value be passed for a schema argument?"""
    t = str(param.real_type)
    if t.startswith("Optional["):
        if x is None:
            return True
        t = t[len("Optional[") : -1]
    if t.startswith("List["):
        elem = t[len("List[") : -1]
        v = traced_value(x)
        if isinstance(v, torch.Size):
            return elem in ("int", "SymInt")
        if isinstance(x, (tuple, list)):
            return all(_fits_type(elem, e) for e in x)
        if isinstance(v, (tuple, list)):  # a node holding a tuple, e.g. the parts of chunk()
            return all(_fits_type(elem, e) for e in v)
        return param.N is not None and elem in ("int", "SymInt") and is_int(x)  # int[1] also takes an int
    return _fits_type(t, x)


def _wrapped_number(param: Any, x: Any) -> bool:
    """A Python number for a tensor argument, which torch wraps (``torch.div(1.0, h)``, ``torch.sub(1, h)``)."""
    return str(param.real_type) == "Tensor" and type(x) in (int, float, bool)


def _fits_type(t: str, x: Any) -> bool:
    v = traced_value(x)
    if t == "Tensor":
        return isinstance(v, Tensor)
    if isinstance(v, Tensor):
        return False
    if t in ("int", "SymInt"):
        return is_int(x)
    check = _SCALAR_CHECKS.get(t)
    return check(v) if check is not None else True


_SCALAR_CHECKS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float, bool, complex)),
    "ScalarType": lambda v: isinstance(v, torch.dtype),
    "str": lambda v: isinstance(v, str),
    "MemoryFormat": lambda v: isinstance(v, torch.memory_format),
    "Layout": lambda v: isinstance(v, torch.layout),
    "Device": lambda v: isinstance(v, (torch.device, str, int)),
}
