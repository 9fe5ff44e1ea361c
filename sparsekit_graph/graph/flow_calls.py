"""What a call in the walked bytecode does with a size read, and the objects symbols name.

``call_result`` is the stack value a call leaves, given the symbols of its callable and
arguments: a formatter (``str``, ``format``, ``"{}".format``) makes text of the read; a trusted
sink (``print`` to ``sys.stdout``/``sys.stderr``, ``warnings.warn``'s message, a logging call,
``sys.stdout.write``, ``torch._assert``'s message) only shows it; ``isinstance`` asks its class
alone; any other call given the read raises ``Fail``. ``resolve`` finds the object a symbol names without running code, and
``print_stream`` / ``stream_write`` / ``std_stream`` tell the standard streams apart from other
objects the model could read back.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import string
import sys
import warnings
from types import FrameType
from typing import Any

import torch

from .flow_symbols import NULL, Fail, S, Sym, T, U
from .size_sinks import Sinks, log_trusted, plain_write, print_trusted, warn_trusted

__all__ = ["FORMATTERS", "SINKS", "Trust", "call_result", "print_stream", "resolve", "std_stream", "stream_write"]

Trust = tuple[Sinks, Sinks]  # the state when the read was made, and when planning began

_LOG_NAMES = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal")
_ROOT_LOGS: frozenset[Any] = frozenset(getattr(logging, n) for n in _LOG_NAMES)  # ``logging.info``: the root logger's
_LOGGER_LOGS: frozenset[Any] = frozenset(getattr(logging.Logger, n) for n in _LOG_NAMES)
SINKS: frozenset[Any] = frozenset({builtins.print, warnings.warn}) | _ROOT_LOGS | _LOGGER_LOGS
FORMATTERS: frozenset[Any] = frozenset({builtins.str, builtins.repr, builtins.format, builtins.ascii})


def call_result(frame: FrameType | None, vals: list[Sym], names: tuple[str, ...] | None, trust: Trust | None) -> Sym:
    """The result of a call whose stack slots (callable and self or NULL, then arguments, the
    last ``names`` by keyword) are ``vals``: a string from a formatter (``T`` if given ``T``),
    ``U`` from a trusted sink; ``Fail`` where anything else is given ``T``."""
    tainted = T in vals
    if frame is None:
        return U
    a, b = vals[0], vals[1]
    if a == NULL or b == NULL:
        target, self_ = (b if a == NULL else a), None
    elif a[0] == "CALLEE" and b[0] == "SELF":
        target, self_ = a[1], b[1]
    else:
        target = self_ = None
    if target is None or target == T or self_ == T:
        if tainted:
            raise Fail
        return U
    if self_ is not None and self_[0] == "C" and isinstance(self_[1], str) and target[0] == "A" and target[2] == "format":
        if tainted and _nested_spec(self_[1]):
            raise Fail  # "{:{}}".format(obj, n): obj.__format__ is given the read
        return T if tainted else S  # "{}".format(n)
    fn = resolve(frame, target, own=False)
    if any(fn is f for f in FORMATTERS):
        if tainted and fn is builtins.format and T in vals[3:] and vals[2] != T:
            raise Fail  # format(obj, n): obj.__format__ is given the read
        return T if tainted else S
    if not tainted:
        return U
    if fn is builtins.isinstance and names == () and vals[3:] != [T]:  # ``isinstance(h.shape, torch.Size)``: a class,
        return U  # which no count changes
    fn = getattr(fn, "__func__", fn)
    stream = stream_write(frame, target)
    if stream is not None and trust is not None and names == () and len(vals) == 3:  # sys.stdout.write(s)
        if vals[2] != T or not print_trusted(stream, *trust) or not plain_write(getattr(trust[0], stream)):
            raise Fail
        return T  # the count of characters written: a length of the shown read
    if names is not None and getattr(fn, "__wrapped__", fn) is torch._assert:  # the message shows only if the check fails
        positional = len(vals) - 2 - len(names)
        message = 3 if positional >= 2 else 2 + positional + names.index("message") if "message" in names else -1
        if any(v == T for i, v in enumerate(vals) if i >= 2 and i != message):
            raise Fail
        return U
    if names is None or trust is None or not any(fn is f for f in SINKS):
        raise Fail
    at, base = trust
    if fn is builtins.print:
        stream = print_stream(frame, dict(zip(names[::-1], vals[::-1])))
        if stream is None or not print_trusted(stream, at, base):
            raise Fail
        return U
    if fn is warnings.warn:  # the read only in the message: not the category, nor the stacklevel
        positional = len(vals) - 2 - len(names)
        message = 2 if positional else 2 + names.index("message") if "message" in names else -1
        if any(v == T for i, v in enumerate(vals) if i >= 2 and i != message) or not warn_trusted(at, base):
            raise Fail
        return U
    logger = None if any(fn is f for f in _ROOT_LOGS) else resolve(frame, self_, own=False) if self_ is not None else None
    if (logger is None and not any(fn is f for f in _ROOT_LOGS)) or not log_trusted(fn, logger, at, base):
        raise Fail
    return U


def _nested_spec(text: str) -> bool:
    """Does format string ``text`` take a field's spec from an argument (``"{:{}}"``), or can
    it not be parsed?"""
    try:
        return any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(text))
    except ValueError:
        return True


def print_stream(frame: FrameType, kw: dict[str, Sym]) -> str | None:
    """Which of ``sys.stdout`` / ``sys.stderr`` ``print(..., **kw)`` writes to (None: another
    object, which the model could read back)."""
    out = kw.get("file")
    if out is None:
        return "stdout"
    if out[0] == "A" and out[1] == ("G", "sys") and out[2] in ("stdout", "stderr") and resolve(frame, out[1], own=False) is sys:
        return str(out[2])
    return None


def stream_write(frame: FrameType | None, target: Sym | None) -> str | None:
    """``sys.stdout.write`` / ``sys.stderr.write``: which stream (None: another callable)."""
    if target is None or target[0] != "A" or target[2] != "write" or not std_stream(frame, target[1]):
        return None
    return str(target[1][2])


def std_stream(frame: FrameType | None, v: Sym) -> bool:
    """Is ``v`` ``sys.stdout`` or ``sys.stderr`` (of the real ``sys``)?"""
    return v[0] == "A" and v[1] == ("G", "sys") and v[2] in ("stdout", "stderr") and resolve(frame, v[1], own=False) is sys


def resolve(frame: FrameType | None, s: Sym, own: bool) -> Any:
    """The object an abstract value names (a global, a constant, an attribute of one read
    without running code; with ``own``, the frame's locals as they are now too), or None."""
    if frame is None:
        return None
    kind = s[0]
    if kind == "G":
        return frame.f_globals.get(s[1], frame.f_builtins.get(s[1]))
    if kind == "L" and own:
        return frame.f_locals.get(s[1])
    if kind == "C":
        return s[1]
    if kind == "A":
        base = resolve(frame, s[1], own)
        if base is None:
            return None
        try:
            found = inspect.getattr_static(base, s[2])
        except AttributeError:
            return None
        if isinstance(found, (staticmethod, classmethod)):
            return found.__func__
        return found
    return None
