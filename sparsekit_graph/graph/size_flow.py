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

The walk's symbols are ``flow_symbols``'s, its stack machine ``flow_stack``'s, what a call does with
them ``flow_calls``'s, and the facts it reads off a code object ``flow_code``'s.
"""

from __future__ import annotations

import dis
import inspect
import logging
import os
import sys
import warnings
from types import CodeType, FrameType
from typing import Any

from .flow_calls import FORMATTERS, SINKS, Trust, resolve, std_stream, stream_write
from .flow_code import GOTO, INTROSPECTION, code_table, dead, instruction_at, live
from .flow_stack import BRANCHES, BUILDS, CALLS, NOTHING, SHOWN, compared, stack_after, stacks, step, text, value_of
from .flow_symbols import NULL, Fail, S, Sym, T, U
from .size_sinks import Sinks
from .user_code import INTERNAL

__all__ = ["Where", "converted_nowhere", "flows_nowhere", "where_made"]

Where = tuple[tuple[FrameType, int], ...]  # (frame, offset of its current instruction), creator first

_DEPTH = 4  # caller frames kept, for a read a helper returns
_STDLIB_SINKS = (os.path.dirname(logging.__file__) + os.sep, warnings.__file__)  # a lazy "%s" of a log record

_CREATORS = frozenset({"LOAD_ATTR", "BINARY_OP", "BINARY_SUBSCR", "UNARY_NEGATIVE", "UNARY_POSITIVE", "UNARY_INVERT"})


def where_made(frame: FrameType | None, skip: tuple[str, ...] = INTERNAL) -> Where:
    """The model's frame nearest ``frame`` (the one whose instruction made a read) and its
    direct callers that are the model's code too, each with the offset it is running."""
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    out = []
    while frame is not None and len(out) < _DEPTH and not frame.f_code.co_filename.startswith(INTERNAL):
        out.append((frame, frame.f_lasti))
        frame = frame.f_back
    return tuple(out)


def flows_nowhere(where: Where, at: Sinks, base: Sinks, tests: bool = False, unpacked: int | None = None) -> bool:
    """Is the value the instruction at ``where[0]`` made only dropped, shown or logged (to a
    sink trusted in the state ``at`` of the moment it was made; planning began at ``base``), or,
    with ``tests`` (a count no pruning makes 0: ``size_values.truth_free``), tested for truth?
    ``unpacked``: it is that item of a shape the instruction unpacks (``b, c, h, w = x.shape``)."""
    try:
        return bool(where) and _walk_from(where, 0, made=True, trust=(at, base), tests=tests, unpacked=unpacked)
    except Fail:
        return False
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return False


def converted_nowhere(frame: FrameType, at: Sinks, base: Sinks) -> bool:
    """Is the text or hash-free value that the instruction ``frame`` runs makes of a read
    (``str(n)``, ``f"{n}"``, ``"%s" % n``, ``print(n)``; inside ``logging`` or ``warnings``, the
    model's call into them) only dropped, shown or logged to a trusted sink? Fail closed."""
    try:
        where = where_made(frame, INTERNAL + _STDLIB_SINKS)
        return bool(where) and _walk_from(where, 0, made=True, trust=(at, base), converted=True)
    except Fail:
        return False
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return False


def _converted_operands(frame: FrameType, x: dis.Instruction, st: list[Sym]) -> list[Sym]:
    """The stack before ``x`` with the operands it may convert (the read among them) as ``T``."""
    op = x.opname
    if op in SHOWN:
        n = SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)
        st[-n] = T  # the value formatted (a read given as the spec was made text before)
    elif op == "BINARY_OP" and x.argrepr == "%":
        st[-1] = T
    elif op in CALLS:
        kw = int(op == "CALL_KW")
        for k in range(len(st) - kw - (x.arg or 0), len(st) - kw):
            v = st[k]
            obj = resolve(frame, v, own=False) if v[0] in ("G", "A") else None
            if v[0] != "C" and not std_stream(frame, v) and not isinstance(obj, type):
                st[k] = T
    else:
        raise Fail
    return st


def _walk_from(
    where: Where, level: int, made: bool, trust: Trust, converted: bool = False, tests: bool = False, unpacked: int | None = None
) -> bool:
    frame, lasti = where[level]
    code = frame.f_code
    ins, index = code_table(code)
    i = instruction_at(ins, lasti)
    if made and converted:
        before = stacks(frame).get(ins[i].offset)
        if before is None:
            raise Fail
        returned = _taint_walk(frame, ins, index, i, _converted_operands(frame, ins[i], list(before)), trust)
        return not returned or (level + 1 < len(where) and _walk_from(where, level + 1, made=False, trust=trust))
    unpacking = made and unpacked is not None and ins[i].opname == "UNPACK_SEQUENCE"
    if made and ins[i].opname not in _CREATORS and not unpacking:
        return False
    if not made and (ins[i].opname not in CALLS or not _calls_code(frame, ins, i, where[level - 1][0].f_code)):
        return False
    returned = _taint_walk(frame, ins, index, i + 1, stack_after(frame, ins, i, unpacked if unpacking else 0), trust, tests)
    if returned:  # a helper's result: follow it in the caller
        return level + 1 < len(where) and _walk_from(where, level + 1, made=False, trust=trust, tests=tests)
    return True


