"""The abstract stack machine of ``size_flow``'s bytecode walks: the symbols (``flow_symbols``)
on the stack before each instruction of a frame's code (``stacks``), one instruction's effect on
them (``step``, which with the sinks' trust raises ``Fail`` where the followed value ``T`` meets
a use it cannot vouch for), and the stack after an instruction that made the followed value
(``stack_after``).
"""

from __future__ import annotations

import dis
import operator
import sys
from types import FrameType
from typing import Any

from .flow_calls import Trust, call_result
from .flow_code import ENDS, GOTO, code_table, dead, exception_handlers, fixed_arguments
from .flow_symbols import NULL, Fail, Recorded, S, Sym, T, U

__all__ = ["BRANCHES", "BUILDS", "CALLS", "NOTHING", "SHOWN", "compared", "stack_after", "stacks", "step", "text", "value_of"]

CALLS = frozenset({"CALL", "CALL_KW"})
SHOWN = {"FORMAT_VALUE": None, "FORMAT_SIMPLE": 1, "FORMAT_WITH_SPEC": 2, "CONVERT_VALUE": 1}  # operands formatted
BUILDS = frozenset({"BUILD_STRING", "BUILD_TUPLE", "BUILD_LIST"})
NOTHING = frozenset({"NOP", "RESUME", "CACHE", "EXTENDED_ARG", "PRECALL", "KW_NAMES", "COPY_FREE_VARS", "MAKE_CELL"})
BRANCHES = frozenset(
    {f"POP_JUMP_{d}IF_{c}" for d in ("", "FORWARD_", "BACKWARD_") for c in ("TRUE", "FALSE", "NONE", "NOT_NONE")}
)
_METHOD_BIT = sys.version_info >= (3, 12)  # LOAD_ATTR's low bit: a method load


def stack_after(frame: FrameType, ins: list[dis.Instruction], i: int, part: int = 0) -> list[Sym]:
    """The abstract stack after ``ins[i]``, with the value it pushed (the one followed) as ``T``;
    ``part``: the one of the values it pushed, counted from the top (``UNPACK_SEQUENCE``'s
    ``part``-th item)."""
    before = stacks(frame).get(ins[i].offset)
    if before is None:
        raise Fail
    stack = list(step(frame, ins, i, list(before), taint=None)[0][1])
    if part >= len(stack):
        raise Fail
    stack[-1 - part] = T
    return stack


def stacks(frame: FrameType) -> dict[int, tuple[Sym, ...]]:
    """The abstract stack before each reachable instruction of ``frame``'s code (merged over
    paths: values that differ become ``U``); exception handlers start from unknown values."""
    code = frame.f_code
    ins, index = code_table(code)
    found: dict[int, tuple[Sym, ...]] = {}
    todo: list[tuple[int, tuple[Sym, ...]]] = [(0, ())]
    for start, depth in exception_handlers(code):
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
                raise Fail
            merged = tuple(a if a == b else U for a, b in zip(old, st))
            if merged == old:
                continue
            st = merged
        found[off] = st
        for nxt, after in step(frame, ins, i, list(st), taint=None):
            if nxt is not None and nxt != "return":
                todo.append((index[nxt], tuple(after)))
    return found


def step(
    frame: FrameType | None, ins: list[dis.Instruction], i: int, st: list[Sym], taint: Trust | None, tests: bool = False
) -> list[tuple[Any, list[Sym]]]:
    """``ins[i]``'s successors ``(offset | "return" | None, stack after)``. With ``taint`` (the
    sinks' states), a use of ``T`` that is not harmless raises ``Fail``; with ``tests``, a
    branch on ``T`` is harmless (a count whose truth no pruning flips: ``if n:``)."""
    x = ins[i]
    op, nxt = x.opname, ins[i + 1].offset if i + 1 < len(ins) else None

    def pop(n: int) -> list[Sym]:
        if n > len(st):
            raise Fail
        out = st[len(st) - n :] if n else []
        del st[len(st) - n :]
        return out

    def used(*vals: Sym) -> None:  # a use this walk cannot vouch for
        if taint is not None and any(v == T for v in vals):
            raise Fail

    if op in NOTHING:
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
        if taint is not None and v == T and not dead(frame, x.argval):
            raise Fail
        return [(nxt, st)]
    if op in SHOWN:
        n = SHOWN[op] or (2 if (x.arg or 0) & 4 else 1)
        vals = pop(n)
        if n == 2 and op != "CONVERT_VALUE" and vals[0] != T:
            used(vals[1])  # ``f"{obj:{n}}"``: obj.__format__ is given the read
        out = T if T in vals else S
        return [(nxt, [*st, out])]
    if op in BUILDS:
        out = T if T in pop(x.arg or 0) else S if op == "BUILD_STRING" else U
        return [(nxt, [*st, out])]
    if op == "BINARY_OP":
        lhs, rhs = pop(2)
        shown = (x.argrepr == "+" and text(lhs) and text(rhs)) or (x.argrepr == "%" and text(lhs) and lhs != T)
        used(*(() if shown else (lhs, rhs)))
        return [(nxt, [*st, (T if T in (lhs, rhs) else S) if shown else U])]
    if op in ("BINARY_SUBSCR", "COMPARE_OP", "IS_OP", "CONTAINS_OP"):  # ``h.shape[1]``, ``h == n``: a value unknown here
        lhs, rhs = pop(2)
        used(lhs, rhs)
        return [(nxt, [*st, compared(frame, x, lhs, rhs)])]
    if op in CALLS:
        vals = pop((x.arg or 0) + 2 + (op == "CALL_KW"))
        if op == "CALL_KW":
            names, vals = (vals[-1][1] if vals[-1][0] == "C" else None), vals[:-1]
        else:
            j = i - 1 if i and ins[i - 1].opname != "PRECALL" else i - 2
            names = _kw_names(frame, ins[j]) if j >= 0 and ins[j].opname == "KW_NAMES" else ()
        out = call_result(frame, vals, names, taint)
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
    if op in GOTO:
        return [(x.argval, st)]
    if op in BRANCHES:
        (v,) = pop(1)
        if not tests:
            used(v)
        known = value_of(frame, v)
        if known:  # a branch this call's arguments decide: only the way it went
            return [(x.argval if _jumps(op, known[0]) else nxt, st)]
        return [(nxt, list(st)), (x.argval, st)]
    if taint is not None and T in st:  # an opcode this walk does not model, with the read on the stack
        raise Fail
    return _unknown(x, st, nxt)


