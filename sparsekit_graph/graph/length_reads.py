"""Under ``torch.export``: the lengths the model's own code reads off tensors, and what Python
decides on them.

torch.export runs the forward once, with plain ints for every static length: ``if h.shape[1] !=
8``, ``assert h.size(1) > 2`` or ``for _ in range(h.shape[1])`` leave no mark in its graph. While a
forward is exported, ``size_reaching.Reaching`` hands the model's code (not torch's) every static
length it reads (``h.shape``, ``h.size()``, ``h.size(1)``, ``h.numel()``, ``len(h)``) as a tracked value
(``size_values.SizeRead``, a ``LengthTuple`` for a whole shape) of the site ``LENGTH``; a
symbolic length (the dynamic batch) stays torch's. ``size_reads.finish`` lists what Python
decided on them (``Decision``) on the output node (``LENGTH_DECISIONS``) instead of pinning an
attribute. The export probe (``plan/probe.py``) traces a pruned copy and compares its list with
the model's (``unmatched``): a decision on a length that pruning changed pins the groups
pruned, as control flow on a traced length pins under torch.fx, whether or not the example's
count flips it.
"""

from __future__ import annotations

import builtins
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .flow_calls import resolve
from .flow_code import code_table, instruction_at, live
from .flow_stack import stacks
from .flow_symbols import NULL, Fail
from .fresh_sizes import sourced
from .meta import output_node
from .size_flow import Where, where_made
from .size_values import LENGTH, SizeRead, SizeTuple, _Tracked
from .user_code import INTERNAL, by_user, is_stand_in, stand_in

if TYPE_CHECKING:
    from .size_reads import _Log

__all__ = [
    "LENGTH",
    "LENGTH_DECISIONS",
    "SYMBOLIC_READS",
    "Decision",
    "LengthTuple",
    "decision",
    "is_length",
    "read_lengths",
    "reading_len",
    "unmatched",
]

LENGTH_DECISIONS = "skg.length_decisions"  # on an exported graph's output node: its ``Decision``s

_SHAPE = torch._C.TensorBase.shape  # ``Tensor.shape``'s descriptor: its ``__get__`` reaches torch function modes
_NUMEL = torch._C.TensorBase.numel
_COUNTS = frozenset({torch._C.TensorBase.size, _NUMEL, torch.Tensor.__len__})  # ints of lengths

_LEN = builtins.len
_DISPATCH = frozenset({"__torch_function__", "handle_torch_function"})  # torch's frames between a call and the modes
At = tuple[str, str, int]  # (file, function, instruction offset) of the model's code
# where the value was made, how Python used it, its value (``None`` for a length that was
# symbolic: the dynamic batch), the line, and the reads it was made from (``_read``)
Decision = tuple[At, str, tuple[int | None, ...], int, frozenset[str]]
SYMBOLIC_READS = "skg.symbolic_lengths"  # on an exported graph's output node: the reads that gave symbolic lengths


def read_lengths(func: Any, out: Any, log: _Log) -> Any:
    """``out`` of ``func`` as the model's code should see it: tracked where ``func`` reads
    lengths (``Tensor.size``, ``Tensor.shape``, ``numel``, ``len``) for the model's own code. A
    symbolic count stays torch's; where the code read it is noted (``log.symbolic``)."""
    if func not in _COUNTS and getattr(func, "__self__", None) is not _SHAPE:
        return out
    caller = _user_caller(func)
    if caller is None:
        return out
    read = _read(_at(caller, caller.f_lasti), "numel" if func is _NUMEL else "")
    if isinstance(out, int) and not isinstance(out, bool):
        return SizeRead(out, frozenset({(LENGTH, read)}), log)
    if isinstance(out, torch.Size):
        return LengthTuple(tuple(out), frozenset({(LENGTH, read)}), log)
    if isinstance(out, torch.SymInt) and func is not _NUMEL:  # one axis: a dynamic one (a numel may hold channels)
        log.symbolic.add(read)
    return out


@stand_in
def _len(obj: Any, /) -> Any:
    """``builtins.len`` while exported: ``len(t)`` of a tensor, asked by the model's code, is the
    tracked length ``Tensor.__len__`` hands it (``read_lengths``), which CPython's ``len()``
    would make a plain int; anything else, and torch's own calls, the builtin's."""
    if isinstance(obj, torch.Tensor) and by_user(1):
        return torch.Tensor.__len__(obj)
    return _LEN(obj)


@contextmanager
def reading_len() -> Iterator[None]:
    """While active, ``len(t)`` in the model's code keeps the length it read tracked (``_len``)."""
    saved = builtins.len
    builtins.len = _len
    try:
        yield
    finally:
        builtins.len = saved


def _read(at: At, part: str) -> str:
    """A read's name: where the model's code made it, and which part of a shape it is."""
    return f"{at[0]}:{at[1]}:{at[2]}:{part}"


