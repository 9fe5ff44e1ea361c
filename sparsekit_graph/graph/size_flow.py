"""Where a size read went when no hook saw it: a static walk of the model's bytecode.

A ``SizeRead`` is an int, so much of what Python does with one calls no hook: ``range(n)``,
``lst[:n]``, ``"%d" % n``, ``str(n)``, ``n in {32, 64}`` all take its value silently. A read
that nothing recorded is therefore pinned unless ``flows_nowhere`` proves, from the bytecode
of the frame that made it (and of its direct callers, for a read a helper returns), that the
value could only be:

- dropped (an expression statement, a local stored and never loaded again);
- shown: formatted into a string (f-string, ``str``/``repr``/``format``/``ascii``,
  ``"...".format``, ``"%d" % n``, ``+`` with another string), the string in turn only dropped
  or shown;
- given to ``print``, a logging call (``logger.debug``, ``logging.info``, ...) or, as its
  message, to ``warnings.warn``, that ``size_sinks`` trusts: its output provably does not come
  back (not a redirected stdout, not a handler that keeps records, not a warning recorded or
  raised), judged by the state of the moment the read was made.

A format spec is a use of the value it formats: ``f"{obj:{n}}"``, ``format(obj, n)`` and
``"{:{}}".format(obj, n)`` hand ``n`` to ``obj.__format__`` and fail the proof (a read
formatted with a constant spec, ``f"{n:>4}"``, is shown).

Anything else the value (or a string or tuple made from it) meets, on any path from where it
was made, fails the proof: a call, a subscript, a comparison, an attribute, a branch, an
opcode this walk does not model. A frame that reads its own locals by name (``locals()``,
``sys._getframe``) proves nothing. What the walk cannot see: a callee that inspects its
caller's frame for a dead local.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import logging
import os
import string
import sys
import warnings
from collections.abc import Iterator
from functools import lru_cache
from types import CodeType, FrameType
from typing import Any

import torch

from .size_sinks import Sinks, log_trusted, plain_write, print_trusted, warn_trusted

__all__ = ["Where", "converted_nowhere", "flows_nowhere", "where_made"]

Where = tuple[tuple[FrameType, int], ...]  # (frame, offset of its current instruction), creator first
Sym = tuple[Any, ...]  # an abstract stack value
Trust = tuple[Sinks, Sinks]  # the state when the read was made, and when planning began

_DEPTH = 4  # caller frames kept, for a read a helper returns
_INTERNAL = tuple(os.path.dirname(str(m.__file__)) + os.sep for m in (torch, sys.modules[__package__.rpartition(".")[0]]))
_STDLIB_SINKS = (os.path.dirname(logging.__file__) + os.sep, warnings.__file__)  # a lazy "%s" of a log record
T: Sym = ("T",)  # the read, or a string / tuple made from it
S: Sym = ("S",)  # a string made without the read
U: Sym = ("U",)  # anything else
NULL: Sym = ("NULL",)

_LOG_NAMES = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal")
_ROOT_LOGS: frozenset[Any] = frozenset(getattr(logging, n) for n in _LOG_NAMES)  # ``logging.info``: the root logger's
_LOGGER_LOGS: frozenset[Any] = frozenset(getattr(logging.Logger, n) for n in _LOG_NAMES)
_SINKS: frozenset[Any] = frozenset({builtins.print, warnings.warn}) | _ROOT_LOGS | _LOGGER_LOGS
_FORMATTERS: frozenset[Any] = frozenset({builtins.str, builtins.repr, builtins.format, builtins.ascii})
_INTROSPECTION = frozenset({"locals", "vars", "eval", "exec", "_getframe", "currentframe", "f_locals", "stack", "trace"})
_CREATORS = frozenset({"LOAD_ATTR", "BINARY_OP", "BINARY_SUBSCR", "UNARY_NEGATIVE", "UNARY_POSITIVE", "UNARY_INVERT"})
_CALLS = frozenset({"CALL", "CALL_KW"})
_SHOWN = {"FORMAT_VALUE": None, "FORMAT_SIMPLE": 1, "FORMAT_WITH_SPEC": 2, "CONVERT_VALUE": 1}
_BUILDS = frozenset({"BUILD_STRING", "BUILD_TUPLE", "BUILD_LIST"})
_NOTHING = frozenset({"NOP", "RESUME", "CACHE", "EXTENDED_ARG", "PRECALL", "KW_NAMES", "COPY_FREE_VARS", "MAKE_CELL"})
_GOTO = frozenset({"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT"})
_BRANCH = frozenset({f"POP_JUMP_{d}IF_{c}" for d in ("", "FORWARD_", "BACKWARD_") for c in ("TRUE", "FALSE", "NONE", "NOT_NONE")})
_ENDS = frozenset({"RAISE_VARARGS", "RERAISE"})
_METHOD_BIT = sys.version_info >= (3, 12)  # LOAD_ATTR's low bit: a method load
_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR", "LOAD_FAST_LOAD_FAST", "DELETE_FAST"})


class _Fail(Exception):
    """The walk met something it cannot prove harmless."""


def where_made(frame: FrameType | None, skip: tuple[str, ...] = _INTERNAL) -> Where:
    """The model's frame nearest ``frame`` (the one whose instruction made a read) and its
    direct callers that are the model's code too, each with the offset it is running."""
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    out = []
    while frame is not None and len(out) < _DEPTH and not frame.f_code.co_filename.startswith(_INTERNAL):
        out.append((frame, frame.f_lasti))
        frame = frame.f_back
    return tuple(out)