def _kw_names(frame: FrameType | None, x: dis.Instruction) -> tuple[str, ...] | None:
    """The keyword names ``KW_NAMES`` gives the next call (3.11's ``dis`` leaves them unresolved)."""
    if isinstance(x.argval, tuple):
        return x.argval
    names = frame.f_code.co_consts[x.arg] if frame is not None and x.arg is not None else None
    return names if isinstance(names, tuple) else None


_PLAIN = (int, float, str, bool, type(None))  # constants whose comparisons run no model code
_ARGUMENTS = (int, type(None))  # arguments folded: no flag (``training``: the other mode differs)
_COMPARE = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge}


def value_of(frame: FrameType | None, v: Sym) -> tuple[Any] | tuple[()]:
    """``(value,)`` where ``v`` is an int or None, a constant or an argument of ``frame``'s call
    that its code never reassigns (its value now is the one every instruction saw); else ``()``.
    A tracked read stands for its value (its uses are its own to record). Bools, floats and
    strings are not folded: a flag passed down (``training``, a dropout rate) takes the other
    branch in the other mode, which torch.export does not trace."""
    if v[0] == "C":
        return (v[1],) if type(v[1]) in _PLAIN else ()
    if v[0] != "L" or frame is None or v[1] not in fixed_arguments(frame.f_code):
        return ()
    value = frame.f_locals.get(v[1], U)
    if isinstance(value, Recorded):
        value = int.__int__(value) if isinstance(value, int) and not isinstance(value, bool) else U
    return (value,) if type(value) in _ARGUMENTS else ()


def compared(frame: FrameType | None, x: dis.Instruction, lhs: Sym, rhs: Sym) -> Sym:
    """The constant a comparison of two known plain values gives (``n_rep == 1`` on an
    argument), else ``U``."""
    a, b = value_of(frame, lhs), value_of(frame, rhs)
    if not (a and b):
        return U
    if x.opname == "IS_OP":
        return ("C", (a[0] is b[0]) != bool(x.arg))
    how = _COMPARE.get(str(x.argval).removeprefix("bool(").removesuffix(")")) if x.opname == "COMPARE_OP" else None
    try:
        return U if how is None else ("C", bool(how(a[0], b[0])))
    except TypeError:  # ``"a" < 1``: the call raised there
        return U


def _jumps(op: str, value: Any) -> bool:
    """Does the conditional jump ``op`` jump on ``value``?"""
    if op.endswith("NOT_NONE"):
        return value is not None
    if op.endswith("NONE"):
        return value is None
    return bool(value) == op.endswith("TRUE")


def text(v: Sym) -> bool:
    """Is ``v`` a string (a constant, or made by formatting)?"""
    return v in (T, S) or (v[0] == "C" and isinstance(v[1], str))


def _unknown(x: dis.Instruction, st: list[Sym], nxt: int | None) -> list[tuple[Any, list[Sym]]]:
    """An opcode without a precise model: every value on the stack becomes ``U``, as deep as
    ``dis.stack_effect`` says, on each way out (none after a raise)."""
    if x.opname in ENDS:
        return []
    out = []
    jumps = x.opcode in dis.hasjrel or x.opcode in dis.hasjabs
    for jump, target in ((False, nxt), (True, x.argval)) if jumps else ((False, nxt),):
        depth = len(st) + dis.stack_effect(x.opcode, x.arg if x.opcode >= dis.HAVE_ARGUMENT else None, jump=jump)
        if depth < 0:
            raise Fail
        out.append((target, [U] * depth))
    return out
