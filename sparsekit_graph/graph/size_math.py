"""``math`` functions of size reads while torch.fx traces: ``math.sqrt(self.head_dim)``.

torch.fx wraps every public ``math`` function for the trace: given a Proxy (an axis length) it
records a node; given anything else it runs the function, whose C code converts a ``SizeRead``
with ``__float__`` (a conversion: control flow, a pin) and hands back a plain float nobody
tracks. ``recording_math`` puts its own wrapper in their place first: a Proxy still records
the node torch.fx would record; a tracked number (``SizeRead``, ``SizeFloat``) gives the
result as a tracked number (``size_values.tracked``) when the model's code made the call, so
``h / math.sqrt(n)`` uses a count-dependent number (``VALUE``) as ``h / n ** 0.5`` does, and
``math.sqrt(n) > 2`` is control flow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.fx as fx

from .size_values import SizeFloat, SizeRead, SizeTuple, tracked
from .user_code import by_user

__all__ = ["recording_math"]


def _plain(a: Any, found: list[Any]) -> Any:
    """``a`` with tracked numbers as plain ones (each listed in ``found``), through tuples and lists."""
    if isinstance(a, SizeRead):
        found.append(a)
        return int.__int__(a)
    if isinstance(a, SizeFloat):
        found.append(a)
        return float.__float__(a)
    if isinstance(a, SizeTuple):
        found.append(a)
        return tuple.__new__(tuple, a)
    if isinstance(a, (tuple, list)):
        return type(a)(_plain(e, found) for e in (tuple.__iter__(a) if isinstance(a, tuple) else a))
    return a


@functools.cache  # one wrapper per function, made once: the ~60 of ``math`` cost ~0.1 ms a trace to make
def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        proxy = _find((*args, *kwargs.values()))
        if proxy is not None:  # what torch.fx's own wrapper records
            out = proxy.tracer.create_proxy("call_function", fn, args, kwargs)
            out.node.meta["is_wrapped"] = True
            return out
        found: list[Any] = []
        plain_args, plain_kwargs = _plain(args, found), {k: _plain(v, found) for k, v in kwargs.items()}
        out = fn(*plain_args, **plain_kwargs)
        if not found:
            return out
        if not by_user(1):  # torch's code: the number is taken, not decided on
            for v in found:
                v._reach()
            return out
        return tracked(out, tuple(found))

    return wrapper


def _find(a: Any) -> fx.Proxy | None:
    """The first Proxy in ``a`` (through tuples and lists), else None."""
    if isinstance(a, fx.Proxy):
        return a
    if isinstance(a, (tuple, list)):
        for e in tuple.__iter__(a) if isinstance(a, tuple) else a:
            if (p := _find(e)) is not None:
                return p
    return None


@contextmanager
def recording_math() -> Iterator[None]:
    """While active (entered before torch.fx patches ``math``), the public ``math`` functions
    track size reads and record Proxies (see the module docstring)."""
    saved = {k: v for k, v in vars(math).items() if not k.startswith("_") and callable(v)}
    try:
        for k, v in saved.items():
            setattr(math, k, _wrap(v))
        yield
    finally:
        for k, v in saved.items():
            setattr(math, k, v)
