"""The values ``size_reads`` hands the model's code: ``SizeRead`` (an int) and ``SizeTuple``
(``normalized_shape``), which remember the size attributes they came from and record what
Python does with them: a comparison, a truth test or a conversion by the model's own code is
control flow (``_Tracked.control``); arithmetic gives another tracked value (``derived``); a
value torch's code takes (a view's size) is ``reached``. A comparison or truth test of a value
made from one attribute is kept as a ``SizeTest`` (``self.num_heads > 2``): the export probe
prunes to a count that flips it. A float made from reads (``n ** -0.5``, ``n * 0.5``,
``math.sqrt(n)``: ``size_math``) is a ``SizeFloat``: the same record. Where an op takes it as a
value (``h * n ** -0.5``, ``scaled_dot_product_attention(scale=...)``) it is a count-dependent
number (``VALUE``: zero-invariance lost, not a pin); where it takes it as a size
(``interpolate(scale_factor=n / 8)``) or an argument nothing classifies, the group pins
(``number_args``: by the argument's normalised name). Under ``torch.export`` ``size_reaching``
classifies each call the model makes; under torch.fx the node keeps a ``ReadFloat`` that
``number_uses`` classifies once the graph has shapes. torch's own code converting it outside
such a call (``nn.Upsample(scale_factor=n / 8)`` built in forward) loses it: a pin.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from .flow_symbols import Recorded
from .number_args import SizeUse
from .size_flow import Where, converted_nowhere, where_made
from .size_origins import Origin, identity
from .size_sinks import Sinks, sinks_now
from .size_tests import DUNDER_TESTS, Site, SizeTest
from .user_code import by_user, caller

if TYPE_CHECKING:
    from .size_reads import _Log

__all__ = ["LENGTH", "VALUE", "Site", "SizeFloat", "SizeRead", "SizeTest", "SizeTuple", "identity", "tracked", "truth_free"]


LENGTH = "length@"  # the path of the site of a tensor's length read under torch.export (``length_reads``)

VALUE = "a number outside the graph"  # ``h * (1 / n)``: a value, not control flow: zero-invariance only


class _Tracked(Recorded):
    """What was done with a read: ``control`` (why it decided Python control flow), ``derived``
    (it became another tracked value, whose fate is its own), ``reached`` (torch code took it)."""

    _sites: frozenset[Site]
    _log: _Log
    _origin: Origin | None
    control: str | None
    derived: bool
    reached: bool
    exact: bool  # its attribute's value itself (a read, or ``n * 1``), not a number computed from it
    made_at: Where  # the model's frames that made it (``size_flow``)
    unpacked: int | None  # the item it is of a shape that instruction unpacks (``b, c, h, w = x.shape``)
    sinks: Sinks  # the output streams and logging as they were then (``size_sinks``)

    def _init(self, sites: frozenset[Site], log: _Log, origin: Origin | None = None) -> None:
        self._sites, self._log, self.control, self.derived, self.reached = sites, log, None, False, False
        self.exact = True
        self.made_at = where_made(sys._getframe(2))  # for ``size_flow``; ``finish`` empties it
        self.unpacked = None
        self.sinks = sinks_now()
        if log.conversions is not None and self.made_at:  # the nodes its frame records (``flow_values``)
            log.conversions.watch(self.made_at[0][0])
        self._origin = origin
        log.made.append(self)  # type: ignore[arg-type]

    def _use(self, kind: str) -> bool:
        """A use by Python: recorded when the model's code (two frames up) made it."""
        if by_user(2):
            if self.control is None:
                self.control = kind
            return True
        self._taken(kind)
        return False

    def _taken(self, kind: str) -> None:
        """torch's code used it (``kind``)."""
        self._reach()

    def _reach(self) -> None:
        """torch's code took it (a size: its rule or the graph's literal holds it)."""
        self.reached = True

    def _size(self, use: SizeUse | str) -> None:
        """An op takes it as a size (``use``): pruning the attribute changes a shape."""
        self.reached = True
        if self.control in (None, VALUE):
            self.control = use

    def _test(self, op: str, other: Any = None) -> None:
        """Keep the model's decision on this value as a ``SizeTest`` (one attribute's value only)."""
        if self._origin is not None and not isinstance(other, _Tracked):
            site, value, fn = self._origin
            self._log.tests.append(SizeTest(site, value, fn, op, other))


