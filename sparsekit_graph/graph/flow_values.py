"""Where a plain number made from an axis length went: a value of tensor arithmetic, or more.

``float(h.shape[1])`` hands the model's code a plain float (Python converts whatever
``__float__`` returns to one), so nothing sees what the code does with it: under torch.fx its
length node is marked as deciding control flow, and the axis pins. ``flows_as_value`` proves,
from the bytecode of the frame that made the number, that on every path it is only:

- turned into more such numbers: arithmetic that recorded no node (``n / 2``, ``-n``), a
  ``math`` function, a pure torch function or constructor of a tensor from it
  (``torch.log(torch.tensor(n))``), ``float``/``int`` again; a local holding it (each load is
  followed);
- an operand of arithmetic that recorded a graph node at that instruction of that frame, a
  node of the tensors' data (``h / n``, ``h * torch.log(...)``; not ``b * n`` with ``b`` a
  length, a number the code may still size or decide with): a tensor op took it as a value
  (the axis only loses its zero-invariance);
- dropped, shown or logged (``size_flow``'s rules).

Anything else fails the proof (a comparison, a branch, a call that recorded a node, whose
argument it might size, a return, a subscript, an opcode not modelled): the axis stays pinned.

``flows_as_size`` asks the other question of ``int(c / g)``: is the number only one positional
size of one ``view`` / ``reshape`` (no arithmetic on it, no other use)? There the graph holds
``c // g`` instead (``Conversions.resolve``): the same number at every count, lengths being
non-negative and the divisor positive.
"""

from __future__ import annotations

import builtins
import math
import operator
import sys
from collections.abc import Callable, Collection
from types import FrameType
from typing import Any

import torch
import torch.fx as fx

from .flow_calls import Trust, resolve
from .flow_code import INTROSPECTION, code_table, dead, instruction_at, live
from .flow_stack import stack_after, step
from .flow_symbols import NULL, Fail, Sym, T, U
from .meta import CONTROL
from .size_sinks import Sinks, sinks_now

__all__ = ["VALUE", "Conversions", "Made", "flows_as_size", "flows_as_value"]

VALUE = "value"  # a ``CONTROL`` mark: the length's number only flowed into tensor arithmetic
_Sites = tuple[Collection[tuple[int, int]], Collection[tuple[int, int]]]  # where any node / a tensor op was recorded

Made = dict[tuple[int, int], list[fx.Node]]  # (id of a watched frame, offset) -> the nodes recorded there

_ARITH = frozenset({"+", "-", "*", "/", "//", "%", "**", "+=", "-=", "*=", "/=", "//=", "%=", "**="})
_PURE_TORCH = ("tensor", "as_tensor", "scalar_tensor", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "exp",
               "reciprocal", "abs", "neg", "square")  # fmt: skip
_PURE: frozenset[Any] = frozenset(
    {*(v for k, v in vars(math).items() if not k.startswith("_") and callable(v)), builtins.float, builtins.int,
     builtins.abs, *(getattr(torch, k) for k in _PURE_TORCH)}
)  # fmt: skip


def flows_as_value(frame: FrameType, lasti: int, made: Made, data: Callable[[fx.Node], bool], trust: Trust) -> bool:
    """Is the number the instruction at ``lasti`` of ``frame`` makes (a call: ``float(c)``) only
    used as a value of tensor arithmetic (a node ``data`` calls one of the tensors' data), or not
    used (see the module docstring)?"""
    tensor_ops = {k for k, nodes in made.items() if data(nodes[-1])}  # the op's node (its constants come first)
    try:
        return _walk(frame, lasti, (made.keys(), tensor_ops), trust)
    except Fail:
        return False
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return False