def flows_nowhere(where: Where, at: Sinks, base: Sinks) -> bool:
    """Is the value the instruction at ``where[0]`` made only dropped, shown or logged (to a
    sink trusted in the state ``at`` of the moment it was made; planning began at ``base``)?"""
    try:
        return bool(where) and _walk_from(where, 0, made=True, trust=(at, base))
    except _Fail:
        return False
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return False


def converted_nowhere(frame: FrameType, at: Sinks, base: Sinks) -> bool:
    """Is the text or hash-free value that the instruction ``frame`` runs makes of a read
    (``str(n)``, ``f"{n}"``, ``"%s" % n``, ``print(n)``; inside ``logging`` or ``warnings``, the
    model's call into them) only dropped, shown or logged to a trusted sink? Fail closed."""
    try:
        where = where_made(frame, _INTERNAL + _STDLIB_SINKS)
        return bool(where) and _walk_from(where, 0, made=True, trust=(at, base), converted=True)
    except _Fail:
        return False
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return False


def _converted_operands(frame: FrameType, x: dis.Instruction, st: list[Sym]) -> list[Sym]:
    """The stack before ``x`` with the operands it may convert (the read among them) as ``T``."""
    op = x.opname
    if op in _SHOWN:
        n = _SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)
        st[-n] = T  # the value formatted (a read given as the spec was made text before)
    elif op == "BINARY_OP" and x.argrepr == "%":
        st[-1] = T
    elif op in _CALLS:
        kw = int(op == "CALL_KW")
        for k in range(len(st) - kw - (x.arg or 0), len(st) - kw):
            v = st[k]
            obj = _resolve(frame, v, own=False) if v[0] in ("G", "A") else None
            if v[0] != "C" and not _std(frame, v) and not isinstance(obj, type):
                st[k] = T
    else:
        raise _Fail
    return st


