"""``BlockCoupling``: several block specs pruned as one grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import CouplingError
from .block import BlockSpec, BlockValues, SparseBlock, _Part

__all__ = ["BlockCoupling"]


class BlockCoupling(SparseBlock):
    """Couples specs: block ``i`` is the union of block ``i`` of every spec.

    Each spec's grid is permuted by its order; the coupling's ``grid_shape`` is
    ``specs[0]``'s permuted grid. Every other permuted grid must equal it, or (an extension
    of the reference) match it after row-major flattening when the two differ only in
    singleton axes or one of them is a single non-singleton axis.

    Args:
        specs: The coupled specs (kept in this order in ``.specs``).
        orders: One permutation of grid axes per spec; empty or ``None`` means identity.
        name: Optional label used in errors and reprs.
    """

    def __init__(
        self,
        specs: Sequence[BlockSpec],
        orders: Sequence[Sequence[int] | None] | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name
        self._specs = list(specs)
        if not self._specs:
            raise CouplingError(f"{self._label()}: needs at least one spec")
        for i, s in enumerate(self._specs):
            if not isinstance(s, BlockSpec):
                raise CouplingError(f"{self._label()}: specs[{i}] is a {type(s).__name__}, not a BlockSpec")
        orders = list(orders or [None] * len(self._specs))
        if len(orders) != len(self._specs):
            raise CouplingError(f"{self._label()}: {len(orders)} orders for {len(self._specs)} specs")
        self.orders = [_normalize_order(o, s, self._label()) for o, s in zip(orders, self._specs)]
        ref = _permuted(self._specs[0], self.orders[0])
        self._grid = ref
        for s, o in zip(self._specs[1:], self.orders[1:]):
            got = _permuted(s, o)
            if not _alignable(got, ref):
                raise CouplingError(
                    f"{self._label()}: spec {s.name or '<unnamed>'} has grid {got} after order {o}, "
                    f"which does not match {ref} of spec {self._specs[0].name or '<unnamed>'}"
                )
        self._part_list = [_Part(s, o, ref) for s, o in zip(self._specs, self.orders)]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self._grid

    @property
    def specs(self) -> list[BlockSpec]:
        return list(self._specs)

    @property
    def data(self) -> dict[BlockSpec, Tensor]:
        """Live view tensor of every spec."""
        return {s: s.data for s in self._specs}

    def _parts(self) -> list[_Part]:
        return self._part_list

    def _values(self, values: BlockValues) -> dict[BlockSpec, Tensor]:
        if values is None:
            return {s: s.data for s in self._specs}
        if not isinstance(values, Mapping):
            raise CouplingError(f"{self._label()}: values must be a mapping spec -> tensor")
        out: dict[BlockSpec, Tensor] = {}
        for s in self._specs:
            if s not in values:
                raise CouplingError(f"{self._label()}: no tensor given for spec {s.name or repr(s)}")
            out.update(s._values(values[s]))
        return out

    @torch.no_grad()
    def block_view(self, values: BlockValues = None, reorder: bool = True, merge: bool = False) -> Tensor:
        """(grid..., numel_per_block): every spec's block elements concatenated (a copy)."""
        resolved = self._values(values)
        rows = [p.rows(resolved[p.spec], dtype=None) for p in self._part_list]
        return torch.cat(rows, dim=1).reshape(*self._grid, -1)

    def __repr__(self) -> str:
        specs = ", ".join(repr(s) for s in self._specs)
        return f"BlockCoupling(grid_shape={self._grid}, name={self.name!r}, specs=[{specs}])"

    def __hash__(self) -> int:
        return hash(tuple(s.key for s in self._specs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockCoupling) and self._specs == other._specs and self.orders == other.orders


def _normalize_order(order: Sequence[int] | None, spec: BlockSpec, label: str) -> tuple[int, ...]:
    nd = len(spec.grid_shape)
    if order is None or len(order) == 0:
        return tuple(range(nd))
    o = tuple(int(i) % nd if -nd <= int(i) < nd else int(i) for i in order)
    if sorted(o) != list(range(nd)):
        raise CouplingError(f"{label}: order {tuple(order)} of spec {spec.name or '<unnamed>'} is not a permutation of {nd} axes")
    return o


def _permuted(spec: BlockSpec, order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(spec.grid_shape[i] for i in order)


def _alignable(got: tuple[int, ...], ref: tuple[int, ...]) -> bool:
    """Equal grids, or equal after dropping singletons, or one side a single non-singleton axis."""
    if got == ref:
        return True
    if math.prod(got) != math.prod(ref):
        return False
    g, r = [n for n in got if n != 1], [n for n in ref if n != 1]
    return g == r or len(g) <= 1 or len(r) <= 1
