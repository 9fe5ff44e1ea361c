"""Facts about a code object that ``size_flow``'s walk reads: its instructions, where an
offset falls, its exception handlers, and whether a local may still be loaded."""

from __future__ import annotations

import dis
from collections.abc import Iterator
from functools import lru_cache
from types import CodeType, FrameType

from .flow_symbols import Fail

__all__ = [
    "ENDS",
    "GOTO",
    "INTROSPECTION",
    "asks_class",
    "code_table",
    "dead",
    "exception_handlers",
    "fixed_arguments",
    "instruction_at",
    "live",
]

INTROSPECTION = frozenset({"locals", "vars", "eval", "exec", "_getframe", "currentframe", "f_locals", "stack", "trace"})
GOTO = frozenset({"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT"})
ENDS = frozenset({"RAISE_VARARGS", "RERAISE"})
_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR", "LOAD_FAST_LOAD_FAST", "DELETE_FAST"})


@lru_cache(maxsize=256)
def code_table(code: CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    """The code's instructions (inline caches left out) and, per offset, its instruction's index."""
    ins = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    return ins, {x.offset: k for k, x in enumerate(ins)}


def instruction_at(ins: list[dis.Instruction], lasti: int) -> int:
    """The instruction running at ``lasti`` (a caller's ``f_lasti`` may point into its call's
    inline cache). Python 3.11 runs a call its adaptive interpreter specialised (a builtin such
    as ``print`` after a few runs) inside the ``PRECALL`` before it: that is the ``CALL``."""
    k = max((k for k, x in enumerate(ins) if x.offset <= lasti), default=None)
    if k is None:
        raise Fail
    if ins[k].opname == "PRECALL" and k + 1 < len(ins) and ins[k + 1].opname == "CALL":
        return k + 1
    return k


_CLASS_ASKS = frozenset({"isinstance", "is_tensor", "__class__"})


def asks_class(frame: FrameType) -> bool:
    """Does the instruction ``frame`` runs, or one before it on its line, name ``isinstance``,
    ``is_tensor`` or ``__class__``, or match a class pattern (not torch's argument parser
    checking an argument's type)?"""
    ins, _ = code_table(frame.f_code)
    try:
        k = instruction_at(ins, frame.f_lasti)
    except Fail:
        return False
    line = frame.f_lineno
    while k >= 0 and (ins[k].positions is None or ins[k].positions.lineno in (None, line)):
        if ins[k].argval in _CLASS_ASKS or ins[k].opname == "MATCH_CLASS":  # ``case torch.Tensor():``
            return True
        k -= 1
    return False


def exception_handlers(code: CodeType) -> Iterator[tuple[int, int]]:
    """(handler offset, stack depth at its start) for each exception table entry."""
    parse = getattr(dis, "_parse_exception_table", None)
    if parse is None:
        return
    for e in parse(code):
        yield e.target, e.depth + 1 + int(e.lasti)


@lru_cache(maxsize=1024)
def live(code: CodeType, name: str, k: int) -> bool:
    """May local ``name`` be loaded on some path from instruction ``k`` before it is stored
    again? Exception handlers count as reachable from every instruction."""
    ins, index = code_table(code)
    handlers = [index[t] for t, _ in exception_handlers(code) if t in index]
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
        if x.opname in ENDS or x.opname in ("RETURN_VALUE", "RETURN_CONST"):
            continue
        if x.opcode in dis.hasjrel or x.opcode in dis.hasjabs:
            todo.append(index.get(x.argval, len(ins)))
            if x.opname in GOTO:
                continue
        todo.append(j + 1)
    return False


def dead(frame: FrameType | None, name: str) -> bool:
    """Is local ``name`` never loaded (nor deleted) in the frame's code, which does not read
    its locals by name?"""
    if frame is None:
        return False
    code = frame.f_code
    if name in code.co_cellvars or not INTROSPECTION.isdisjoint(code.co_names):
        return False
    for x in code_table(code)[0]:
        if x.opname in _LOADS and (x.argval == name or (isinstance(x.argval, tuple) and name in x.argval)):
            return False
    return True


@lru_cache(maxsize=256)
def fixed_arguments(code: CodeType) -> frozenset[str]:
    """The arguments the code never stores to nor deletes (nor shares with a closure, nor reads
    by name): each holds, for the whole call, the value it was passed."""
    if not INTROSPECTION.isdisjoint(code.co_names):
        return frozenset()
    count = code.co_argcount + code.co_kwonlyargcount
    arguments = set(code.co_varnames[:count]) - set(code.co_cellvars)
    for x in code_table(code)[0]:
        if x.opname.startswith(("STORE_FAST", "DELETE_FAST")) or x.opname == "LOAD_FAST_AND_CLEAR":
            arguments -= set(x.argval) if isinstance(x.argval, tuple) else {x.argval}
    return frozenset(arguments)
