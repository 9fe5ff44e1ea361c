"""Write-through strided windows over a parameter's storage."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ..errors import ShapeMismatchError, SparseKitError

__all__ = ["View", "interleave"]


class View:
    """A strided window ``(shape, stride, offset)`` over ``param``'s storage.

    ``data`` is a live ``as_strided`` view: in-place ops on it write into the parameter.
    ``offset`` counts elements from the parameter's own first element, so a view can be a
    slice of rows or columns. Views are equal when they address the same elements of the
    same parameter the same way.

    Args:
        param: The tensor or parameter to look into.
        shape: Shape of the window (default: the parameter's shape).
        stride: Strides in elements (default: the parameter's strides).
        offset: Extra storage offset in elements (default 0).
    """

    __slots__ = ("offset", "param", "shape", "stride")

    def __init__(
        self,
        param: Tensor,
        shape: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        offset: int = 0,
    ) -> None:
        if isinstance(param, View):
            raise SparseKitError("view: wrap the parameter, not another View")
        self.param = param
        self.shape = tuple(int(s) for s in (param.shape if shape is None else shape))
        self.stride = tuple(int(s) for s in (param.stride() if stride is None else stride))
        self.offset = int(offset)
        if len(self.shape) != len(self.stride):
            raise ShapeMismatchError((len(self.shape),), (len(self.stride),), "view: stride must have one entry per dim")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise SparseKitError(f"view: negative shape/stride/offset {self.shape}/{self.stride}/{offset}")
        reach = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride) if n > 0)
        if self.numel() > 0 and reach >= _extent(param):
            raise ShapeMismatchError((_extent(param),), (reach + 1,), "view: window reaches past the end of the parameter")

    @classmethod
    def of(cls, source: Tensor | View) -> View:
        """Return ``source`` if it is a View, else a View of the whole tensor."""
        return source if isinstance(source, View) else cls(source)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def key(self) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
        """Identity of the addressed elements: (parameter id, shape, stride, offset)."""
        return (id(self.param), self.shape, self.stride, self.offset)

    @property
    def data(self) -> Tensor:
        """The live window; writes go to the parameter."""
        return self.window(self.param.data)

    @data.setter
    def data(self, value: Tensor) -> None:
        self.data.copy_(value)

    def window(self, values: Tensor) -> Tensor:
        """The same window over ``values``, a tensor laid out like the parameter."""
        if values.shape != self.param.shape:
            raise ShapeMismatchError(tuple(self.param.shape), tuple(values.shape), "view: values")
        if values.stride() != self.param.stride():
            if not self.param.is_contiguous():
                raise SparseKitError("view: values must share the parameter's memory layout")
            values = values.contiguous()
        return values.as_strided(self.shape, self.stride, values.storage_offset() + self.offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and self.key == other.key and self.param is other.param

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"View(shape={self.shape}, stride={self.stride}, offset={self.offset})"


def _extent(param: Tensor) -> int:
    """Number of storage elements the parameter spans from its first element."""
    if param.numel() == 0:
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(param.shape, param.stride()))


def interleave(t: Tensor, block: Sequence[int]) -> Tensor:
    """View ``t`` (s0, s1, ...) as (s0/b0, b0, s1/b1, b1, ...) without copying."""
    shape: list[int] = []
    stride: list[int] = []
    for n, b, s in zip(t.shape, block, t.stride()):
        shape += [n // b, b]
        stride += [b * s, s]
    return t.as_strided(shape, stride, t.storage_offset())
