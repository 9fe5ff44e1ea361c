"""Where a group's elements live on this rank: segments (rows of the channel grid) and groups."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..engine import SparseBlock, View
from ..engine.batch import sync_free
from ..engine.block import _Part

__all__ = ["PartSegment", "ProxGroup", "RowSegment", "Segment", "is_dtensor", "local_tensor", "shares_storage"]


def local_tensor(t: Tensor) -> Tensor:
    """The rank-local tensor of a DTensor, else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def shares_storage(a: Tensor, b: Tensor) -> bool:
    """``a`` is a view into ``b``'s storage (rows handed out without a copy)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


class Segment:
    """One member's elements on this rank, as rows of its group's channel grid.

    Tensors passed in are laid out like the optimizer's parameter (the parameter itself, its
    gradient-shaped optimizer state); DTensors are read on their local shard.
    """

    param: Tensor  # the optimizer's parameter
    name: str  # the parameter's name, for errors
    slots: Tensor | None  # (R,) channel of each row; None: row i is channel i
    counted: bool  # adds to the partial sums (a replicated member counts on one rank only)
    size: int

    def sums(self, rows: Tensor) -> Tensor:
        """(R,) per-row values -> (size,) per-channel sums."""
        if self.slots is None:
            return rows
        return rows.new_zeros(self.size).index_add_(0, self.slots, rows)

    def spread(self, per_channel: Tensor) -> Tensor:
        """(size,) -> (R,)."""
        return per_channel if self.slots is None else per_channel[self.slots]

    def absmax(self) -> Tensor:
        """``(size,)`` largest absolute value per channel (0 where the segment has none)."""
        x = self.data()
        per_row = x.abs().amax(dim=(0, 2)).float() if x.numel() else x.new_zeros(x.shape[1], dtype=torch.float32)
        if self.slots is None:
            return per_row
        return per_row.new_zeros(self.size).scatter_reduce_(0, self.slots, per_row, "amax")

    def data(self, t: Tensor | None = None) -> Tensor:
        """``(A, R, P)``: row ``r`` of the segment is ``[:, r, :]``; a live view where possible, else a copy."""
        raise NotImplementedError

    def commit(self, x: Tensor) -> None:
        """Write ``x`` (from ``data()``, changed) back into the parameter if it is a copy."""
        raise NotImplementedError

    def zero(self, t: Tensor, mask: Tensor) -> None:
        raise NotImplementedError


class PartSegment(Segment):
    """A bound member: one part of an engine coupling, its grid flattened row-major.

    ``natural``: the member as a ``(pre, channels, block * post)`` view of its parameter (plan
    members with one channel axis), which the conditioned prox works on in place; without it,
    the part's rows are copied out and written back.
    """

    def __init__(self, part: _Part, param: Tensor, name: str, counted: bool = True, natural: View | None = None) -> None:
        self.part, self.spec, self.param, self.name, self.counted, self.natural = part, part.spec, param, name, counted, natural
        self.slots, self.size = None, math.prod(part.grid)

    def _window(self, t: Tensor) -> Tensor:
        return self.spec.view.window(local_tensor(t))

    def data(self, t: Tensor | None = None) -> Tensor:
        if self.natural is not None:
            return self.natural.data if t is None else self.natural.window(local_tensor(t))
        rows = self.part.rows(self.spec.data if t is None else self._window(t), dtype=None)
        return rows.contiguous().unsqueeze(0)  # contiguous: reducing a transposed view is 10-30x slower

    def commit(self, x: Tensor) -> None:
        if self.natural is None and not shares_storage(x, self.spec.data):
            self.part.write_rows(x[0])

    def zero(self, t: Tensor, mask: Tensor) -> None:
        rows = self.part.arp(self._window(t)) if self.natural is None else self.natural.window(local_tensor(t))
        if rows is not None and sync_free(mask.device):  # every row rewritten, nothing read back to the host
            rows.masked_fill_(mask[None, :, None], 0)
            return
        if rows is not None:  # only the dead rows are touched
            rows.index_fill_(1, mask.nonzero().squeeze(1), 0)
            return
        elements = self.spec.expand_blocks(self.part.from_grid(mask.reshape(self.part.grid)))
        self._window(t).masked_fill_(elements, 0)


class RowSegment(Segment):
    """A member on the sharded axis 0 of an FSDP2 parameter: its local rows, each mapped to a channel."""

    def __init__(self, param: Tensor, name: str, rows: Tensor, slots: Tensor, size: int) -> None:
        self.param, self.name, self.slots, self.size, self.counted = param, name, slots, size, True
        self.idx = rows  # local row indices, ascending
        n = rows.numel()
        first = int(rows[0]) if n else 0
        self.span = (first, first + n) if n and int(rows[-1]) == first + n - 1 else None

    def _2d(self, t: Tensor | None) -> Tensor:
        local = local_tensor(self.param if t is None else t)
        return local.reshape(local.shape[0], math.prod(local.shape[1:])) if local.ndim else local.reshape(1, 1)

    def _sel(self, t2d: Tensor) -> Tensor:
        return t2d[self.span[0] : self.span[1]] if self.span is not None else t2d.index_select(0, self.idx)

    def data(self, t: Tensor | None = None) -> Tensor:
        return self._sel(self._2d(t)).unsqueeze(0)

    def commit(self, x: Tensor) -> None:
        t2d = self._2d(None)
        if not shares_storage(x, t2d):
            t2d.index_copy_(0, self.idx, x[0])

    def zero(self, t: Tensor, mask: Tensor) -> None:
        t2d = self._2d(t)
        t2d.index_fill_(0, self.idx[self.spread(mask)], 0)


@dataclass
class ProxGroup:
    name: str
    size: int
    segments: list[Segment]
    weight: Tensor  # (size,) float32
    pg: Any  # process group the partial sums are all-reduced over, or None
    coupling: SparseBlock | None = None  # the engine coupling whose parts the segments are (whole tensors on this rank)

    def __post_init__(self) -> None:
        params = [id(s.param) for s in self.segments]
        self.overlap = len(set(params)) < len(params)  # one parameter on two axes: blocks share elements

    def reduce(self, t: Tensor, op: Any = None) -> Tensor:
        if self.pg is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op, group=self.pg)
        return t