def _walk_from(where: Where, level: int, made: bool, trust: Trust, converted: bool = False) -> bool:
    frame, lasti = where[level]
    code = frame.f_code
    ins, index = _code_table(code)
    i = _at(ins, lasti)
    if made and converted:
        before = _stacks(frame).get(ins[i].offset)
        if before is None:
            raise _Fail
        returned = _taint_walk(frame, ins, index, i, _converted_operands(frame, ins[i], list(before)), trust)
        return not returned or (level + 1 < len(where) and _walk_from(where, level + 1, made=False, trust=trust))
    if made and ins[i].opname not in _CREATORS:
        return False
    if not made and (ins[i].opname not in _CALLS or not _calls_code(frame, ins, i, where[level - 1][0].f_code)):
        return False
    before = _stacks(frame).get(ins[i].offset)
    if before is None:
        raise _Fail
    stack = list(_step(frame, ins, i, list(before), taint=None)[0][1])
    stack[-1] = T
    returned = _taint_walk(frame, ins, index, i + 1, stack, trust)
    if returned:  # a helper's result: follow it in the caller
        return level + 1 < len(where) and _walk_from(where, level + 1, made=False, trust=trust)
    return True


def _calls_code(frame: FrameType, ins: list[dis.Instruction], i: int, callee: CodeType) -> bool:
    """Does the call at ``ins[i]`` call the function whose code is ``callee`` directly?"""
    stack = _stacks(frame).get(ins[i].offset)
    argc = ins[i].arg or 0
    extra = 1 if ins[i].opname == "CALL_KW" else 0
    if stack is None or len(stack) < argc + 2 + extra:
        return False
    a, b = stack[len(stack) - argc - 2 - extra : len(stack) - argc - extra]
    target = b if a == NULL else a if b == NULL else a[1] if a[0] == "CALLEE" else None
    fn = _resolve(frame, target, own=True) if target is not None else None
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", None) is callee


def _taint_walk(
    frame: FrameType, ins: list[dis.Instruction], index: dict[int, int], start: int, stack: list[Sym], trust: Trust
) -> bool:
    """Walk every path from ``ins[start]`` until no tainted value is left on the stack; True if
    some path returns one (the caller continues), raises ``_Fail`` where a use is not harmless."""
    returned = False
    todo: list[tuple[int, tuple[Sym, ...], frozenset[str]]] = [(start, tuple(stack), frozenset())]
    seen = set()
    while todo:
        i, st, held = todo.pop()
        if (i, st, held) in seen or (T not in st and not held):
            continue
        seen.add((i, st, held))
        if i >= len(ins) or (held and not _quiet(frame, ins[i], st)):
            raise _Fail
        local = _local_step(frame, ins, i, list(st), held)
        steps = [local] if local is not None else [(n, a, held) for n, a in _step(frame, ins, i, list(st), taint=trust)]
        for nxt, after, kept in steps:
            if nxt == "return":
                returned = True
            elif nxt is not None:
                k = index[nxt]
                todo.append((k, tuple(after), frozenset(n for n in kept if _live(frame.f_code, n, k))))
    return returned


# -- a read kept in a local (``n = conv.out_channels; print(n)``) ------------------------------
# The local is tainted (``held``) while it may still be loaded (``_live``); a load pushes ``T``.
# The sinks are judged by the state when the read was made, so while a local holds it only
# code that cannot change that state runs (``_quiet``): loads, strings, formatting of strings
# and constants, and the formatters and sinks themselves on such values.


def _local_step(
    frame: FrameType, ins: list[dis.Instruction], i: int, st: list[Sym], held: frozenset[str]
) -> tuple[Any, list[Sym], frozenset[str]] | None:
    """``ins[i]`` if it stores, loads or deletes a local the read is (or goes) in; else None."""
    x = ins[i]
    nxt = ins[i + 1].offset if i + 1 < len(ins) else None
    op, name = x.opname, x.argval
    if op == "STORE_FAST" and st and (st[-1] == T or name in held):
        if st.pop() != T:
            return nxt, st, held - {name}
        if _dead(frame, name):
            return nxt, st, held
        if name in frame.f_code.co_cellvars or not _INTROSPECTION.isdisjoint(frame.f_code.co_names):
            raise _Fail
        return nxt, st, held | {name}
    if op in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR") and name in held:
        return nxt, [*st, T], held - {name} if op == "LOAD_FAST_AND_CLEAR" else held
    if op == "LOAD_FAST_LOAD_FAST" and not held.isdisjoint(name):
        return nxt, [*st, *(T if n in held else ("L", n) for n in name)], held
    if op == "DELETE_FAST" and name in held:
        return nxt, st, held - {name}
    return None