def _calls_code(frame: FrameType, ins: list[dis.Instruction], i: int, callee: CodeType) -> bool:
    """Does the call at ``ins[i]`` call the function whose code is ``callee`` directly?"""
    stack = stacks(frame).get(ins[i].offset)
    argc = ins[i].arg or 0
    extra = 1 if ins[i].opname == "CALL_KW" else 0
    if stack is None or len(stack) < argc + 2 + extra:
        return False
    a, b = stack[len(stack) - argc - 2 - extra : len(stack) - argc - extra]
    target = b if a == NULL else a if b == NULL else a[1] if a[0] == "CALLEE" else None
    fn = resolve(frame, target, own=True) if target is not None else None
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", None) is callee


def _taint_walk(
    frame: FrameType,
    ins: list[dis.Instruction],
    index: dict[int, int],
    start: int,
    stack: list[Sym],
    trust: Trust,
    tests: bool = False,
) -> bool:
    """Walk every path from ``ins[start]`` until no tainted value is left on the stack; True if
    some path returns one (the caller continues), raises ``Fail`` where a use is not harmless."""
    returned = False
    todo: list[tuple[int, tuple[Sym, ...], frozenset[str]]] = [(start, tuple(stack), frozenset())]
    seen = set()
    while todo:
        i, st, held = todo.pop()
        if (i, st, held) in seen or (T not in st and not held):
            continue
        seen.add((i, st, held))
        if i >= len(ins) or (held and not _quiet(frame, ins[i], st, tests)):
            raise Fail
        local = _local_step(frame, ins, i, list(st), held)
        steps = [local] if local is not None else [(n, a, held) for n, a in step(frame, ins, i, list(st), trust, tests)]
        for nxt, after, kept in steps:
            if nxt == "return":
                returned = True
            elif nxt is not None:
                k = index[nxt]
                todo.append((k, tuple(after), frozenset(n for n in kept if live(frame.f_code, n, k))))
    return returned


# -- a read kept in a local (``n = conv.out_channels; print(n)``) ------------------------------
# The local is tainted (``held``) while it may still be loaded (``live``); a load pushes ``T``.
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
        if dead(frame, name):
            return nxt, st, held
        if name in frame.f_code.co_cellvars or not INTROSPECTION.isdisjoint(frame.f_code.co_names):
            raise Fail
        return nxt, st, held | {name}
    if op in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR") and name in held:
        return nxt, [*st, T], held - {name} if op == "LOAD_FAST_AND_CLEAR" else held
    if op == "LOAD_FAST_LOAD_FAST" and not held.isdisjoint(name):
        return nxt, [*st, *(T if n in held else ("L", n) for n in name)], held
    if op == "DELETE_FAST" and name in held:
        return nxt, st, held - {name}
    return None


def _quiet(frame: FrameType, x: dis.Instruction, st: list[Sym], tests: bool = False) -> bool:
    """Can ``x`` run no code that changes where output goes (a local holds the read)? With
    ``tests``, a branch on the read (an int's truth) is quiet."""
    op = x.opname
    if op in _QUIET or op in NOTHING or op in GOTO or op in BUILDS:
        return True
    if tests and op in BRANCHES and bool(st) and st[-1] == T:
        return True
    if op in BRANCHES:  # on a value this call's arguments decide
        return bool(st) and bool(value_of(frame, st[-1]))
    if op in ("COMPARE_OP", "IS_OP"):  # of two plain values: no model code runs
        return len(st) >= 2 and compared(frame, x, st[-2], st[-1]) != U
    if op in ("LOAD_ATTR", "LOAD_METHOD"):
        return bool(st) and (_plain_attribute(frame, st[-1], x.argval) or (x.argval == "write" and std_stream(frame, st[-1])))
    if op in SHOWN:
        return all(text(v) or v[0] == "C" for v in st[-(SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)) :])
    if op == "BINARY_OP":
        return len(st) >= 2 and text(st[-1]) and text(st[-2])
    if op in CALLS:
        argc = (x.arg or 0) + (op == "CALL_KW")
        vals = st[len(st) - argc - 2 :] if len(st) >= argc + 2 else []
        a, b = (vals[0], vals[1]) if vals else (U, U)
        target = b if a == NULL else a if b == NULL else a[1] if a[0] == "CALLEE" else None
        fn = resolve(frame, target, own=False) if target is not None and target != T else None
        fn = getattr(fn, "__func__", fn)
        sink = any(fn is f for f in (*FORMATTERS, *SINKS)) or stream_write(frame, target) is not None
        return bool(vals) and sink and all(v in (T, S, NULL) or v[0] == "C" or std_stream(frame, v) for v in vals[2:])
    return False


_QUIET = frozenset({"LOAD_CONST", "LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_LOAD_FAST", "LOAD_GLOBAL", "PUSH_NULL",
                    "POP_TOP", "STORE_FAST", "DELETE_FAST", "COPY", "SWAP", "RETURN_VALUE", "RETURN_CONST"})  # fmt: skip


def _plain_attribute(frame: FrameType, base: Sym, name: str) -> bool:
    """Is ``base.name`` a module's or a logger's attribute that runs no code when read?"""
    obj = resolve(frame, base, own=False)
    if not isinstance(obj, (type(sys), logging.Logger)):
        return False
    try:
        found = inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return not hasattr(type(found), "__get__") or inspect.isroutine(found) or isinstance(found, (type(sys), logging.Logger))
