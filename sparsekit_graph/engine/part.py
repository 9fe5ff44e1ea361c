"""One spec seen through a coupling (``_Part``), and its blocks handed to the prox kernels as a piece."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import solve
from .view import interleave

if TYPE_CHECKING:
    from .block import BlockSpec

__all__ = ["_Part", "_piece"]


class _Part:
    """One spec seen through a coupling: its grid permuted by ``order``, then reshaped."""

    __slots__ = ("_layouts", "grid", "inverse", "order", "permuted", "spec")

    def __init__(self, spec: BlockSpec, order: tuple[int, ...], grid: tuple[int, ...]) -> None:
        self.spec, self.order, self.grid = spec, order, grid  # grid: the owning block's grid_shape
        self.permuted = tuple(spec.grid_shape[i] for i in order)
        self.inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
        self._layouts: dict[tuple, tuple[list[int], list[int]] | None] = {}  # arp's answer per (shape, stride)

    def to_grid(self, t: Tensor) -> Tensor:
        """Spec-grid tensor -> block-grid tensor."""
        return t.permute(self.order).reshape(self.grid)

    def from_grid(self, t: Tensor) -> Tensor:
        """Block-grid tensor -> spec-grid tensor."""
        return t.reshape(self.permuted).permute(self.inverse)

    def rows(self, t: Tensor, dtype: torch.dtype | None = torch.float32) -> Tensor:
        """View-shaped tensor -> (numblk, numel_per_block) in block order (a copy)."""
        spec = self.spec
        nd = len(spec.shape)
        iv = interleave(t, spec.shape).permute(*(2 * i for i in self.order), *range(1, 2 * nd, 2))
        rows = iv.reshape(math.prod(self.grid), spec.numel_per_block())
        return rows if dtype is None else rows.to(dtype)

    def arp(self, t: Tensor) -> Tensor | None:
        """View-shaped ``t`` as ``(A, R, P)`` without a copy: row ``r`` (``[:, r, :]``) holds block
        ``r``'s elements in the order of ``rows``; None when the layout does not allow it."""
        key = (tuple(t.shape), t.stride())
        if key not in self._layouts:
            self._layouts[key] = self._arp_layout(t)
        layout = self._layouts[key]
        return None if layout is None else t.as_strided(*layout, t.storage_offset())

    def _arp_layout(self, t: Tensor) -> tuple[list[int], list[int]] | None:
        """Sizes and strides of ``arp(t)`` (they depend on ``t``'s shape and strides only)."""
        spec = self.spec
        grid_axes = [a for a in self.order if spec.grid_shape[a] > 1]
        if grid_axes != sorted(grid_axes):  # permuted grid axes: rows are not a strided walk
            return None
        iv = interleave(t, spec.shape)
        runs: list[list[int]] = []  # [role, size, stride]; role 0 = block before the grid, 1 = grid, 2 = after
        for i, (n, st) in enumerate(zip(iv.shape, iv.stride())):
            if n == 1:
                continue
            role = 1 if i % 2 == 0 else (2 if any(r[0] == 1 for r in runs) else 0)
            if runs and runs[-1][0] == role and runs[-1][2] == st * n:
                runs[-1][1:] = [runs[-1][1] * n, st]
            elif runs and runs[-1][0] == role or (runs and runs[-1][0] > role):
                return None  # two strided runs of one role, or a block axis between grid axes
            else:
                runs.append([role, n, st])
        out = {role: (n, st) for role, n, st in runs}
        return [out.get(r, (1, 0))[0] for r in range(3)], [out.get(r, (1, 0))[1] for r in range(3)]

    def write_rows(self, rows: Tensor) -> None:
        """Inverse of ``rows`` on the live parameter."""
        spec = self.spec
        nd = len(spec.shape)
        iv = interleave(spec.data, spec.shape).permute(*(2 * i for i in self.order), *range(1, 2 * nd, 2))
        iv.copy_(rows.view(iv.shape))


def _piece(part: _Part, h: Tensor | None = None) -> solve.Piece:
    """One part's blocks for the prox kernels: in place where the layout allows, else a copy."""
    w = part.arp(part.spec.data)
    hv = None if h is None or w is None else part.arp(h)
    if w is not None and (h is None or hv is not None):
        return solve.Piece(w, hv)

    def fetch() -> Tensor:
        return part.rows(part.spec.data, dtype=None).contiguous().unsqueeze(0)

    def write(x: Tensor) -> None:
        part.write_rows(x[0])

    hr = None if h is None else part.rows(h, dtype=None).contiguous().unsqueeze(0)
    return solve.Piece(fetch(), hr, fetch=fetch, write=write)