def _quiet(frame: FrameType, x: dis.Instruction, st: list[Sym]) -> bool:
    """Can ``x`` run no code that changes where output goes (a local holds the read)?"""
    op = x.opname
    if op in _QUIET or op in _NOTHING or op in _GOTO or op in _BUILDS:
        return True
    if op in ("LOAD_ATTR", "LOAD_METHOD"):
        return bool(st) and (_plain_attribute(frame, st[-1], x.argval) or (x.argval == "write" and _std(frame, st[-1])))
    if op in _SHOWN:
        return all(_text(v) or v[0] == "C" for v in st[-(_SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)) :])
    if op == "BINARY_OP":
        return len(st) >= 2 and _text(st[-1]) and _text(st[-2])
    if op in _CALLS:
        argc = (x.arg or 0) + (op == "CALL_KW")
        vals = st[len(st) - argc - 2 :] if len(st) >= argc + 2 else []
        a, b = (vals[0], vals[1]) if vals else (U, U)
        target = b if a == NULL else a if b == NULL else a[1] if a[0] == "CALLEE" else None
        fn = _resolve(frame, target, own=False) if target is not None and target != T else None
        fn = getattr(fn, "__func__", fn)
        sink = any(fn is f for f in (*_FORMATTERS, *_SINKS)) or _stream_write(frame, target) is not None
        return bool(vals) and sink and all(v in (T, S, NULL) or v[0] == "C" or _std(frame, v) for v in vals[2:])
    return False


_QUIET = frozenset({"LOAD_CONST", "LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_LOAD_FAST", "LOAD_GLOBAL", "PUSH_NULL",
                    "POP_TOP", "STORE_FAST", "DELETE_FAST", "COPY", "SWAP", "RETURN_VALUE", "RETURN_CONST"})  # fmt: skip


def _plain_attribute(frame: FrameType, base: Sym, name: str) -> bool:
    """Is ``base.name`` a module's or a logger's attribute that runs no code when read?"""
    obj = _resolve(frame, base, own=False)
    if not isinstance(obj, (type(sys), logging.Logger)):
        return False
    try:
        found = inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return not hasattr(type(found), "__get__") or inspect.isroutine(found) or isinstance(found, (type(sys), logging.Logger))


@lru_cache(maxsize=1024)
def _live(code: CodeType, name: str, k: int) -> bool:
    """May local ``name`` be loaded on some path from instruction ``k`` before it is stored
    again? Exception handlers count as reachable from every instruction."""
    ins, index = _code_table(code)
    handlers = [index[t] for t, _ in _handlers(code) if t in index]
    todo, seen = [k, *handlers], set()
    while todo:
        j = todo.pop()
        if j in seen or j >= len(ins):
            continue
        seen.add(j)
        x = ins[j]
        names = x.argval if isinstance(x.argval, tuple) else (x.argval,)
        if name in names and x.opname != "STORE_FAST":  # a load, a delete, or a name that looks alike
            return True
        if x.opname == "STORE_FAST" and x.argval == name:
            continue
        if x.opname in _ENDS or x.opname in ("RETURN_VALUE", "RETURN_CONST"):
            continue
        if x.opcode in dis.hasjrel or x.opcode in dis.hasjabs:
            todo.append(index.get(x.argval, len(ins)))
            if x.opname in _GOTO:
                continue
        todo.append(j + 1)
    return False


