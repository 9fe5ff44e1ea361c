"""Chunked elementwise work of the group prox (``engine/solve.py``): a piece ``(A, R, P)`` cut into
cache-sized chunks, two reused scratch buffers per piece, and sums over a chunk's dims 0 and 2."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .piece import Piece

__all__ = ["CHUNK", "buffers", "chunks", "dot", "per_row", "sum02", "sumsq", "walk", "work_dtype"]

CHUNK = 1 << 17  # elements per chunk on CPU: a few such buffers stay in a core's L2 cache


def chunks(x: Tensor) -> list[tuple[slice, slice]]:
    """Index pairs cutting ``(A, R, P)`` into pieces of about ``CHUNK`` elements (CPU caches; on an
    accelerator one piece: many small kernels cost more than the memory traffic they save)."""
    outer, rows, inner = x.shape
    if x.device.type != "cpu":
        return [(slice(None), slice(None))]
    if outer > 1:
        step = max(1, CHUNK // max(1, rows * inner))
        return [(slice(a, min(a + step, outer)), slice(None)) for a in range(0, outer, step)]
    step = max(1, CHUNK // max(1, inner))
    return [(slice(None), slice(a, min(a + step, rows))) for a in range(0, rows, step)]


def buffers(p: Piece, dtype: torch.dtype) -> list[Tensor]:
    """Two flat scratch buffers of one chunk's size, reused by every pass over ``p``."""
    if not p._buf or p._buf[0].dtype != dtype:
        outer, rows, inner = p.w.shape
        n = p.w.numel() if p.w.device.type != "cpu" else min(p.w.numel(), max(CHUNK, rows * inner if outer > 1 else inner))
        p._buf = [torch.empty(n, dtype=dtype, device=p.w.device) for _ in range(2)]
    return p._buf


def walk(p: Piece, dtype: torch.dtype) -> Iterator[tuple[tuple[slice, slice], Tensor, Tensor, Tensor, Tensor]]:
    """Per chunk ``c``: ``(c, w[c], h[c], scratch, scratch)``, all in ``dtype`` and shaped like the
    chunk; ``w[c]`` and ``h[c]`` are read-only."""
    bufs = buffers(p, dtype)
    for c in chunks(p.w):
        wc = p.w[c]
        shape, n = wc.shape, wc.numel()
        s1, s2 = bufs[0][:n].view(shape), bufs[1][:n].view(shape)
        hc = p.h[c] if p.h.dtype == dtype else p.h[c].to(dtype)
        yield c, wc if wc.dtype == dtype else wc.to(dtype), hc, s1, s2


def sumsq(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)``: sums of squares over dims 0 and 2."""
    if x.shape[0] == 1:
        return x[0, :, 0].square() if x.shape[2] == 1 else torch.linalg.vector_norm(x[0], dim=1).square_()
    return sum02(x * x)


def dot(x: Tensor, z: Tensor) -> Tensor:
    """``(a, r, p), (a, r, p) -> (r,)``: sums of products over dims 0 and 2."""
    if x.shape[0] == 1:
        return x[0, :, 0] * z[0, :, 0] if x.shape[2] == 1 else torch.linalg.vecdot(x[0], z[0], dim=1)
    return sum02(x * z)


def sum02(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)`` for a contiguous ``x``: a GEMV over dim 0 (a strided sum is far slower), then dim 2."""
    a, r, p = x.shape
    rows = (x.new_ones(1, a) @ x.reshape(a, r * p)).reshape(r, p)
    return rows.sum(1) if p > 1 else rows.reshape(r)


def work_dtype(p: Piece) -> torch.dtype:
    return torch.float64 if p.w.dtype == torch.float64 or (p.h is not None and p.h.dtype == torch.float64) else torch.float32


def per_row(m: Tensor, x: Tensor) -> Tensor:
    """``(R,)`` -> broadcastable over an ``(A, R, P)`` chunk ``x`` (spelled out along a short ``P``
    when ``A > 1``: a 3x3 kernel's inner loop then vectorises)."""
    m = m[None, :, None]
    return m.expand(1, *x.shape[1:]).contiguous() if x.shape[0] > 1 and 1 < x.shape[2] <= 64 else m
