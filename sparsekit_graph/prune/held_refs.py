"""References to a model's own layers and tensors held past its module tree: a lambda's
closure (``self.act = lambda t: t * self.g``, ``m.forward = lambda x: m.c(m.a(x))``), a
``functools.partial``, a list or dict attribute (``self.extra = {"g": self.g}``).

``copy.deepcopy`` copies functions as themselves, so a copy's lambda still runs the original's
layers (a pruned model that computes with the dense one); surgery puts a new parameter into
its layer, so a list holding the old one still holds it (a pruned model that does not run).
``rebind`` replaces such references by the objects a mapping gives, building new functions,
partials and containers where they hold one (the original model may share them: none is
changed in place)."""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import torch
from torch import nn

from ..graph.trace_mode import MODULE_KEYS

__all__ = ["rebind"]

_ATOMS = frozenset({str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device})
_DEPTH = 4


def rebind(model: nn.Module, mapping: dict[int, Any]) -> None:
    """In every layer of ``model``, each held reference to an object whose id ``mapping`` holds
    becomes the object it maps to (through containers, closures, defaults, partials and bound
    methods, a few levels deep)."""
    if not mapping:
        return
    done: dict[int, Any] = {}  # an object many layers hold (a config) is looked through once
    for m in model.modules():
        for key, v in list(m.__dict__.items()):
            if key not in MODULE_KEYS:  # torch's own: stores, hook dictionaries, flags
                new = _mapped(v, mapping, 0, done)
                if new is not v:
                    m.__dict__[key] = new


def _mapped(v: Any, mapping: dict[int, Any], depth: int, done: dict[int, Any]) -> Any:
    """``v``, or a new object holding the mapped references where it holds one."""
    if id(v) in mapping:
        return mapping[id(v)]
    if type(v) in _ATOMS or depth >= _DEPTH or isinstance(v, nn.Module):
        return v
    if id(v) in done:
        return done[id(v)][1]
    new = _looked_through(v, mapping, depth, done)
    done[id(v)] = (v, new)  # keeps ``v`` alive: its id stays its own
    return new


def _looked_through(v: Any, mapping: dict[int, Any], depth: int, done: dict[int, Any]) -> Any:
    deeper = functools.partial(_mapped, mapping=mapping, depth=depth + 1, done=done)
    if isinstance(v, list) and type(v) is list:
        items = [deeper(e) for e in v]
        return items if any(a is not b for a, b in zip(items, v)) else v
    if type(v) is tuple:
        items = tuple(deeper(e) for e in v)
        return items if any(a is not b for a, b in zip(items, v)) else v
    if type(v) is dict:
        items = {k: deeper(e) for k, e in v.items()}
        return items if any(items[k] is not e for k, e in v.items()) else v
    if isinstance(v, types.FunctionType):
        return _function(v, mapping, deeper)
    if isinstance(v, functools.partial):
        func, args, keywords = deeper(v.func), tuple(deeper(a) for a in v.args), {k: deeper(a) for k, a in v.keywords.items()}
        changed = (
            func is not v.func
            or any(a is not b for a, b in zip(args, v.args))
            or any(keywords[k] is not a for k, a in v.keywords.items())
        )
        return type(v)(func, *args, **keywords) if changed else v
    if isinstance(v, types.MethodType):
        func, owner = deeper(v.__func__), deeper(v.__self__)
        return types.MethodType(func, owner) if func is not v.__func__ or owner is not v.__self__ else v
    return _plain(v, deeper)


def _plain(v: Any, deeper: Any) -> Any:
    """A plain object (a helper or record of the user's classes), or a shallow copy of it whose
    attributes hold the mapped references."""
    attrs = getattr(v, "__dict__", None)
    if type(attrs) is not dict or isinstance(v, _NOT_PLAIN) or type(v).__module__ in ("builtins", "torch"):
        return v
    items = {k: deeper(a) for k, a in attrs.items()}
    changed = {k: a for k, a in items.items() if a is not attrs[k]}
    if not changed:
        return v
    try:
        new = copy.copy(v)
        new.__dict__.update(changed)
    except Exception:  # noqa: BLE001 - an object that does not copy: left as it is
        return v
    return new


_NOT_PLAIN = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial, nn.Module)


def _function(f: types.FunctionType, mapping: dict[int, Any], deeper: Any) -> types.FunctionType:
    """``f``, or a new function whose closure, defaults and globals (a script's ``m.forward =
    lambda x: m.c(x)`` reads the global ``m``) hold the mapped references; its globals are
    then a copy of its module's, taken now."""
    scope = f.__globals__  # a global is taken as it is (a module's may be large): the script's ``m``
    changed = {n: mapping[id(scope[n])] for n in f.__code__.co_names if n in scope and id(scope[n]) in mapping}
    cells = f.__closure__ or ()
    contents = [_content(c) for c in cells]
    closure = [deeper(c) for c in contents]
    defaults = tuple(deeper(d) for d in f.__defaults__ or ())
    kwdefaults = {k: deeper(d) for k, d in (f.__kwdefaults__ or {}).items()}
    same = (
        not changed
        and all(a is b for a, b in zip(closure, contents))
        and all(a is b for a, b in zip(defaults, f.__defaults__ or ()))
        and all(kwdefaults[k] is d for k, d in (f.__kwdefaults__ or {}).items())
    )
    if same:
        return f
    cells_out = tuple(c if a is b else types.CellType(a) for c, a, b in zip(cells, closure, contents))
    new = types.FunctionType(
        f.__code__, {**scope, **changed} if changed else scope, f.__name__, defaults or None, cells_out or None
    )
    new.__kwdefaults__ = kwdefaults or None
    new.__dict__.update(f.__dict__)
    new.__qualname__, new.__doc__, new.__module__ = f.__qualname__, f.__doc__, f.__module__
    return new


_EMPTY = object()


def _content(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name not bound yet)
        return _EMPTY