@lru_cache(maxsize=256)
def _code_table(code: CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    ins = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    return ins, {x.offset: k for k, x in enumerate(ins)}


def _at(ins: list[dis.Instruction], lasti: int) -> int:
    """The instruction running at ``lasti`` (a caller's ``f_lasti`` may point into its call's
    inline cache)."""
    k = max((k for k, x in enumerate(ins) if x.offset <= lasti), default=None)
    if k is None:
        raise _Fail
    return k


def _stacks(frame: FrameType) -> dict[int, tuple[Sym, ...]]:
    """The abstract stack before each reachable instruction of ``frame``'s code (merged over
    paths: values that differ become ``U``); exception handlers start from unknown values."""
    code = frame.f_code
    ins, index = _code_table(code)
    found: dict[int, tuple[Sym, ...]] = {}
    todo: list[tuple[int, tuple[Sym, ...]]] = [(0, ())]
    for start, depth in _handlers(code):
        if start in index:
            todo.append((index[start], (U,) * depth))
    while todo:
        i, st = todo.pop()
        if i >= len(ins):
            continue
        off = ins[i].offset
        old = found.get(off)
        if old is not None:
            if len(old) != len(st):
                raise _Fail
            merged = tuple(a if a == b else U for a, b in zip(old, st))
            if merged == old:
                continue
            st = merged
        found[off] = st
        for nxt, after in _step(frame, ins, i, list(st), taint=None):
            if nxt is not None and nxt != "return":
                todo.append((index[nxt], tuple(after)))
    return found


def _handlers(code: CodeType) -> Iterator[tuple[int, int]]:
    """(handler offset, stack depth at its start) for each exception table entry."""
    parse = getattr(dis, "_parse_exception_table", None)
    if parse is None:
        return
    for e in parse(code):
        yield e.target, e.depth + 1 + int(e.lasti)


def _step(
    frame: FrameType | None, ins: list[dis.Instruction], i: int, st: list[Sym], taint: Trust | None
) -> list[tuple[Any, list[Sym]]]:
    """``ins[i]``'s successors ``(offset | "return" | None, stack after)``. With ``taint`` (the
    sinks' states), a use of ``T`` that is not harmless raises ``_Fail``."""
    x = ins[i]
    op, nxt = x.opname, ins[i + 1].offset if i + 1 < len(ins) else None

    def pop(n: int) -> list[Sym]:
        if n > len(st):
            raise _Fail
        out = st[len(st) - n :] if n else []
        del st[len(st) - n :]
        return out

    def used(*vals: Sym) -> None:  # a use this walk cannot vouch for
        if taint is not None and any(v == T for v in vals):
            raise _Fail

    if op in _NOTHING:
        return [(nxt, st)]
    if op == "LOAD_CONST":
        return [(nxt, [*st, ("C", x.argval)])]
    if op in ("LOAD_FAST", "LOAD_FAST_CHECK"):
        return [(nxt, [*st, ("L", x.argval)])]
    if op == "LOAD_FAST_LOAD_FAST":
        return [(nxt, [*st, *(("L", n) for n in x.argval)])]
    if op == "LOAD_GLOBAL":
        g: Sym = ("G", x.argval)
        return [(nxt, [*st, *((NULL, g) if (x.arg or 0) & 1 else (g,))])]
    if op == "PUSH_NULL":
        return [(nxt, [*st, NULL])]
    if op in ("LOAD_ATTR", "LOAD_METHOD"):
        (base,) = pop(1)
        used(base)
        attr: Sym = ("A", base, x.argval)
        method = op == "LOAD_METHOD" or (_METHOD_BIT and bool((x.arg or 0) & 1))
        return [(nxt, [*st, *((("CALLEE", attr), ("SELF", base)) if method else (attr,))])]
    if op == "POP_TOP":
        pop(1)
        return [(nxt, st)]
    if op == "STORE_FAST":
        (v,) = pop(1)
        if taint is not None and v == T and not _dead(frame, x.argval):
            raise _Fail
        return [(nxt, st)]
    if op in _SHOWN:
        n = _SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)
        vals = pop(n)
        if n == 2 and op != "CONVERT_VALUE" and vals[0] != T:
            used(vals[1])  # ``f"{obj:{n}}"``: obj.__format__ is given the read
        out = T if T in vals else S
        return [(nxt, [*st, out])]
    if op in _BUILDS:
        out = T if T in pop(x.arg or 0) else S if op == "BUILD_STRING" else U
        return [(nxt, [*st, out])]
    if op == "BINARY_OP":
        lhs, rhs = pop(2)
        shown = (x.argrepr == "+" and _text(lhs) and _text(rhs)) or (x.argrepr == "%" and _text(lhs) and lhs != T)
        used(*(() if shown else (lhs, rhs)))
        return [(nxt, [*st, (T if T in (lhs, rhs) else S) if shown else U])]
    if op in ("BINARY_SUBSCR", "COMPARE_OP", "IS_OP", "CONTAINS_OP"):  # ``h.shape[1]``, ``h == n``: a value unknown here
        used(*pop(2))
        return [(nxt, [*st, U])]
    if op in _CALLS:
        vals = pop((x.arg or 0) + 2 + (op == "CALL_KW"))
        if op == "CALL_KW":
            names, vals = (vals[-1][1] if vals[-1][0] == "C" else None), vals[:-1]
        else:
            j = i - 1 if i and ins[i - 1].opname != "PRECALL" else i - 2
            names = _kw_names(frame, ins[j]) if j >= 0 and ins[j].opname == "KW_NAMES" else ()
        out = _call(frame, vals, names, taint)
        return [(nxt, [*st, out])]
    if op == "COPY":
        return [(nxt, [*st, st[-x.arg]])]
    if op == "SWAP":
        st[-1], st[-x.arg] = st[-x.arg], st[-1]
        return [(nxt, st)]
    if op == "RETURN_VALUE":
        (v,) = pop(1)
        return [("return" if v == T else None, st)]
    if op == "RETURN_CONST":
        return [(None, st)]
    if op in _GOTO:
        return [(x.argval, st)]
    if op in _BRANCH:
        (v,) = pop(1)
        used(v)
        return [(nxt, list(st)), (x.argval, st)]
    if taint is not None and T in st:  # an opcode this walk does not model, with the read on the stack
        raise _Fail
    return _unknown(x, st, nxt)