def flows_as_size(frame: FrameType, lasti: int, made: Made, trust: Trust) -> tuple[fx.Node, int] | None:
    """Where the number the instruction at ``lasti`` of ``frame`` makes (``int(c / g)``) goes,
    if it is only one positional size of one ``view`` / ``reshape`` call of a traced tensor
    (``h.view(b, g, int(c / g), hw)``) and otherwise only dropped or shown: that call's node
    and the index of its argument holding the number; None otherwise."""
    sized = _Sized(made)
    try:
        _walk(frame, lasti, (made.keys(), ()), trust, sized)
    except Fail:
        return None
    except Exception:  # noqa: BLE001 - bytecode this walk does not know: no proof
        return None
    return sized.found[0] if len(sized.found) == 1 else None


class _Sized:
    """The calls a followed number sized (``flows_as_size``)."""

    def __init__(self, made: Made) -> None:
        self.made = made
        self.found: list[tuple[fx.Node, int]] = []

    def call(self, frame: FrameType, ins: list[Any], k: int, vals: list[Sym]) -> bool:
        """Is ``ins[k]`` a method call recording ``view`` / ``reshape`` with the number as one
        positional size (noted), not as its callee or tensor?"""
        if ins[k].opname != "CALL" or vals.count(T) != 1 or vals.index(T) < 2 or vals[0][0] != "CALLEE":
            return False
        offsets: list[int] = [ins[k].offset] + ([ins[k - 1].offset] if k and ins[k - 1].opname == "PRECALL" else [])
        nodes = next((self.made[(id(frame), o)] for o in offsets if (id(frame), o) in self.made), None)
        node = nodes[-1] if nodes else None
        at = vals.index(T) - 1  # (callee, self, *args) -> node.args = (self, *args)
        if node is None or node.op != "call_method" or node.target not in _SIZED or at >= len(node.args):
            return False
        self.found.append((node, at))
        return True


_SIZED = frozenset({"view", "reshape"})


def _walk(frame: FrameType, lasti: int, made: _Sites, trust: Trust, sized: _Sized | None = None) -> bool:
    code = frame.f_code
    if not INTROSPECTION.isdisjoint(code.co_names) or code.co_cellvars:
        raise Fail
    ins, index = code_table(code)
    i = instruction_at(ins, lasti)
    if ins[i].opname not in ("CALL", "CALL_KW", "LOAD_ATTR", "BINARY_SUBSCR"):  # float(n), m.width, vars(m)["width"]
        raise Fail
    todo: list[tuple[int, tuple[Sym, ...], frozenset[str]]] = [(i + 1, tuple(stack_after(frame, ins, i)), frozenset())]
    seen: set[tuple[int, tuple[Sym, ...], frozenset[str]]] = set()
    while todo:
        k, st, held = todo.pop()
        if (k, st, held) in seen or (T not in st and not held):
            continue
        seen.add((k, st, held))
        if k >= len(ins):
            raise Fail
        for nxt, after, kept in _next(frame, ins, k, list(st), held, made, trust, sized):
            if nxt == "return":
                raise Fail  # a helper's result: the caller's use is not followed
            if nxt is not None:
                j = index[nxt]
                todo.append((j, tuple(after), frozenset(n for n in kept if live(code, n, j))))
    return True


