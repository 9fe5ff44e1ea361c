"""Pieces: one group's blocks as ``(A, R, P)`` row tensors, the unit every prox kernel works on.

Besides ``Piece`` itself: merging small one-slice pieces (BatchNorm scales and shifts) into one, and
``pack``, which copies the rows of chosen blocks out of many pieces into few ``(1, R, L)`` pieces,
one per row length ``L`` (Newton's last steps then sweep a handful of tensors, not every piece of
every group).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Piece", "merge_small", "pack"]

_TINY_GROUP = 1 << 14  # packed rows of one length up to this many elements join one piece of one-element rows


@dataclass
class Piece:
    """Rows of one group's blocks, ``(A, R, P)``: row ``r`` is ``[:, r, :]``.

    Attributes:
        w: The weights, written in place (a live view, or a copy that ``write`` stores back).
        h: The conditioner laid out like ``w`` (read only).
        slots: ``(R,)`` block of each row; None: row ``r`` is block ``start + r``.
        counted: Adds to the sums (False for a replica that another rank counts).
        fetch: Re-reads ``w`` (blocks that share elements: an earlier piece wrote them).
        write: Stores a changed copy back into the parameter.
        start: The block of row 0 when ``slots`` is None (several groups solved as one).
    """

    w: Tensor
    h: Tensor | None = None
    slots: Tensor | None = None
    counted: bool = True
    fetch: Callable[[], Tensor] | None = None
    write: Callable[[Tensor], None] | None = None
    start: int = 0
    _buf: list[Tensor] = field(default_factory=list, repr=False)

    def spread(self, per_block: Tensor) -> Tensor:
        """``(blocks,)`` -> ``(R,)``."""
        if self.slots is not None:
            return per_block[self.slots]
        rows = self.w.shape[1]
        return per_block if self.start == 0 and per_block.shape[-1] == rows else per_block[self.start : self.start + rows]

    def add_to(self, acc: Tensor, per_row: Tensor) -> None:
        """``acc[..., block] += per_row`` for ``(k, R)`` (or ``(R,)``) per-row sums, ``acc`` per block."""
        rows = self.w.shape[1]
        if self.slots is not None:
            acc.index_add_(acc.dim() - 1, self.slots, per_row)
        elif self.start == 0 and acc.shape[-1] == rows:
            acc += per_row
        else:
            acc[..., self.start : self.start + rows] += per_row

    def block_ids(self) -> Tensor:
        """``(R,)`` block of every row."""
        if self.slots is not None:
            return self.slots
        return torch.arange(self.start, self.start + self.w.shape[1], device=self.w.device)

    def commit(self) -> None:
        if self.write is not None:
            self.write(self.w)


_SMALL = 1 << 14  # pieces up to this many elements are solved together (per-piece overhead dominates them)


def merge_small(pieces: list[Piece], stack: bool = False) -> list[Piece]:
    """Small one-slice pieces with the same rows (BatchNorm scales and shifts, biases) as one copied
    piece whose rows are theirs side by side, written back to each; the rest as they are.

    Args:
        pieces: A solve's pieces.
        stack: Then also small pieces of different rows (several groups solved as one) with the
            same row length: one copied piece, their rows stacked (``slots``: each row's block).
    """
    groups: dict[tuple, list[Piece]] = {}
    rest = []
    for p in pieces:
        if p.w.shape[0] == 1 and p.w.numel() <= _SMALL and p.slots is None:
            key = (p.w.shape[1], p.start, p.counted, p.w.device, p.w.dtype, None if p.h is None else p.h.dtype)
            groups.setdefault(key, []).append(p)
        else:
            rest.append(p)
    merged = [small[0] if len(small) < 2 else _merged(small) for small in groups.values()]
    if not stack:
        return rest + merged
    by_length: dict[tuple, list[Piece]] = {}
    for p in merged:
        key = (p.w.shape[2], p.counted, p.w.device, p.w.dtype, None if p.h is None else p.h.dtype)
        by_length.setdefault(key, []).append(p)
    return rest + [same[0] if len(same) < 2 else _stacked(same) for same in by_length.values()]


def _stacked(small: list[Piece]) -> Piece:
    """One-slice pieces of one row length as one copy, rows stacked, written back to each."""

    def write(x: Tensor) -> None:
        start = 0
        for p in small:
            rows = p.w.shape[1]
            p.w.copy_(x[:, start : start + rows])
            p.commit()
            start += rows

    h = None if small[0].h is None else torch.cat([p.h for p in small], dim=1)
    slots = torch.cat([p.block_ids() for p in small])
    return Piece(torch.cat([p.w for p in small], dim=1), h, slots, small[0].counted, write=write)


def _merged(small: list[Piece]) -> Piece:
    def write(x: Tensor) -> None:
        start = 0
        for p in small:
            width = p.w.shape[2]
            p.w.copy_(x[:, :, start : start + width])
            p.commit()
            start += width

    h = None if small[0].h is None else torch.cat([p.h for p in small], dim=2)
    return Piece(torch.cat([p.w for p in small], dim=2), h, None, small[0].counted, write=write, start=small[0].start)


def pack(pieces: list[Piece], keep: Tensor, dtype: torch.dtype | None = None) -> list[Piece]:
    """Copies of the counted rows of ``pieces`` whose block is in ``keep`` (a ``(blocks,)`` mask),
    as ``(1, R, L)`` pieces (each row's elements side by side), one per row length and dtype.

    Args:
        pieces: Pieces with conditioners.
        keep: Which blocks to copy.
        dtype: The copies' dtype (default: each piece's own).
    """
    groups: dict[tuple, list[tuple[Piece, Tensor, Tensor]]] = {}
    wanted = keep.nonzero().squeeze(1)  # ascending block ids: a piece of consecutive blocks slices its own
    listed = wanted.tolist()  # one sync for every such piece (not a nonzero per piece)
    for p in pieces:
        if not (p.counted and p.w.numel()):
            continue
        assert p.h is not None, "pack: pieces need conditioners"
        if p.slots is None:
            lo, hi = bisect_left(listed, p.start), bisect_left(listed, p.start + p.w.shape[1])
            if lo == hi:
                continue
            slots = wanted[lo:hi]
            ids = slots - p.start if p.start else slots
        else:
            ids = p.spread(keep).nonzero().squeeze(1)
            if not ids.numel():
                continue
            slots = p.slots[ids]
        to = dtype or (torch.float64 if torch.float64 in (p.w.dtype, p.h.dtype) else torch.float32)
        groups.setdefault((p.w.shape[0] * p.w.shape[2], to), []).append((p, ids, slots))
    out: list[Piece] = []
    tiny: dict[torch.dtype, list[tuple[int, list[tuple[Piece, Tensor, Tensor]]]]] = {}
    for (length, to), rows in groups.items():
        n = sum(ids.numel() for _, ids, _ in rows)
        if n * length > _TINY_GROUP:
            w, h = _gather(rows, n * length, to)
            out.append(Piece(w.view(1, n, length), h.view(1, n, length), _slots(rows, 1)))
        else:  # one element per row: every row length's few rows in one piece
            tiny.setdefault(to, []).append((length, rows))
    for to, by_length in tiny.items():
        rows = [r for _, same in by_length for r in same]
        total = sum(length * ids.numel() for length, same in by_length for _, ids, _ in same)
        slots = torch.cat([_slots(same, length) for length, same in by_length])
        w, h = _gather(rows, total, to)
        out.append(Piece(w.view(1, total, 1), h.view(1, total, 1), slots))
    return out


def _gather(rows: list[tuple[Piece, Tensor, Tensor]], total: int, to: torch.dtype) -> tuple[Tensor, Tensor]:
    """The chosen rows of every piece side by side, ``(total,)`` each for ``w`` and ``h``, in ``to``:
    one selection and one converting copy per piece and tensor (no concatenation)."""
    first = rows[0][0].w
    w, h = (torch.empty(total, dtype=to, device=first.device) for _ in range(2))
    at = 0
    for p, ids, _ in rows:
        a, _, inner = p.w.shape
        k = ids.numel()
        cut = slice(at, at + k * a * inner)
        # select along dim 1, then transpose the few rows: index_select on the transposed view
        # copies the whole tensor first (400 us instead of 14 for 11 rows of a 1024x2048 weight)
        w[cut].view(k, a, inner).copy_(p.w.index_select(1, ids).transpose(0, 1))
        h[cut].view(k, a, inner).copy_(p.h.index_select(1, ids).transpose(0, 1))
        at = cut.stop
    return w, h


def _slots(rows: list[tuple[Piece, Tensor, Tensor]], length: int) -> Tensor:
    """The block of every copied row (``length > 1``: of every element, rows ``length`` long)."""
    slots = torch.cat([s for _, _, s in rows]) if len(rows) > 1 else rows[0][2]
    return slots.repeat_interleave(length) if length > 1 else slots
