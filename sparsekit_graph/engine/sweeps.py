"""One weight's passes of the fused Euclidean prox (``engine/batch.py``): sums of squares, then the write.

A parameter's uses are its rows ``x`` ``(A, R, P)`` in each coupling (row ``r`` = block ``r``); a weight
that is one coupling's rows and a later one's columns also has its ``(O, I, K)`` matrix: one read
gives ``M[o, i] = sum_k w[o, i, k]^2`` (a 1x1 weight is read again for the later coupling's weighted
sums instead of storing ``M``), and its write applies both couplings' factors chunk by chunk, the
earlier one's first. Squares go through one cache-sized scratch buffer per thread: no full-size
temporary. ``sums_split`` and ``writes_split`` spread the same kernels over worker threads of one
intra-op thread each (a big 3x3 weight's ``M`` and a big shared weight's write in row chunks), with
the one-thread path's bits.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import native
from .workers import Task, run_balanced

__all__ = ["CHUNK", "Param", "Scratch", "Use", "sums", "sums_split", "sumsq", "write", "writes_split"]

CHUNK = 1 << 19  # scratch elements on CPU (2 MiB of float32: L3 at 1 thread, a core's 1 MiB L2 each at 2; 1 MiB was ~4% slower)


@dataclass
class Use:
    """One coupling's rows of one parameter: ``x`` is ``(A, R, P)``, row ``r`` = block ``r``."""

    coupling: int
    x: Tensor


@dataclass
class Param:
    """A parameter and its uses; ``mat`` is its ``(O, I, K)`` view when it has two (rows, columns)."""

    uses: list[Use]
    mat: Tensor | None = None
    m: Tensor | None = None  # (O, I) float32 sums of squares over K, when K > 1
    factors: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # use -> (R,) scale: f64, f32, f32 squared


class Scratch:
    """One flat float32 buffer of a chunk's size, reused by every chunked kernel."""

    def __init__(self) -> None:
        self.buf: Tensor | None = None
        self.one: Tensor | None = None

    def get(self, n: int, like: Tensor) -> Tensor:
        if self.buf is None or self.buf.numel() < n or self.buf.device != like.device:
            self.buf = torch.empty(n, dtype=torch.float32, device=like.device)
        return self.buf[:n]

    def ones(self, n: int, like: Tensor) -> Tensor:
        """``n`` float32 ones (slices of one buffer)."""
        if self.one is None or self.one.numel() < n or self.one.device != like.device:
            self.one = torch.ones(max(n, 4096), dtype=torch.float32, device=like.device)
        return self.one[:n]


def _steps(rows: int, width: int, device: torch.device) -> list[slice]:
    """Row ranges of about ``CHUNK`` elements (one range off the CPU)."""
    step = rows if device.type != "cpu" else max(1, CHUNK // max(1, width))
    return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]


def sumsq(p: Param, j: int, scratch: Scratch) -> Tensor:
    """``(R,)`` float32 sums of squares of use ``j``'s rows, after the other use's scaling if it came first."""
    x = p.uses[j].x
    if p.mat is None:
        a, r, q = x.shape
        if a == 1:
            return torch.linalg.vector_norm(x[0], dim=1).square_()
        cols = _weighted_cols(x.reshape(a, r * q), None, scratch)  # (R P,)
        return cols if q == 1 else cols.view(r, q).sum(1)
    o, i, k = p.mat.shape
    row_use = x.shape[0] == 1
    other = p.factors.get(1 - j)  # the other use's scale, if its coupling came first
    if k > 1:
        if p.m is None:
            p.m = _block_sumsq(p.mat, scratch)  # (O, I)
        w2 = None if other is None else other[2]
        if row_use:
            return p.m.sum(1) if w2 is None else p.m @ w2
        return p.m.sum(0) if w2 is None else w2 @ p.m
    x2 = p.mat.view(o, i)
    if row_use:
        if other is None:
            return torch.linalg.vector_norm(x2, dim=1).square_()
        return _weighted_rows(x2, other[2], scratch)
    return _weighted_cols(x2, None if other is None else other[2], scratch)