def _next(
    frame: FrameType,
    ins: list[Any],
    k: int,
    st: list[Sym],
    held: frozenset[str],
    made: _Sites,
    trust: Trust,
    sized: _Sized | None = None,
) -> list[tuple[Any, list[Sym], frozenset[str]]]:
    """``ins[k]``'s successors with the number (``T``) followed."""
    x = ins[k]
    op, name = x.opname, x.argval
    nxt = ins[k + 1].offset if k + 1 < len(ins) else None
    if op == "STORE_FAST" and st and (st[-1] == T or name in held):
        kept = held | {name} if st.pop() == T and not dead(frame, name) else held - {name}
        return [(nxt, st, kept)]
    if op in ("LOAD_FAST", "LOAD_FAST_CHECK") and name in held:
        return [(nxt, [*st, T], held)]
    if op in ("LOAD_FAST_AND_CLEAR", "LOAD_FAST_LOAD_FAST", "DELETE_FAST") and not held.isdisjoint(
        name if isinstance(name, tuple) else (name,)
    ):
        raise Fail
    if op in ("BINARY_OP", "UNARY_NEGATIVE", "UNARY_POSITIVE") and T in st[-(2 if op == "BINARY_OP" else 1) :]:
        if sized is not None or (op == "BINARY_OP" and x.argrepr not in _ARITH):  # a size is followed as it is
            raise Fail
        del st[-(2 if op == "BINARY_OP" else 1) :]
        site = (id(frame), x.offset)
        if site in made[1]:  # a tensor op took the number as an operand
            return [(nxt, [*st, U], held)]
        if site in made[0]:  # a node of lengths holds it: not followed
            raise Fail
        return [(nxt, [*st, T], held)]
    if op in ("CALL", "CALL_KW"):
        argc = (x.arg or 0) + 2 + (op == "CALL_KW")
        if len(st) < argc:
            raise Fail
        vals = st[len(st) - argc :]
        if sized is not None and sized.call(frame, ins, k, vals):  # ``h.view(b, g, int(c / g), hw)``
            return [(nxt, [*st[: len(st) - argc], U], held)]
        if T in vals[1:]:
            if sized is not None:  # ``math.floor(n)``, ``int(n)``: another number, not the one followed
                raise Fail
            return [(nxt, [*st[: len(st) - argc], _pure_call(frame, x.offset, vals, made)], held)]
    return [(n, a, held) for n, a in step(frame, ins, k, st, taint=trust)]


def _pure_call(frame: FrameType, offset: int, vals: list[Sym], made: _Sites) -> Sym:
    """The result of a call given the number: another such number where the callee is pure
    (``_PURE``) and recorded no node; else ``Fail``."""
    a, b = vals[0], vals[1]
    target = b if a == NULL else a[1] if a[0] == "CALLEE" and b[0] == "SELF" else None
    if target is None or target == T or (id(frame), offset) in made[0]:
        raise Fail
    fn = resolve(frame, target, own=False)
    if not any(fn is f for f in _PURE):
        raise Fail
    return T


_SIZE_METHODS = frozenset({"size", "dim", "numel", "nelement", "ndimension"})
_SIZE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype"})


