"""The forwards a model may take besides the one traced first (eval mode; torch.fx in the
caller's autograd mode, torch.export with autograd off): in train mode, with autograd on or
off, under ``torch.inference_mode()``, where the model's code asks about them.

What the code asks is found two ways. While traced, the model's own calls of
``torch.is_grad_enabled()`` and ``torch.is_inference_mode_enabled()`` (as ``torch.*`` or
``torch._C.*``) are recorded (on the output node: ``GRAD_MODE_READ``), and each new trace (the
train forward reaches ``self.training and torch.is_grad_enabled()``) may ask for more. And the
code is read, for what no patch sees: those functions bound under a name of the code's own
(``from torch import is_grad_enabled as on``, a static method), ``training`` in any method of
the model's layer classes outside torch.nn, and, in code the forward reaches through functions,
modules and classes (``utils.in_inference()``), the autograd attributes a branch may test
(``h.requires_grad``, ``h.grad_fn``: only torch.export can branch on them)."""

from __future__ import annotations

import builtins
import dis
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import product
from types import CodeType, FunctionType, ModuleType
from typing import Any, Generic, Literal, TypeVar

import torch
import torch.fx as fx
from torch import nn

from .meta import GRAD_MODE_READ, is_exported
from .trace_mode import MODULE_KEYS
from .user_code import by_user

__all__ = [
    "Autograd",
    "Mode",
    "autograd_mode",
    "FORMATS",
    "code_reads",
    "one_code_scan",
    "other_modes",
    "recording_grad_reads",
    "traced_modes",
]

Autograd = Literal["on", "off", "inference"]
_INFERENCE = "is_inference_mode_enabled"
_QUERIES = ("is_grad_enabled", _INFERENCE)  # torch's functions, patched while traced
_TESTS = ("requires_grad", "grad_fn")  # a tensor's attributes that follow autograd on/off
_T = TypeVar("_T")
_BUILTINS = vars(builtins)  # what a name the module does not bind is
FORMATS = "<f-string>"  # the name ``code_reads`` gives a formatted value
_QUERY_FUNCTIONS = tuple(getattr(torch, n) for n in _QUERIES)


@dataclass(frozen=True)
class Mode:
    """A forward to trace besides the first (``trace_graph``'s ``train`` and ``autograd``); its
    axis-graph nodes get the prefix ``train:``, ``off:``, ``train+inference:``, ..."""

    train: bool
    autograd: Autograd

    @property
    def prefix(self) -> str:
        return "+".join(["train"] * self.train + [self.autograd]) + ":"


@contextmanager
def autograd_mode(state: Autograd) -> Iterator[None]:
    """Autograd in ``state`` (out of inference mode for ``"on"`` and ``"off"``)."""
    with torch.inference_mode(state == "inference"), torch.set_grad_enabled(state == "on"):
        yield


def other_modes(model: nn.Module, traced: list[fx.Graph]) -> list[Mode]:
    """The modes whose forward may differ from ``traced[0]``'s (``trace_graph``'s eval forward in
    the caller's autograd mode, or with autograd off under torch.export): each combination of
    train or eval (where the code reads ``training``; torch.fx only, an exported graph is the
    eval forward's) and the autograd states it asks about (while any of ``traced`` was traced,
    or in its code), but the first's own."""
    exported = is_exported(traced[0])
    now: Autograd = "inference" if torch.is_inference_mode_enabled() else "on" if torch.is_grad_enabled() else "off"
    start: Autograd = "off" if exported else now
    # a plain ``torch.is_grad_enabled()`` is seen while traced, where the forward calls it
    read = code_reads(model, frozenset(_TESTS), anywhere=frozenset({"training"}), functions=_QUERY_FUNCTIONS)
    for graph in traced:
        output = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
        read |= set(output.meta.get(GRAD_MODE_READ, ()) if output is not None else ())
    states: set[Autograd] = {start}
    # ``h.requires_grad``, ``h.grad_fn is None``: a traced value answers as the tensor would in each mode (``SizeProxy``)
    if read & {*_QUERIES, *_TESTS}:
        states |= {"on", "off"}
    if _INFERENCE in read:
        states.add("inference")
    trains = (False, True) if not exported and "training" in read else (False,)
    order: tuple[Autograd, ...] = ("on", "off", "inference")
    return [Mode(t, a) for t, a in product(trains, sorted(states, key=order.index)) if (t, a) != (False, start)]


def traced_modes(model: nn.Module, first: fx.Graph, trace: Callable[[Mode], fx.Graph]) -> list[tuple[Mode, fx.Graph]]:
    """``trace`` of each mode of ``other_modes``, and of those the new traces ask about in turn
    (the train forward reaches ``self.training and torch.is_grad_enabled()``'s question)."""
    done: list[tuple[Mode, fx.Graph]] = []
    while todo := [m for m in other_modes(model, [first, *(g for _, g in done)]) if m not in {d for d, _ in done}]:
        done += [(mode, trace(mode)) for mode in todo]
    return done