def _kw_names(frame: FrameType | None, x: dis.Instruction) -> tuple[str, ...] | None:
    """The keyword names ``KW_NAMES`` gives the next call (3.11's ``dis`` leaves them unresolved)."""
    if isinstance(x.argval, tuple):
        return x.argval
    names = frame.f_code.co_consts[x.arg] if frame is not None and x.arg is not None else None
    return names if isinstance(names, tuple) else None


def _text(v: Sym) -> bool:
    """Is ``v`` a string (a constant, or made by formatting)?"""
    return v in (T, S) or (v[0] == "C" and isinstance(v[1], str))


def _call(frame: FrameType | None, vals: list[Sym], names: tuple[str, ...] | None, trust: Trust | None) -> Sym:
    """The result of a call whose stack slots (callable and self or NULL, then arguments, the
    last ``names`` by keyword) are ``vals``: a string from a formatter (``T`` if given ``T``),
    ``U`` from a trusted sink; ``_Fail`` where anything else is given ``T``."""
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
            raise _Fail
        return U
    if self_ is not None and self_[0] == "C" and isinstance(self_[1], str) and target[0] == "A" and target[2] == "format":
        if tainted and _nested_spec(self_[1]):
            raise _Fail  # "{:{}}".format(obj, n): obj.__format__ is given the read
        return T if tainted else S  # "{}".format(n)
    fn = _resolve(frame, target, own=False)
    if any(fn is f for f in _FORMATTERS):
        if tainted and fn is builtins.format and T in vals[3:] and vals[2] != T:
            raise _Fail  # format(obj, n): obj.__format__ is given the read
        return T if tainted else S
    if not tainted:
        return U
    fn = getattr(fn, "__func__", fn)
    stream = _stream_write(frame, target)
    if stream is not None and trust is not None and names == () and len(vals) == 3:  # sys.stdout.write(s)
        if vals[2] != T or not print_trusted(stream, *trust) or not plain_write(getattr(trust[0], stream)):
            raise _Fail
        return T  # the count of characters written: a length of the shown read
    if names is not None and getattr(fn, "__wrapped__", fn) is torch._assert:  # the message shows only if the check fails
        positional = len(vals) - 2 - len(names)
        message = 3 if positional >= 2 else 2 + positional + names.index("message") if "message" in names else -1
        if any(v == T for i, v in enumerate(vals) if i >= 2 and i != message):
            raise _Fail
        return U
    if names is None or trust is None or not any(fn is f for f in _SINKS):
        raise _Fail
    at, base = trust
    if fn is builtins.print:
        stream = _print_stream(frame, dict(zip(names[::-1], vals[::-1])))
        if stream is None or not print_trusted(stream, at, base):
            raise _Fail
        return U
    if fn is warnings.warn:  # the read only in the message: not the category, nor the stacklevel
        positional = len(vals) - 2 - len(names)
        message = 2 if positional else 2 + names.index("message") if "message" in names else -1
        if any(v == T for i, v in enumerate(vals) if i >= 2 and i != message) or not warn_trusted(at, base):
            raise _Fail
        return U
    logger = None if any(fn is f for f in _ROOT_LOGS) else _resolve(frame, self_, own=False) if self_ is not None else None
    if (logger is None and not any(fn is f for f in _ROOT_LOGS)) or not log_trusted(fn, logger, at, base):
        raise _Fail
    return U