class SizeRead(_Tracked, int):
    """An int read from a layer's size attribute by the model's code while traced."""

    def __new__(cls, value: int, sites: frozenset[Site], log: _Log, origin: Origin | None = None) -> SizeRead:
        obj = int.__new__(cls, value)
        obj._init(sites, log, origin)
        return obj

    def __reduce__(self) -> tuple:
        return int, (int(self),)

    def __deepcopy__(self, memo: dict) -> int:
        return int(self)

    def __copy__(self) -> int:
        return int(self)


def _compare(kind: type, op: str) -> Any:
    """``kind``'s comparison ``op``, which marks both sides as deciding control flow."""
    base = getattr(kind, op)

    def compare(self: _Tracked, other: Any) -> Any:
        if self._use("a comparison") and op in DUNDER_TESTS and isinstance(other, (int, float)):
            self._test(DUNDER_TESTS[op], other)
        if isinstance(other, _Tracked):  # ``a.out_channels == b.out_channels``: both decide
            other._use("a comparison")
        out = base(self, other)
        if out is NotImplemented and kind in (int, float) and isinstance(other, (torch.SymInt, torch.SymFloat)):
            return getattr(other, _SWAPPED[op])(int.__int__(self) if kind is int else float.__float__(self))  # ``s > n``
        return out

    return compare


# ``a < b`` is ``b > a``: the comparison a SymInt makes with the plain value it takes
_SWAPPED = {
    "__eq__": "__eq__",
    "__ne__": "__ne__",
    "__lt__": "__gt__",
    "__le__": "__ge__",
    "__gt__": "__lt__",
    "__ge__": "__le__",
}


def _convert(op: str, kind: str, number: type = int) -> Any:
    base = getattr(number, op)
    loses = number is float and op != "__bool__"  # a plain number nobody follows

    def convert(self: _Tracked, *args: Any) -> Any:
        if loses and self.control is None and not by_user(1):  # outside any call ``Reaching`` classified
            self._size(SizeUse(f"a conversion in {caller(sys._getframe(1))}"))
        if op == "__float__" and number is int and any(s[0] == LENGTH for s in self._sites) and by_user(1):
            self.derived = True  # ``float(h.size(-1))``: a number (Python makes any float plain), as under torch.fx
            return base(self)
        if op == "__bool__" and truth_free(self) and by_user(1):
            return base(self)  # no decision: its fate is its other uses' (``size_flow``: ``if n:`` is no use)
        if self._use(kind) and op == "__bool__":
            self._test("truth")
        return base(self, *args)

    return convert


def _hashed(kind: type) -> Any:
    """``kind``'s hash, which the model's code takes as a value we cannot follow (``hash(n)``,
    ``{16: 1.0}.get(n)``, ``n in {32, 64}``): a use."""
    base = kind.__hash__

    def hash_(self: _Tracked) -> int:
        if by_user(1):
            self._use("a hash or a lookup")
        return base(self)

    return hash_


def _text(op: str, kind: type) -> Any:
    """``kind``'s ``str``/``repr``/``format``: text made of the read by the model's code is a use
    unless it is only shown (``size_flow.converted_nowhere``: print, trusted logging, dropped)."""
    base = getattr(kind, "__repr__" if op == "__str__" else op)
    plain = {int: int.__int__, float: float.__float__}.get(kind, lambda t: tuple(tuple.__iter__(t)))

    def text(self: _Tracked, *args: Any) -> Any:
        if by_user(1) and not converted_nowhere(sys._getframe(1), sinks_now(), self._log.sinks):
            self._use("a conversion to text")
        return base(plain(self), *args)  # the plain value's text: no second hook

    return text


def _arith(op: str, kind: type = int) -> Any:
    base = getattr(kind, op)

    def arith(self: _Tracked, *other: Any) -> Any:
        out = base(self, *other)
        if out is NotImplemented and kind is int and len(other) == 1 and type(other[0]) is float:
            out = getattr(float, op)(float(int.__int__(self)), other[0])  # type: ignore[arg-type]  # ``n * 0.5``
        if out is NotImplemented:  # ``n * h``: the Proxy's reflected op holds ``n``
            return _symbolic(self, op, other)
        if not by_user(1):
            self._use(VALUE)  # torch's own arithmetic
            return out
        return tracked(out, (self, *other), _derived_origin(self, base, other) if isinstance(out, int) else None)

    return arith