@contextmanager
def recording_grad_reads(read: set[str]) -> Iterator[None]:
    """While active, the model's own calls of ``torch.is_grad_enabled()`` and
    ``torch.is_inference_mode_enabled()`` (as ``torch.*`` or ``torch._C.*``) add the function's
    name to ``read``; torch's and ours do not."""
    saved = {(owner, name): getattr(owner, name) for owner in (torch, torch._C) for name in _QUERIES}

    def recorded(name: str, fn: Any) -> Any:
        def query() -> bool:
            if by_user(1):
                read.add(name)
            return fn()

        return query

    try:
        for (owner, name), fn in saved.items():
            setattr(owner, name, recorded(name, fn))
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


def code_reads(
    model: nn.Module, names: frozenset[str], *, anywhere: frozenset[str] = frozenset(), functions: Iterable[Any] = ()
) -> set[str]:
    """Which of ``names`` the code the model's forward reaches names (``forward``, ``__call__``,
    what they call, through modules and classes: a ``freeze()`` that sets ``p.requires_grad`` is
    no branch of the forward), ``anywhere`` names in any method of its layers (``__init__`` aside),
    and which of ``functions`` that code calls by a name of its own (an alias:
    ``from torch import is_grad_enabled as on``; counted by ``__name__``)."""
    scan = _scan(model)
    return (scan.reached & names) | (scan.anywhere & anywhere) | {f.__name__ for f in functions if id(f) in scan.reached_values}


@contextmanager
def one_code_scan() -> Iterator[None]:
    """While active, models whose layers start from the same functions share one scan of the
    code (a plan's or a prune's traces, a pruned copy: the code does not change meanwhile)."""
    token = _SCANS.set(_Scans())
    try:
        yield
    finally:
        _SCANS.reset(token)


@dataclass(frozen=True)
class _Scan:
    reached: frozenset[str]  # names in the code a call of a layer runs
    anywhere: frozenset[str]  # names in any method of the layers
    reached_values: frozenset[int]  # what the reached code's names are (by id; torch's and builtins live on)


@dataclass
class _Scans:
    """The scans of one ``one_code_scan``: by the functions they start from, and by model (held,
    so no id is reused meanwhile)."""

    by_starts: dict[tuple[tuple[FunctionType, type | None, bool], ...], _Scan] = field(default_factory=dict)
    by_model: dict[int, tuple[nn.Module, _Scan]] = field(default_factory=dict)


_SCANS: ContextVar[_Scans | None] = ContextVar("scans", default=None)


def _scan(model: nn.Module) -> _Scan:
    scans = _SCANS.get()
    if scans is None:
        return _walk(tuple(_user_functions(model)))
    if (held := scans.by_model.get(id(model))) is not None:
        return held[1]
    starts = tuple(_user_functions(model))
    if starts not in scans.by_starts:
        scans.by_starts[starts] = _walk(starts)
    scans.by_model[id(model)] = (model, scans.by_starts[starts])
    return scans.by_starts[starts]


def _walk(starts: tuple[tuple[FunctionType, type | None, bool], ...]) -> _Scan:
    """The code reached from ``starts`` (each a function, its class, whether a layer's call runs
    it) through the functions, modules and classes its names are."""
    run_by = _Memo(_run_by)  # a global dict named by many functions is walked once
    stored = _Memo(_stored)
    todo = [(f.__code__, f.__globals__, klass, reached) for fn, klass, reached in starts for f in run_by(fn)]
    seen: set[tuple[CodeType, bool]] = set()
    names: dict[bool, set[str]] = {True: set(), False: set()}
    values: set[int] = set()
    while todo:
        code, scope, klass, reached = todo.pop()
        if (code, reached) in seen:
            continue
        seen.add((code, reached))
        names[reached] |= set(code.co_names) | _spelled(code)
        owners = [klass] if klass is not None else []  # ``self.check()``: the class's own
        owners += [v for n in code.co_names if isinstance(v := scope.get(n), (ModuleType, type)) and not _torch(v)]
        for name in code.co_names:
            for value in (scope.get(name, _BUILTINS.get(name)), *(stored(o).get(name) for o in owners)):
                if reached:
                    values.add(id(value))
                    if isinstance(value, (list, tuple)) or type(value) is dict:  # ``fns["type"](h)``
                        values.update(map(id, value.values() if isinstance(value, dict) else value))
                if not _torch(value):
                    todo += [(f.__code__, f.__globals__, klass, reached) for f in run_by(value)]
        todo.extend((c, scope, klass, reached) for c in code.co_consts if isinstance(c, CodeType))
    return _Scan(frozenset(names[True]), frozenset(names[True] | names[False]), frozenset(values))