def _nested_spec(text: str) -> bool:
    """Does format string ``text`` take a field's spec from an argument (``"{:{}}"``), or can
    it not be parsed?"""
    try:
        return any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(text))
    except ValueError:
        return True


def _print_stream(frame: FrameType, kw: dict[str, Sym]) -> str | None:
    """Which of ``sys.stdout`` / ``sys.stderr`` ``print(..., **kw)`` writes to (None: another
    object, which the model could read back)."""
    out = kw.get("file")
    if out is None:
        return "stdout"
    if out[0] == "A" and out[1] == ("G", "sys") and out[2] in ("stdout", "stderr") and _resolve(frame, out[1], own=False) is sys:
        return str(out[2])
    return None


def _stream_write(frame: FrameType | None, target: Sym | None) -> str | None:
    """``sys.stdout.write`` / ``sys.stderr.write``: which stream (None: another callable)."""
    if target is None or target[0] != "A" or target[2] != "write" or not _std(frame, target[1]):
        return None
    return str(target[1][2])


def _std(frame: FrameType | None, v: Sym) -> bool:
    """Is ``v`` ``sys.stdout`` or ``sys.stderr`` (of the real ``sys``)?"""
    return v[0] == "A" and v[1] == ("G", "sys") and v[2] in ("stdout", "stderr") and _resolve(frame, v[1], own=False) is sys


def _resolve(frame: FrameType | None, s: Sym, own: bool) -> Any:
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
        base = _resolve(frame, s[1], own)
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


def _dead(frame: FrameType | None, name: str) -> bool:
    """Is local ``name`` never loaded (nor deleted) in the frame's code, which does not read
    its locals by name?"""
    if frame is None:
        return False
    code = frame.f_code
    if name in code.co_cellvars or not _INTROSPECTION.isdisjoint(code.co_names):
        return False
    for x in _code_table(code)[0]:
        if x.opname in _LOADS and (x.argval == name or (isinstance(x.argval, tuple) and name in x.argval)):
            return False
    return True


def _unknown(x: dis.Instruction, st: list[Sym], nxt: int | None) -> list[tuple[Any, list[Sym]]]:
    """An opcode without a precise model: every value on the stack becomes ``U``, as deep as
    ``dis.stack_effect`` says, on each way out (none after a raise)."""
    if x.opname in _ENDS:
        return []
    out = []
    jumps = x.opcode in dis.hasjrel or x.opcode in dis.hasjabs
    for jump, target in ((False, nxt), (True, x.argval)) if jumps else ((False, nxt),):
        depth = len(st) + dis.stack_effect(x.opcode, x.arg if x.opcode >= dis.HAVE_ARGUMENT else None, jump=jump)
        if depth < 0:
            raise _Fail
        out.append((target, [U] * depth))
    return out