def _user_caller(func: Any) -> FrameType | None:
    """The model's frame that called ``func`` (past torch's modes and its dispatch to them), if
    the caller is the model's code; ``_len`` stands in for ``len()``)."""
    frame: FrameType | None = sys._getframe(3)  # _user_caller <- read_lengths <- Reaching.__torch_function__ <- its caller
    own = getattr(func, "__code__", None)  # ``Tensor.__len__``: torch's Python, which dispatched to the modes
    while frame is not None and frame.f_code.co_filename.startswith(INTERNAL):
        if frame.f_code.co_name not in _DISPATCH and frame.f_code is not own and not is_stand_in(frame):
            return None
        frame = frame.f_back
    return frame


def _at(frame: FrameType, offset: int) -> At:
    """Where ``frame`` runs the instruction at ``offset``: its start, which the adaptive
    interpreter does not move (a specialised ``__getitem__`` call reports its last cache entry)."""
    code = frame.f_code
    ins, _ = code_table(code)
    k = instruction_at(ins, offset)
    if ins[k].opname == "PRECALL" and k + 1 < len(ins) and ins[k + 1].opname == "CALL":
        k += 1  # Python 3.11: a builtin's specialised PRECALL runs the call itself (``all(x.shape)``)
    return code.co_filename, code.co_name, ins[k].offset


def _unused(frame: FrameType, count: int) -> set[int]:
    """Where ``frame`` unpacks ``count`` lengths into locals (``_, h, w, _ = x.shape``): the
    positions stored into a local that is never loaded before it is stored again."""
    ins, _ = code_table(frame.f_code)
    i = instruction_at(ins, frame.f_lasti)
    if ins[i].opname != "UNPACK_SEQUENCE" or ins[i].arg != count or i + count >= len(ins):
        return set()
    stores = ins[i + 1 : i + 1 + count]  # the first length is stored first
    return {j for j, x in enumerate(stores) if x.opname == "STORE_FAST" and not live(frame.f_code, x.argval, i + 2 + j)}


def _truth_only(frame: FrameType) -> bool:
    """Is ``frame`` (the model's) calling ``all(x.shape)`` or ``any(x.shape)`` (LongT5's
    ``_pad_to_multiple``)? Its lengths are then only tested for truth, and a length no pruning
    makes 0 (a count keeps >= 1 channel) never flips one: no decision (``size_values.truth_free``)."""
    ins, _ = code_table(frame.f_code)
    k = instruction_at(ins, frame.f_lasti)
    if ins[k].opname == "PRECALL" and k + 1 < len(ins):
        k += 1
    if ins[k].opname != "CALL" or ins[k].arg != 1:
        return False
    try:
        stack = stacks(frame).get(ins[k].offset)
    except Fail:
        return False
    if stack is None or len(stack) < 3:
        return False
    a, b, arg = stack[-3:]
    target = b if a == NULL else a if b == NULL else None
    fn = resolve(frame, target, own=False) if target is not None else None
    return (fn is builtins.all or fn is builtins.any) and arg[0] == "A" and arg[2] == "shape"  # the tensor's shape itself


class LengthTuple(SizeTuple):
    """A tensor's shape read by the model's code under ``torch.export``: a ``SizeTuple`` whose
    lengths may be symbolic (kept as they are), with ``torch.Size``'s ``numel``."""

    tensor: torch.Tensor | None = None  # whose whole shape it is (``size_reaching``): its lengths' axes

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLE0307 - what isinstance() asks once the type check failed
        """``torch.Size`` to the model's code (``isinstance(h.shape, torch.Size)``: torch.Size
        cannot be subclassed), the truth to ours."""
        return torch.Size if by_user(1) else type(self)

    def _one(self, v: Any, i: int, unpacked: bool = False) -> Any:
        """Its ``i``-th length, taken by the model's code (``unpacked``: with the others, by an
        unpacking): a read of its own, where symbolic noted."""
        if isinstance(v, _Tracked):  # a tracked value joined in (``h.shape[:-1] + (n,)``)
            return v
        where = where_made(sys._getframe(2))  # the model's instruction taking it
        read = _read(_at(*where[0]) if where else ("?", "?", -1), str(i))
        if isinstance(v, int):
            length = SizeRead(v, frozenset({(LENGTH, read)}), self._log)
            length.unpacked = i if unpacked else None
            return sourced(length, self.tensor, i)
        self._log.symbolic.add(read)
        return v

    def __getitem__(self, i: Any) -> Any:
        out = tuple.__getitem__(self, i)
        if not by_user(1):
            self.reached = True
            return torch.Size(out) if isinstance(out, tuple) else out
        self.derived = True
        if isinstance(out, tuple):
            return LengthTuple(out, self._sites, self._log)
        return self._one(out, i if i >= 0 else i + tuple.__len__(self))

    def __iter__(self) -> Iterator[Any]:
        if not by_user(1):
            self.reached = True
            return tuple.__iter__(self)
        self.derived = True
        if _truth_only(sys._getframe(1)):  # ``all(x.shape)``: tested for truth only, which no count flips
            return tuple.__iter__(self)
        unused = _unused(sys._getframe(1), tuple.__len__(self))  # nothing to follow there
        return iter([v if i in unused else self._one(v, i, True) for i, v in enumerate(tuple.__iter__(self))])

    def __add__(self, other: Any) -> Any:
        if not isinstance(other, tuple):
            return NotImplemented
        return self._joined(tuple(tuple.__iter__(self)) + _absorbed(other), other)

    def __radd__(self, other: Any) -> Any:
        if not isinstance(other, tuple):
            return NotImplemented
        return self._joined(_absorbed(other) + tuple(tuple.__iter__(self)), other)

    def _joined(self, values: tuple[Any, ...], other: tuple[Any, ...]) -> LengthTuple:
        """``h.shape[:-1] + (n,)``: one shape, whose fate is its parts' (``view(output_shape)``);
        ``other`` a tracked tuple too (``x.shape[:1] + (n,) + x.shape[2:]``: LongT5) is one of them."""
        self.derived = True
        parts = [v for v in (*values, other) if isinstance(v, _Tracked)]
        for v in parts:
            v.derived = True
        return LengthTuple(values, self._sites.union(*(v._sites for v in parts)), self._log)

    def numel(self) -> Any:
        """The product of the lengths (tracked where all are static)."""
        self.derived = True
        values = tuple(tuple.__iter__(self))
        total = math.prod(values)
        return SizeRead(total, self._sites, self._log) if isinstance(total, int) else total