_FORMATS = frozenset(dis.opmap[op] for op in ("FORMAT_VALUE", "FORMAT_SIMPLE", "FORMAT_WITH_SPEC") if op in dis.opmap)


def _spelled(code: CodeType) -> set[str]:
    """Names the code spells as strings (``getattr(h, "__class__")``, ``attrgetter("__class__")``)
    and ``FORMATS`` where it formats a value (``f"{h}"``)."""
    spelled = {c for c in code.co_consts if isinstance(c, str) and c.isidentifier()}
    if not _FORMATS.isdisjoint(code.co_code[::2]):
        spelled.add(FORMATS)
    return spelled


class _Memo(Generic[_T]):
    """``fn``'s answers by the identity of its argument (held, so no id is reused meanwhile)."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.answers: dict[int, tuple[Any, _T]] = {}

    def __call__(self, value: Any) -> _T:
        if (hit := self.answers.get(id(value))) is None:
            hit = self.answers[id(value)] = (value, self.fn(value))
        return hit[1]


def _stored(owner: ModuleType | type) -> dict[str, Any]:
    """``owner``'s attributes as stored (no descriptor, no lazy module import runs): a static or
    class method's function, a property's getter; a class's own before its bases'."""
    stores = [vars(owner)] if isinstance(owner, ModuleType) else [vars(c) for c in reversed(owner.__mro__)]
    merged = {k: v for d in stores for k, v in d.items()}
    return {k: v.fget if isinstance(v, property) else getattr(v, "__func__", v) for k, v in merged.items()}


def _torch(obj: Any) -> bool:
    module = obj.__name__ if isinstance(obj, ModuleType) else getattr(obj, "__module__", None) or ""
    return module == "torch" or module.startswith("torch.")


_PLAIN = frozenset({int, float, bool, str, bytes, type(None), torch.dtype, torch.device})  # no function runs there


def _run_by(value: Any, depth: int = 2) -> list[FunctionType]:
    """The Python functions a call of ``value`` may run that its code does not name: the
    function itself, a closure's (``chk = lambda h: ...; return lambda s, h: chk(h)``), a
    decorator's wrapped one (``__wrapped__``), a partial's or a bound method's, the functions
    a list, tuple or dict holds (``self.fns[0](h)``)."""
    if depth < 0 or type(value) in _PLAIN:
        return []
    if isinstance(value, (list, tuple)) or type(value) is dict:
        return [f for v in (value.values() if isinstance(value, dict) else value) for f in _run_by(v, depth - 1)]
    if not isinstance(value, FunctionType):
        value = _attribute(value, "__func__") or _attribute(value, "func")
    if not isinstance(value, FunctionType):
        return []
    inner = [c.cell_contents for c in value.__closure__ or () if _filled(c)]
    inner.append(getattr(value, "__wrapped__", None))
    return [value, *(f for v in inner for f in _run_by(v, depth - 1))]


def _attribute(value: Any, name: str) -> Any:
    """``getattr(value, name, None)``, also where a lookup raises otherwise (an ``AttrDict``'s
    ``__getattr__ = dict.__getitem__`` raises ``KeyError``)."""
    try:
        return getattr(value, name, None)
    except Exception:  # noqa: BLE001 - whatever the object's own lookup raises
        return None


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _user_functions(model: nn.Module) -> Iterator[tuple[FunctionType, type | None, bool]]:
    """Methods (properties' getters too; ``__init__`` aside) of the model's layer classes outside
    torch.nn, each with its class and whether a call of the layer runs it (``forward``,
    ``__call__``), and what the layers hold as attributes (run, if called): functions, and the
    methods of helper objects of the user's classes (``self.helper.check(h)``)."""
    seen: set[type] = set()
    for m in model.modules():
        for k, v in vars(m).items():
            if k in MODULE_KEYS or isinstance(v, (bool, int, float, str, torch.Tensor)):
                continue
            yield from ((f, None, True) for f in _run_by(v))
            if _helper(v) and type(v) not in seen:
                seen.add(type(v))
                yield from ((f, None, True) for f, _ in _methods(type(v)))
        if type(m) in seen:
            continue
        seen.add(type(m))
        yield from ((f, type(m), name in ("forward", "__call__")) for f, name in _methods(type(m)))


def _methods(cls: type) -> Iterator[tuple[FunctionType, str]]:
    """The functions of ``cls`` and its bases outside torch.nn (``__init__`` aside), by name."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.nn") or klass is object:
            continue
        for name, attr in vars(klass).items():
            fn = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
            if name != "__init__":
                yield from ((f, name) for f in _run_by(fn))


def _helper(value: Any) -> bool:
    """An object of a user's class (not a layer, tensor, function, class, module or torch's)."""
    if isinstance(value, (nn.Module, torch.Tensor, type, ModuleType, FunctionType)) or not hasattr(value, "__dict__"):
        return False
    return type(value).__module__ not in ("builtins", "functools", "collections") and not _torch(type(value))
