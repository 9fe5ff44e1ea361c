"""Under ``torch.export``: the size reads the model's code passes to torch, each classified.

``torch.export`` records a call with plain ints, so its graph cannot say which of its literals
were reads. While the forward is exported, ``Reaching`` (a torch function mode) sees every call
the model makes to torch and binds it to torch's argument names (``normalize.bind_call``): a
tracked number (``size_values``) at an argument that takes it as a value is reached; at one that
takes it as a size (``number_args.takes_as_size``) it pins the group the attribute counts. A
length the model's code reads (``h.shape``, ``h.size(1)``) is handed to it tracked
(``length_reads``); one in a slice (``h[:, : h.shape[1] // 2]``) is reached as an index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .fresh_sizes import note_fresh, sourced
from .length_reads import LengthTuple, is_length, read_lengths
from .normalize import Call, bind_call
from .number_args import SizeUse, takes_as_size
from .size_values import _Tracked

if TYPE_CHECKING:
    from .size_reads import _Log

__all__ = ["Reaching"]


class Reaching(TorchFunctionMode):
    """Classifies the tracked numbers passed to each torch function (see the module docstring)."""

    def __init__(self, log: _Log) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _classify(func, args, kwargs) if self.log.made else None
        out = func(*args, **kwargs)
        if out is NotImplemented:  # ``torch.sym_min(s, self.n)``: a SymInt takes exact ints only
            out = func(*_plain(args), **_plain(kwargs))
        note_fresh(func, call, out)
        return _axis_read(func, args, kwargs, read_lengths(func, out, self.log))


def _classify(func: Any, args: tuple, kwargs: dict) -> Call | None:
    """Each tracked number passed to ``func``, taken as a value (reached) or as a size
    (``number_args.takes_as_size``, by the argument's normalised name); the call, bound, where
    it took any."""
    given = _walk((args, kwargs))
    if not given:
        return None
    call = bind_call(func, args, kwargs)
    name = getattr(func, "__name__", type(func).__name__)
    for arg, value in call.args.items() if call.bound else ():
        for v in _walk(value):
            if takes_as_size(call.op, arg, v):
                v._size(SizeUse(f"argument {arg} of {name}"))
    for v in given:  # a value, an int the rules judge, or an argument of a call that did not bind
        if not call.bound and isinstance(v, float):
            v._size(SizeUse(f"an argument of {name}, which does not bind"))
        v._reach()
    return call


def _axis_read(func: Any, args: tuple, kwargs: dict, read: Any) -> Any:
    """``read`` (what ``read_lengths`` handed the model's code), marked with the tensor axis it
    is the length of (``fresh_sizes.sourced``): ``h.size(1)``, ``len(h)``; a whole shape
    (``LengthTuple``) keeps its tensor for the lengths taken from it."""
    if not isinstance(read, _Tracked) or not args or not isinstance(args[0], Tensor):
        return read
    if isinstance(read, LengthTuple):
        read.tensor = args[0]
    elif func is torch.Tensor.__len__:
        sourced(read, args[0], 0)
    elif func is torch._C.TensorBase.size and isinstance(dim := (args[1] if len(args) > 1 else kwargs.get("dim")), int):
        sourced(read, args[0], dim)
    return read


def _plain(a: Any) -> Any:
    """``a`` with each tracked number its plain value (through tuples, lists and dicts; a
    ``SizeTuple`` becomes a tuple)."""
    if isinstance(a, _Tracked) and isinstance(a, (int, float)):
        return int.__int__(a) if isinstance(a, int) else float.__float__(a)
    if isinstance(a, dict):
        return {k: _plain(v) for k, v in a.items()}
    if isinstance(a, _Tracked) or type(a) in (tuple, list):
        return (list if type(a) is list else tuple)(_plain(v) for v in (tuple.__iter__(a) if isinstance(a, tuple) else a))
    return a


def _walk(a: Any) -> list[_Tracked]:
    """The tracked numbers in ``a`` (through tuples, lists and dicts; a ``SizeTuple`` whole),
    and the lengths in its slices (``h[:, :n]``: an index the graph holds)."""
    found: list[_Tracked] = []
    todo = [a]
    while todo:
        x = todo.pop()
        if isinstance(x, _Tracked):
            found.append(x)
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (tuple, list)):
            todo.extend(tuple.__iter__(x) if isinstance(x, tuple) else x)
        elif isinstance(x, slice):
            found.extend(v for v in (x.start, x.stop, x.step) if isinstance(v, _Tracked) and is_length(v))
    return found
