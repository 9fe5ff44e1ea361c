"""Ops that are another op with some arguments fixed, in that op's spelling.

``torch.inner(a, b)`` contracts the last axes of both: ``tensordot(a, b, ([-1], [-1]))``.
``hsplit`` / ``vsplit`` / ``dsplit`` are ``tensor_split`` along axis 1 (0 for a 1-D tensor), 0
and 2. ``atleast_1d`` is ``flatten(x, 0, 0)`` (itself, or a 0-d tensor as ``(1,)``);
``atleast_2d`` / ``atleast_3d`` add axes of size 1 as torch does: ``unsqueeze`` where one is
missing, ``reshape(x, (1, -1, 1))`` for a 1-D tensor made 3-D, ``flatten(x, 0, 0)`` where none is.
Where the axes a form depends on are the input's rank, the traced value gives it. A dtype
conversion is ``to(dtype)`` however it is spelled: ``x.double()``, ``x.half()``,
``x.type(torch.float64)``, ``x.type("torch.DoubleTensor")``. On a real tensor conjugation is
the identity: ``x.mH``, ``x.adjoint()`` are ``x.mT``, ``x.H`` is ``x.T``, and ``x.conj()``,
``resolve_conj``, ``resolve_neg`` and ``conj_physical`` are ``x.contiguous()`` (same values).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from .schema_args import traced_value
from .tensor_types import dtype_named

__all__ = ["same_as"]


_Args = dict[str, Any]
_Case = Callable[[_Args, int], tuple[Hashable, _Args] | None]


def _inner(args: _Args, rank: int) -> tuple[Hashable, _Args]:
    rest = {("b" if k == "other" else k): v for k, v in args.items()}
    return torch.tensordot, rest | {"dims": ([-1], [-1])}


def _split_along(dim_of: Callable[[int], int]) -> _Case:
    """``hsplit(x, n)`` is ``tensor_split(x, n, dim)`` along the axis ``dim_of(rank)``."""

    def case(args: _Args, rank: int) -> tuple[Hashable, _Args] | None:
        return (torch.tensor_split, args | {"dim": dim_of(rank)}) if rank > 0 else None

    return case


def _atleast(k: int) -> _Case:
    """``atleast_{k}d(x)`` of one tensor (several give a tuple: left as they are)."""

    def case(args: _Args, rank: int) -> tuple[Hashable, _Args] | None:
        x = args.get("input")
        if rank < 0:
            return None
        if rank >= k:
            return torch.flatten, {"input": x, "start_dim": 0, "end_dim": 0}
        if rank == 0:
            return torch.reshape, {"input": x, "shape": (1,) * k}
        if k - rank == 1:  # (n,) -> (1, n); (a, b) -> (a, b, 1)
            return torch.unsqueeze, {"input": x, "dim": 0 if k == 2 else -1}
        return torch.reshape, {"input": x, "shape": (1, -1, 1)}  # (n,) -> (1, n, 1)

    return case


def _to_dtype(dtype: torch.dtype | None) -> _Case:
    """``x.double()`` is ``x.to(torch.float64)``; ``x.type(torch.float16)`` is ``x.to(torch.float16)``
    (``dtype`` None: read from the call). ``x.type()`` with no type returns the type's name, a
    string: left as it is. A type named by a string (``"torch.DoubleTensor"``) is its dtype: the
    device it also names changes no shape."""

    def case(args: _Args, rank: int) -> tuple[Hashable, _Args] | None:
        rest = {k: v for k, v in args.items() if k not in ("input", "dtype", "non_blocking")}
        want = args.get("dtype") if dtype is None else dtype
        want = dtype_named(want) or want  # ``"torch.DoubleTensor"``: float64 (and a device)
        if not isinstance(want, torch.dtype) or any(v is not None for v in rest.values()):
            return None
        new = {"input": args.get("input"), "dtype": want}
        return Tensor.to, new | ({"non_blocking": args["non_blocking"]} if "non_blocking" in args else {})

    return case


_CASES: dict[Hashable, _Case] = {
    torch.inner: _inner,
    torch.hsplit: _split_along(lambda rank: 1 if rank > 1 else 0),
    torch.vsplit: _split_along(lambda rank: 0),
    torch.dsplit: _split_along(lambda rank: 2),
    torch.atleast_1d: _atleast(1),
    torch.atleast_2d: _atleast(2),
    torch.atleast_3d: _atleast(3),
    Tensor.type: _to_dtype(None),
    Tensor.double: _to_dtype(torch.float64),
    Tensor.float: _to_dtype(torch.float32),
    Tensor.half: _to_dtype(torch.float16),
    Tensor.bfloat16: _to_dtype(torch.bfloat16),
}
# On a real tensor (complex ones keep their op): the op conjugation leaves.
_ON_REAL: dict[Hashable, Hashable] = {
    Tensor.mH: Tensor.mT, torch.adjoint: Tensor.mT, Tensor.H: Tensor.T, torch.conj: Tensor.contiguous,
    torch.resolve_conj: Tensor.contiguous, torch.resolve_neg: Tensor.contiguous, torch.conj_physical: Tensor.contiguous,
}  # fmt: skip
_ONE_OF = {torch.atleast_1d, torch.atleast_2d, torch.atleast_3d}  # bound as ``(*tensors)``


def same_as(op: Hashable, given: Mapping[str, Any], passed: frozenset[str]) -> tuple[Hashable, _Args, frozenset[str]] | None:
    """(op, arguments, passed names) of the op a bound call is a case of, or None."""
    try:
        case, real = _CASES.get(op), _ON_REAL.get(op)
    except TypeError:  # unhashable target
        return None
    if real is not None:
        value = traced_value(given.get("input"))
        if not isinstance(value, Tensor) or value.is_complex() or set(given) != {"input"}:
            return None
        return real, {"input": given["input"]}, frozenset({"input"})
    if case is None:
        return None
    args = dict(given)
    if op in _ONE_OF:
        tensors = args.pop("tensors", ())
        if len(tensors) != 1 or not isinstance(traced_value(tensors[0]), Tensor):
            return None
        args["input"] = tensors[0]
    value = traced_value(args.get("input"))
    found = case(args, value.ndim if isinstance(value, Tensor) else -1)
    if found is None:
        return None
    new_op, new = found
    return new_op, new, frozenset(k for k in new if k not in given or k in passed or k == "input")