def _block_sumsq(mat: Tensor, scratch: Scratch) -> Tensor:
    """``(O, I, K)`` -> ``(O, I)`` float32 sums over ``K``, one read, squares chunk by chunk."""
    o, i, k = mat.shape
    out = torch.empty(o, i, dtype=torch.float32, device=mat.device)
    if mat.is_contiguous() and native.enabled(out):
        native.m_sums(mat, out)
        return out
    ones = scratch.ones(k, mat)
    for s in _steps(o, i * k, mat.device):
        chunk = mat[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        torch.mv(sq.view(-1, k), ones, out=out[s].view(-1))
    return out


def _weighted_cols(x2: Tensor, weights: Tensor | None, scratch: Scratch) -> Tensor:
    """``(rows, cols)`` -> ``(cols,)`` float32 ``sum_r weights[r] x[r, c]^2`` (weights default 1)."""
    rows, width = x2.shape
    if native.enabled(x2):
        return native.weighted_cols(x2, weights)
    acc = torch.zeros(width, dtype=torch.float32, device=x2.device)
    w = scratch.ones(rows, x2) if weights is None else weights
    for s in _steps(rows, width, x2.device):
        chunk = x2[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        acc.addmv_(sq.T, w[s])
    return acc


def _weighted_rows(x2: Tensor, weights: Tensor, scratch: Scratch) -> Tensor:
    """``(rows, cols)`` -> ``(rows,)`` float32 ``sum_c x[r, c]^2 weights[c]``."""
    rows, width = x2.shape
    if native.enabled(x2):
        return native.weighted_rows(x2, weights)
    out = torch.empty(rows, dtype=torch.float32, device=x2.device)
    w = weights
    for s in _steps(rows, width, x2.device):
        chunk = x2[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        torch.mv(sq, w, out=out[s])
    return out


def write(p: Param, only: slice | None = None) -> None:
    """Every element times its scale factors, in one pass over the parameter (of a two-use
    weight, only rows ``only`` when given)."""
    if p.mat is None:
        (use,) = p.uses
        x, m = use.x, p.factors[0][1]
        mult = m[None, :, None]
        if x.shape[0] > 1 and 1 < x.shape[2] <= 64:  # a short inner run (a 3x3 kernel): spelled out, it vectorises
            mult = mult.expand(1, *x.shape[1:]).contiguous()
        x.mul_(mult)
        return
    o, i, k = p.mat.shape
    rows_first = p.uses[0].x.shape[0] == 1  # uses are in coupling order: scale as the calls in order do
    r, c = p.factors[0 if rows_first else 1][1], p.factors[1 if rows_first else 0][1]
    cols = c.repeat_interleave(k)[None] if k > 1 else c[None]  # (1, I K): the inner run is a whole row
    flat = p.mat.view(o, i * k)
    if native.enabled(flat):
        native.write_two(flat if only is None else flat[only], r if only is None else r[only], cols[0], rows_first)
        return
    rows = r[:, None]
    for s in [only] if only is not None else _steps(o, i * k, p.mat.device):  # the second factor while the chunk is in cache
        chunk = flat[s]
        if rows_first:
            chunk.mul_(rows[s]).mul_(cols)
        else:
            chunk.mul_(cols).mul_(rows[s])


_Task = Task[Scratch]


def _run(tasks: list[_Task], pool: ThreadPoolExecutor) -> None:
    run_balanced(tasks, pool, Scratch)


def sums(reads: list[tuple[Param, int]], scratch: Scratch) -> dict[int, Tensor]:
    return {id(p): sumsq(p, j, scratch) for p, j in reads}


def sums_split(reads: list[tuple[Param, int]], pool: ThreadPoolExecutor) -> dict[int, Tensor]:
    """``reads`` on the pool: a big 3x3 weight's ``M`` in row chunks, every other read whole."""
    got: dict[int, Tensor] = {}
    tasks: list[_Task] = []
    later: list[tuple[Param, int]] = []
    for p, j in reads:
        if p.mat is not None and p.mat.shape[2] > 1 and p.m is None and p.mat.numel() > CHUNK:
            o, i, k = p.mat.shape
            p.m = torch.empty(o, i, dtype=torch.float32)
            for s in _steps(o, i * k, p.mat.device):
                tasks.append((i * k * (s.stop - s.start), lambda sc, p=p, s=s: _block_sumsq_rows(p.mat, p.m, s, sc)))
            later.append((p, j))
        else:
            tasks.append((p.uses[j].x.numel(), lambda sc, p=p, j=j: got.__setitem__(id(p), sumsq(p, j, sc))))
    _run(tasks, pool)
    for p, j in later:  # M's row or column sums (small)
        got[id(p)] = sumsq(p, j, Scratch())
    return got


def _block_sumsq_rows(mat: Tensor, out: Tensor, s: slice, scratch: Scratch) -> None:
    """Rows ``s`` of ``_block_sumsq(mat)`` into ``out``."""
    k = mat.shape[2]
    chunk = mat[s]
    if chunk.is_contiguous() and native.enabled(out):
        native.m_sums(chunk, out[s])
        return
    sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
    torch.mv(sq.view(-1, k), scratch.ones(k, mat), out=out[s].view(-1))


def writes_split(writes: list[Param], pool: ThreadPoolExecutor) -> None:
    """``write`` of every parameter on the pool, big two-use weights in row chunks."""
    tasks: list[_Task] = []
    for p in writes:
        if p.mat is None or p.mat.numel() <= CHUNK:
            tasks.append((p.uses[0].x.numel(), lambda sc, p=p: write(p)))
            continue
        o, i, k = p.mat.shape
        for s in _steps(o, i * k, p.mat.device):
            tasks.append((i * k * (s.stop - s.start), lambda sc, p=p, s=s: write(p, s)))
    _run(tasks, pool)
