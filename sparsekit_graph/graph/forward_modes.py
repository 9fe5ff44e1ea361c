"""The forwards a model may take besides the one traced first (eval mode; torch.fx in the
caller's grad mode, torch.export with autograd off): in train mode, and under the other grad
mode, where its code reads either."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .meta import GRAD_MODE_READ, is_exported
from .user_code import by_user

__all__ = ["GRAD_READS", "Mode", "other_modes", "recording_grad_reads"]

GRAD_READS = ("is_grad_enabled", "is_inference_mode_enabled")  # torch functions whose answer a branch may take


@dataclass(frozen=True)
class Mode:
    """A forward to trace besides the first (``trace_graph``'s ``train`` and ``grad``), and the
    prefix its axis-graph nodes get (``train:``, ``grad:``)."""

    prefix: str
    train: bool
    grad: bool


def other_modes(model: nn.Module, first: fx.Graph) -> list[Mode]:
    """The modes whose forward may differ from ``first``'s (``trace_graph``'s eval forward):
    train mode where a layer's code reads ``training`` (torch.fx only: an exported graph is the
    eval forward's); the other grad mode where it asks ``torch.is_grad_enabled()`` (while traced,
    or by name in a layer's code)."""
    exported = is_exported(first)
    grad = not exported and torch.is_grad_enabled()
    read = _reads(model, ("training", *GRAD_READS))
    modes = [Mode("train:", True, grad)] if not exported and "training" in read else []
    output = next((n for n in reversed(first.nodes) if n.op == "output"), None)
    if (output is not None and output.meta.get(GRAD_MODE_READ)) or read & set(GRAD_READS):
        modes.append(Mode("grad:", False, not grad))
    return modes


@contextmanager
def recording_grad_reads(read: list[str]) -> Iterator[None]:
    """While active, the model's own calls of ``torch.is_grad_enabled()`` (and the inference-mode
    query) append the function's name to ``read``; torch's and ours do not."""
    saved = {name: getattr(torch, name) for name in GRAD_READS}

    def recorded(name: str, fn: Any) -> Any:
        def query() -> bool:
            if by_user(1):
                read.append(name)
            return fn()

        return query

    try:
        for name, fn in saved.items():
            setattr(torch, name, recorded(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def _reads(model: nn.Module, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the model's own code names (an attribute, a global), or calls under an
    alias (``from torch import is_grad_enabled as on``: the function torch has by that name).
    Read: the methods of layer classes outside torch.nn (torch.nn layers are leaves), functions
    held by a layer, and the model's functions they reach by global name."""
    targets = {id(f): n for n in names if callable(f := getattr(torch, n, None))}
    todo = [(fn.__code__, fn.__globals__) for fn in _user_functions(model)]
    seen: set[CodeType] = set()
    found: set[str] = set()
    while todo:
        code, scope = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        for name in code.co_names:
            value = scope.get(name)
            if name in names:
                found.add(name)
            elif id(value) in targets:
                found.add(targets[id(value)])
            elif isinstance(value, FunctionType) and not (value.__module__ or "").startswith("torch"):
                todo.append((value.__code__, value.__globals__))
        todo.extend((c, scope) for c in code.co_consts if isinstance(c, CodeType))
    return found


def _user_functions(model: nn.Module) -> Iterator[FunctionType]:
    """Methods (properties' getters too) of the model's layer classes outside torch.nn, and
    functions the layers hold as attributes."""
    seen: set[type] = set()
    for m in model.modules():
        yield from (f for f in vars(m).values() if isinstance(f, FunctionType))
        if type(m) in seen:
            continue
        seen.add(type(m))
        for klass in type(m).__mro__:
            if klass.__module__.startswith("torch.nn") or klass is object:
                continue
            for attr in vars(klass).values():
                fn = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
                if isinstance(fn, FunctionType):
                    yield fn