def _absorbed(other: tuple[Any, ...]) -> tuple[Any, ...]:
    """``other``'s values, its tracked ones now part of a shape (``derived``)."""
    values = tuple(tuple.__iter__(other))
    for v in values:
        if isinstance(v, _Tracked):
            v.derived = True
    return values


def is_length(t: _Tracked) -> bool:
    """Was ``t`` made from a length (alone or with attributes)?"""
    return any(site[0] == LENGTH for site in t._sites)


def decision(t: _Tracked, where: Where, kind: str) -> Decision:
    """What the model's code decided on ``t`` (made at ``where``), for the probe to compare."""
    frame, offset = where[0] if where else (None, -1)
    code = frame.f_code if frame is not None else None
    at = _at(frame, offset) if frame is not None else ("?", "?", -1)
    line = next((n for start, end, n in code.co_lines() if start <= offset < end and n), 0) if code is not None else 0
    raw = tuple(tuple.__iter__(t)) if isinstance(t, tuple) else (t,)
    reads = frozenset(site[1] for site in t._sites if site[0] == LENGTH)
    return at, kind, tuple(int.__int__(v) if isinstance(v, int) else None for v in raw), line, reads


def unmatched(traced: fx.Graph, pruned: fx.Graph, static: Callable[[], fx.Graph]) -> str | None:
    """The first decision of ``traced`` (the model's trace) that ``pruned`` (a pruned copy's,
    static) did not make on the same lengths, in words; None where each was made again. A
    length symbolic in ``traced`` matches any. Where ``pruned`` decided on more, made from reads
    that were not all symbolic in ``traced`` (``h.shape[0] * h.shape[1]``, ``h.numel()``),
    ``static()`` (the model's static trace) is the baseline."""
    why, extra = _compare(_decisions(traced), _decisions(pruned))
    symbolic = output_node(traced).meta.get(SYMBOLIC_READS, frozenset())
    if why is None and any(not d[4] <= symbolic for d in extra):  # made from a length static in ``traced`` too
        why, _ = _compare(_decisions(static()), _decisions(pruned))
    return why


def _compare(before: tuple[Decision, ...], after: tuple[Decision, ...]) -> tuple[str | None, list[Decision]]:
    """The first decision of ``before`` that ``after`` did not make (in words), and those of
    ``after`` left unmatched."""
    made: dict[tuple[At, str], list[Decision]] = {}
    for d in after:
        made.setdefault((d[0], d[1]), []).append(d)
    for at, kind, value, line, _ in before:
        others = made.get((at, kind), [])
        match = next((i for i, d in enumerate(others) if _same(value, d[2])), None)
        if match is None:
            now = ", ".join(_shown(d[2]) for d in others) or "no such decision"
            where = f"{at[1]} ({at[0].rsplit('/', 1)[-1]}:{line})"
            return f"python control flow on a length of {_shown(value)} ({kind}) in {where}: the pruned copy decides on {now}", []
        others.pop(match)
    return None, [d for ds in made.values() for d in ds]


def _decisions(graph: fx.Graph) -> tuple[Decision, ...]:
    return output_node(graph).meta.get(LENGTH_DECISIONS, ())


def _same(before: tuple[int | None, ...], after: tuple[int | None, ...]) -> bool:
    return len(before) == len(after) and all(b is None or b == a for b, a in zip(before, after))


def _shown(value: tuple[int | None, ...]) -> str:
    text = ["?" if v is None else str(v) for v in value]
    return text[0] if len(text) == 1 else f"({', '.join(text)})"