def truth_free(t: _Tracked) -> bool:
    """Is ``t`` a count read as it is (a length, a layer's or module's size attribute, ``n * 1``),
    whose truth no pruning flips (a count keeps >= 1 channel; a 0 is no group's)? ``n - 1`` is
    not (0 at one channel), nor a float."""
    return isinstance(t, SizeRead) and t.exact


def tracked(out: Any, inputs: tuple[Any, ...], origin: Origin | None = None) -> Any:
    """``out``, computed by the model's code from ``inputs``, as a tracked value where it is a
    number made from tracked ones (each then ``derived``); otherwise ``out`` itself, and a
    tracked input decided it (``bool``, a tuple: ``math.isclose``, ``divmod``)."""
    given = [v for v in inputs if isinstance(v, _Tracked)]
    if not given:
        return out
    log = given[0]._log
    sites = frozenset().union(*(v._sites for v in given))
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        for v in given:
            v._use("a conversion")
        return out
    for v in given:
        v.derived = True
    if not isinstance(out, int):
        return SizeFloat(out, sites, log)
    made = SizeRead(out, sites, log, origin)
    made.exact = identity(origin)
    return made


def _symbolic(value: _Tracked, op: str, other: tuple[Any, ...]) -> Any:
    """``bsz * self.num_heads`` with ``bsz`` a ``torch.SymInt`` (``torch.export``'s dynamic
    batch): torch's symbolic arithmetic takes exact ints only, so it gets the plain value and the
    read counts as reached (the traced size holds it). Anything else: ``NotImplemented``."""
    if len(other) != 1 or not isinstance(other[0], (torch.SymInt, torch.SymFloat)):
        return NotImplemented
    value._reach()
    mirror = f"__{op[3:]}" if op.startswith("__r") else f"__r{op[2:]}"  # n * s -> s.__rmul__(n)
    plain = int.__int__(value) if isinstance(value, int) else float.__float__(value)  # type: ignore[arg-type]
    return getattr(other[0], mirror)(plain)


def _derived_origin(value: _Tracked, base: Callable[..., Any], other: tuple[Any, ...]) -> Origin | None:
    """``base(value, *other)`` as a function of ``value``'s one attribute (None where another
    tracked value takes part: two attributes decide)."""
    if value._origin is None or any(isinstance(o, _Tracked) for o in other):
        return None
    site, first, fn = value._origin
    plain = tuple(other)
    return site, first, lambda v: base(fn(v), *plain)


for _op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
    setattr(SizeRead, _op, _compare(int, _op))
for _op, _kind in (("__bool__", "a truth test"), ("__int__", "a conversion"), ("__float__", "a conversion"),
                   ("__index__", "an index"), ("__round__", "a conversion")):  # fmt: skip
    setattr(SizeRead, _op, _convert(_op, _kind))