def of_data(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    """Does ``node`` depend on the tensors' data (a forward input or a layer's output) other
    than through their sizes? Constants and parameters count as no data (fail closed: a number
    made from lengths times a constant tensor may still size or decide)."""
    if node not in memo:
        for n in node.graph.nodes:  # in topological order: inputs first
            if n not in memo:
                memo[n] = n.op in ("placeholder", "call_module") or (
                    not _reads_size(n) and any(memo.get(a, False) for a in n.all_input_nodes)
                )
            if n is node:
                break
    return memo.get(node, False)


def _reads_size(n: fx.Node) -> bool:
    """``t.size()``, ``t.shape``, ``len(t)`` and the like: a number, whatever ``t`` holds."""
    return (n.op == "call_method" and n.target in _SIZE_METHODS) or (
        n.op == "call_function" and (n.target is builtins.len or (n.target is getattr and n.args[1] in _SIZE_ATTRIBUTES))
    )


class Conversions:
    """The ``float(...)`` of traced lengths the model's code made during one torch.fx trace, and
    the graph nodes recorded meanwhile at an instruction of a watched frame (one that made such
    a number, or a read of a size attribute: ``watch``; ``Made``). ``resolve`` marks a length
    node ``"value"`` (not control flow) where every conversion of it only flows into tensor
    arithmetic (``flows_as_value``) and nothing else decided on it; ``value`` asks the same of
    a size attribute's read (``1.0 / n``: float's arithmetic takes an int without a hook)."""

    def __init__(self, sinks: Sinks) -> None:
        self._base = sinks
        self._data: dict[fx.Node, bool] = {}  # ``of_data`` memo
        self._found: dict[fx.Node, tuple[FrameType, int, Sinks]] = {}
        self._frames: dict[int, FrameType] = {}  # held: no other frame takes a watched one's id
        self._made: Made = {}

    def note(self, node: fx.Node, frame: FrameType) -> None:
        """``frame`` (the model's code) converted ``node``, a length newly marked ``"number"``."""
        self._found[node] = (frame, frame.f_lasti, sinks_now())
        self.watch(frame)

    def watch(self, frame: FrameType) -> None:
        """Note the nodes ``frame`` records from now on, and where."""
        self._frames[id(frame)] = frame

    def value(self, frame: FrameType, lasti: int, at: Sinks) -> bool:
        """Does the number the instruction at ``lasti`` of watched ``frame`` made flow as a value?"""
        return flows_as_value(frame, lasti, self._made, lambda n: of_data(n, self._data), (at, self._base))

    def decided(self, node: fx.Node) -> None:
        """Python decided on ``node`` otherwise too: it stays marked."""
        self._found.pop(node, None)

    def recorded(self, node: fx.Node) -> None:
        """``node`` was just recorded: note where each watched frame on the stack is."""
        if not self._frames:
            return
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if id(frame) in self._frames:
                self._made.setdefault((id(frame), frame.f_lasti), []).append(node)
            frame = frame.f_back

    def resolve(self, control: str) -> None:
        """Unmark (``"value"``) the nodes marked ``control`` whose conversions flow as values;
        ``int(c / g)`` that only sizes a ``view`` becomes ``c // g`` there (``_as_floordiv``)."""
        for node, (frame, lasti, at) in self._found.items():
            if node.meta.get(CONTROL) != control:
                continue
            if self.value(frame, lasti, at):
                node.meta[CONTROL] = VALUE
            elif _quotient(node) and (hit := flows_as_size(frame, lasti, self._made, (at, self._base))) is not None:
                _as_floordiv(node, *hit)
        self._found.clear()

    def clear(self) -> None:
        """Forget every frame and node (the trace is over, or failed)."""
        self._found.clear()
        self._frames.clear()
        self._made.clear()
        self._data.clear()


def _quotient(node: fx.Node) -> bool:
    """Is ``node`` ``c / g`` of a length ``c`` (or a product or sum of lengths and non-negative
    ints) and a positive int or length ``g``, unused by the graph? Then ``int()`` of it, which
    truncates, is ``c // g``, which floors, at every count (both are at least zero)."""
    if node.op != "call_function" or node.target is not operator.truediv or node.users or len(node.args) != 2:
        return False
    c, g = node.args
    return _length(c) and (_length(g) or (type(g) is int and g > 0))


def _length(n: object, depth: int = 0) -> bool:
    """A non-negative number made of axis lengths: ``h.shape[1]``, ``h.size(1)``, ``b * c``."""
    if type(n) is int:
        return n >= 0
    if not isinstance(n, fx.Node) or n.op != "call_function" or depth > 8:
        return isinstance(n, fx.Node) and n.op == "call_method" and n.target == "size" and len(n.args) == 2
    if n.target is operator.getitem:
        return isinstance(n.args[0], fx.Node) and _reads_size(n.args[0])
    return n.target in (operator.mul, operator.add, operator.floordiv) and all(_length(a, depth + 1) for a in n.args)


def _as_floordiv(node: fx.Node, user: fx.Node, at: int) -> None:
    """Hold ``c // g`` at argument ``at`` of ``user``, where Python wrote ``int(c / g)``'s value,
    and drop the quotient (nothing else used it)."""
    graph = node.graph
    if type(user.args[at]) is not int:  # not the number Python made
        return
    with graph.inserting_before(user):
        floor = graph.call_function(operator.floordiv, node.args)
    args = list(user.args)
    args[at] = floor
    user.args = tuple(args)
    graph.erase_node(node)
