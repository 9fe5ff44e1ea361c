"""Express a member's channel positions as a strided pattern the engine can view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Layout", "strided_layout", "view_order"]


@dataclass(frozen=True)
class Layout:
    """``positions[i] == base + sum(i_k * strides[k])`` with ``i`` unravelled over ``sizes``."""

    base: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]


def strided_layout(positions: Sequence[int]) -> Layout | None:
    """The flattest strided layout of ``positions`` (1 or 2 axes, non-negative strides), or None."""
    q = np.asarray(positions, dtype=np.int64)
    n = len(q)
    if n == 1:
        return Layout(int(q[0]), (1,), (1,))
    step = int(q[1] - q[0])
    if step > 0 and np.array_equal(q, q[0] + step * np.arange(n)):
        return Layout(int(q[0]), (n,), (step,))
    for n1 in range(2, n):
        if n % n1:
            continue
        n2 = n // n1
        grid = q.reshape(n1, n2)
        s2 = int(grid[0, 1] - grid[0, 0]) if n2 > 1 else 1
        s1 = int(grid[1, 0] - grid[0, 0])
        if s1 < 0 or s2 < 0:
            continue
        if np.array_equal(grid, q[0] + s1 * np.arange(n1)[:, None] + s2 * np.arange(n2)[None, :]):
            return Layout(int(q[0]), (n1, n2), (s1, s2))
    return None


def view_order(channel_axes: int) -> list[int]:
    """Order of the view ``(pre, *channels, block, post)`` that puts channel axes first."""
    return [*range(1, channel_axes + 1), 0, channel_axes + 1, channel_axes + 2]