for _op in ("add", "sub", "mul", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor", "truediv", "divmod"):
    setattr(SizeRead, f"__{_op}__", _arith(f"__{_op}__"))
    setattr(SizeRead, f"__r{_op}__", _arith(f"__r{_op}__"))
for _op in ("__neg__", "__pos__", "__abs__", "__invert__", "__trunc__", "__floor__", "__ceil__"):
    setattr(SizeRead, _op, _arith(_op))


class SizeFloat(_Tracked, float):
    """A float the model's code computed from size reads (``self.head_dim ** -0.5``): tracked as
    a ``SizeRead`` is; the graph holding it, or torch's code taking it, uses it as a number."""

    def __new__(cls, value: float, sites: frozenset[Site], log: _Log) -> SizeFloat:
        obj = float.__new__(cls, value)
        obj._init(sites, log)
        return obj

    def _reach(self) -> None:
        """torch's code took it: a number that changes with the count (``VALUE``)."""
        self.reached = True
        if self.control is None:
            self.control = VALUE

    def _taken(self, kind: str) -> None:
        """torch's code checked it (``if scale_factor``, ``p < 0``: it keeps the number, whose
        use is yet to come), else took it as a number."""
        if kind in ("a comparison", "a truth test"):
            self.reached = True
        else:
            self._reach()

    def __fx_create_arg__(self, tracer: Any) -> SizeFloat:
        """What torch.fx stores in a node's arguments (``q * (self.head_dim ** -0.5)``): itself,
        which ``size_reads.finish`` makes a ``ReadFloat`` for ``number_uses`` to classify."""
        self.reached = True
        return self

    def __reduce__(self) -> tuple:
        return float, (float.__float__(self),)

    def __deepcopy__(self, memo: dict) -> float:
        return float.__float__(self)

    def __copy__(self) -> float:
        return float.__float__(self)


for _op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
    setattr(SizeFloat, _op, _compare(float, _op))
for _op in ("__bool__", "__int__", "__float__", "__round__", "__trunc__", "__floor__", "__ceil__"):
    setattr(SizeFloat, _op, _convert(_op, "a truth test" if _op == "__bool__" else "a conversion", float))
for _op in ("add", "sub", "mul", "floordiv", "mod", "pow", "truediv", "divmod"):
    setattr(SizeFloat, f"__{_op}__", _arith(f"__{_op}__", float))
    setattr(SizeFloat, f"__r{_op}__", _arith(f"__r{_op}__", float))
for _op in ("__neg__", "__pos__", "__abs__"):
    setattr(SizeFloat, _op, _arith(_op, float))


class SizeTuple(_Tracked, tuple):
    """A tuple of ints (``normalized_shape``) read by the model's code while traced."""

    def __new__(cls, value: tuple[int, ...], sites: frozenset[Site], log: _Log) -> SizeTuple:
        obj = tuple.__new__(cls, value)
        obj._init(sites, log)
        return obj

    def __getitem__(self, i: Any) -> Any:
        out = tuple.__getitem__(self, i)
        if not by_user(1):
            self.reached = True
            return out
        self.derived = True
        return SizeRead(out, self._sites, self._log) if isinstance(out, int) else SizeTuple(out, self._sites, self._log)

    def __iter__(self) -> Iterator[Any]:
        if not by_user(1):
            self.reached = True
            return tuple.__iter__(self)
        self.derived = True
        return iter([SizeRead(v, self._sites, self._log) for v in tuple.__iter__(self)])

    def __fx_create_arg__(self, tracer: Any) -> tuple[SizeRead, ...]:
        """What torch.fx stores for it in a node's arguments (``view(self.bias_shape)``,
        ``F.layer_norm(x, self.normalized_shape)``): its elements, each a read of the same
        attribute, which ``finish`` records as one tuple. torch.fx would otherwise rebuild it
        by ``type(self)(elements)``, which fails, and the model would leave the torch.fx path."""
        self.derived = True
        return tuple(SizeRead(v, self._sites, self._log) for v in tuple.__iter__(self))

    def __len__(self) -> int:  # the number of axes never changes with pruning
        self.derived = self.derived or by_user(1)
        return tuple.__len__(self)

    def __reduce__(self) -> tuple:
        return tuple, (tuple(self),)

    def __deepcopy__(self, memo: dict) -> tuple:
        return tuple(self)

    def __copy__(self) -> tuple:
        return tuple(self)


for _op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
    setattr(SizeTuple, _op, _compare(tuple, _op))


def _contains(self: SizeTuple, other: Any) -> bool:
    """``x in t``: a comparison, except ``0 in t`` (LongT5's ``if 0 in output_shape``), which a
    count no pruning makes 0 never flips: only its computed elements decide (``n // 4 == 0``)."""
    values = tuple(tuple.__iter__(self))
    if type(other) is int and other <= 0 and by_user(1):
        for v in values:
            if isinstance(v, _Tracked) and not truth_free(v):
                v._use("a comparison")
        return other in tuple(int.__int__(v) if isinstance(v, SizeRead) else v for v in values)
    self._use("a comparison")
    if isinstance(other, _Tracked):
        other._use("a comparison")
    return tuple.__contains__(self, other)


SizeTuple.__contains__ = _contains  # type: ignore[method-assign,assignment]


for _cls, _kind in ((SizeRead, int), (SizeFloat, float), (SizeTuple, tuple)):
    _cls.__hash__ = _hashed(_kind)  # type: ignore[method-assign]
    for _op in ("__str__", "__repr__", "__format__"):
        setattr(_cls, _op, _text(_op, _kind))
