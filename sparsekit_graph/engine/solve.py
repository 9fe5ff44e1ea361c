"""The group prox kernels every caller shares: Euclidean and diagonally conditioned.

A group's blocks are handed over as ``Piece``s: tensors laid out ``(A, R, P)`` where row ``r``
(``[:, r, :]``) belongs to block ``slots[r]`` (or block ``r``). Sums over rows are float32 pieces
combined per block in float64, then passed through ``reduce`` (an all-reduce across the shards of a
distributed group), so the same code serves ``SparseBlock.soft_threshold`` and ``ProximalStep``.

Conditioned prox of one block with elements ``w``, conditioner ``h > 0``, ``y = h w``: zero if
``||y|| <= tau``, else ``x = y / (h + mu)`` where ``mu > 0`` solves ``mu ||y / (h + mu)|| = tau``.
Newton runs on the secular form ``phi(mu) = 1/||y/(h + mu)|| - mu/tau`` (concave, nearly linear:
exact in one step when ``h`` is constant) from a first iterate the setup pass's sums give for free.
A step is accepted without another pass once its quadratic error bound is below ``rtol``. Blocks
near death (``||y|| < 2 tau``, where the root amplifies rounding) are solved in float64: Newton's
copy of its unsolved rows (made once half the blocks are solved) is float64, and such blocks solved
before it are re-solved from there in float64 on a copy of their own.

Speed: the work is memory- and kernel-bound. No full-size temporary is made: every pass reads ``w``
and ``h`` in cache-sized chunks into two reused buffers (``y = h w`` is recomputed there rather than
stored and read back), one sweep gives Newton's value and slope, Newton moves to copies of the rows
still unsolved once half the blocks are done, and the last pass multiplies ``w`` in place by
``h / (h + mu)``. The chunked kernels are in ``engine/chunks.py``, Newton's iteration in
``engine/newton.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import fused
from .chunks import dot, per_row, sum02, sumsq, walk, work_dtype
from .newton import TINY, Reduce, Tolerance, first_iterate, iterate, noop
from .piece import Piece, merge_small, pack

__all__ = ["Piece", "conditioned", "euclidean"]


# -- Euclidean ---------------------------------------------------------------------------------------
def euclidean(pieces: list[Piece], tau: Tensor, *, reduce: Reduce = noop, overlap: bool = False, floor: float = 0.0) -> Tensor:
    """``w <- max(0, 1 - tau/||w||) w`` for every block; returns the blocks it zeroed.

    Args:
        pieces: The group's rows (``h`` unused).
        tau: ``(blocks,)`` thresholds.
        reduce: Sums partial ``(blocks,)`` float64 sums across shards (identity by default).
        overlap: Pieces share elements: each piece's scaling multiplies what earlier ones wrote.
        floor: Blocks with ``||w|| <= tau + floor`` are zeroed.
    """
    size, f64 = tau.numel(), torch.float64
    pieces = pieces if overlap else merge_small(pieces)
    sums = tau.new_zeros(size, dtype=f64)
    for p in pieces:
        if p.counted and p.w.numel():
            p.add_to(sums, _row_sumsq(p.w))
    reduce(sums)
    norm = sums.sqrt()
    scale = (1 - tau.double() / norm.clamp_min(TINY)).clamp_(min=0)
    if floor > 0:
        scale = torch.where(norm > tau + floor, scale, 0.0)
    for p in pieces:
        if p.fetch is not None and overlap:
            p.w = p.fetch()
        _scale_rows(p.w, p.spread(scale))
        p.commit()
    return (scale == 0) & (sums > 0)


def _row_sumsq(x: Tensor) -> Tensor:
    """``(A, R, P) -> (R,)`` float64 sums of squares (float32 pieces: shards sum in any order)."""
    if x.shape[0] == 1 and x.dtype != torch.float64:  # one fused reduction, no temporary
        return torch.linalg.vector_norm(x[0], dim=1, dtype=torch.float32).double().square_()
    wide = x if x.dtype == torch.float64 else x.float()
    return sum02(wide * wide).double()  # one temporary, one GEMV: fewer kernels beat cache reuse here


def _scale_rows(x: Tensor, m: Tensor) -> None:
    """Multiply row ``r`` of ``(A, R, P)`` by ``m[r]``, in place."""
    mult = m.to(x.dtype)[None, :, None]
    if x.shape[0] > 1 and 1 < x.shape[2] <= 64:  # a short inner run (a 3x3 kernel): spelled out, it vectorises
        mult = mult.expand(1, *x.shape[1:]).contiguous()
    x.mul_(mult)


# -- conditioned -------------------------------------------------------------------------------------
def conditioned(
    pieces: list[Piece],
    tau: Tensor,
    *,
    reduce: Reduce = noop,
    overlap: bool = False,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int = 50,
    floor: float = 0.0,
) -> Tensor:
    """The conditioned prox of every block at once, written into the pieces; returns the zeroed blocks.

    Args:
        pieces: The group's rows and conditioners.
        tau: ``(blocks,)`` non-negative thresholds.
        reduce: Sums partial ``(k, blocks)`` float64 sums across shards (identity by default).
        overlap: Pieces share elements (one parameter on two axes): each piece's shrink
            ``h / (h + mu)`` multiplies what earlier pieces wrote.
        rtol: Relative accuracy of every block's ``mu`` (and so of ``x``).
        atol: Or an absolute accuracy of ``mu`` (0: relative only).
        max_iter: Newton steps at most.
        floor: Blocks with ``||h w|| <= tau + floor`` are zeroed.
    """
    size = tau.numel()
    pieces = pieces if overlap else merge_small(pieces, stack=True)
    t = tau.double()
    sums = t.new_zeros(6, size)  # the last row counts each block's pieces summed in float32 (on any rank)
    for p in pieces:
        if not (p.counted and p.w.numel()):
            continue
        p.add_to(sums[:5], _setup_pass(p))
        if not _precise(p):
            p.add_to(sums[5], sums.new_ones(p.w.shape[1]))
    reduce(sums)
    precise = sums[5] == 0
    norm, survive, active, lower, start = first_iterate(sums, t, floor)
    tol = Tolerance(rtol, atol, max_iter)
    mu, rho, exact, fine = iterate(pieces, _fused_pass, t, start, lower, ~active, reduce, tol, torch.float64)
    heavy = active & torch.where(precise, rho > _RHO_PRECISE, norm < 2 * t)
    if bool(heavy.any()):
        if exact is not None:  # solved in float64 since Newton's rows were copied: only their survival to check
            survive = _recheck(fine, heavy & exact, survive, t, reduce)
            heavy &= ~exact
        if bool(heavy.any()):
            mu, survive = _refine(pieces, heavy, survive, t, mu, lower, reduce, tol)
        active &= survive  # a block whose float64 norm is at most tau is zeroed
    # tau = 0: h / (h + 0) = 1 leaves a block exactly as it is; a dead one gets h / (h + inf) = 0
    mu = torch.where(active, mu, torch.where(survive, 0.0, math.inf))
    for p in pieces:
        _write(p, mu, overlap)
    for p in pieces:
        p._buf = []
    return ~survive & (sums[1] > 0)


def _setup_pass(p: Piece) -> Tensor:
    """``(5, R)`` float64: per row ``||y||^2``, ``||w||^2``, ``sum w^2/h``, ``sum w^2/h^2``, ``sum y^2 h``."""
    part = fused.setup_sums(p.w, p.h) if fused.wants(p.w) else None
    if part is not None:
        return part
    part = p.w.new_zeros(5, p.w.shape[1], dtype=torch.float64)
    for c, wc, hc, s1, s2 in walk(p, work_dtype(p)):
        part[1, c[1]] += sumsq(wc)  # ||w||^2
        part[2, c[1]] += dot(wc, torch.div(wc, hc, out=s1))  # sum w^2 / h
        part[3, c[1]] += sumsq(s1)  # sum w^2 / h^2
        y = torch.mul(hc, wc, out=s1)
        part[0, c[1]] += sumsq(y)  # ||y||^2
        part[4, c[1]] += dot(y, torch.mul(y, hc, out=s2))  # sum y^2 h
    return part


# With sums accumulated in float64 (compiled kernels; short float32 rows), their relative error
# ``e`` is the terms' float32 rounding and ``mu`` is off by ``e / (2 (1 - rho))``: float64 is needed
# only where ``rho`` is near 1. 0.6, not the 0.8 that e <= 2e-7 would allow: with 0.8 the largest
# error over bind(plan(resnet50)) was 8.3e-7 (eager: 1.5e-7). Otherwise where ``||y|| < 2 tau``.
_RHO_PRECISE = 0.6


def _precise(p: Piece) -> bool:
    """The piece's sums are accumulated in float64 (or are a few terms long)."""
    return not p.w.numel() or fused.wants(p.w) or (p.w.shape[0] == 1 and p.w.shape[2] <= 16)


def _fused_pass(p: Piece, mu_rows: Tensor) -> Tensor:
    """``(2, R)``: per row ``sum y^2/(h+mu)^2`` and ``sum y^2/(h+mu)^3``, one sweep over the chunk."""
    if fused.wants(p.w):
        part = fused.sweep_sums(p.w, p.h, mu_rows)
    else:
        part = fused.sweep_sums_exact(p.w, p.h, mu_rows) if fused.wants_exact(p.w, p.h) else None
    if part is not None:
        return part
    part = mu_rows.new_zeros(2, p.w.shape[1], dtype=torch.float64)
    mu_rows = mu_rows.to(work_dtype(p))
    for c, wc, hc, s1, s2 in walk(p, work_dtype(p)):
        d = torch.add(hc, per_row(mu_rows[c[1]], hc), out=s2)  # h + mu
        u = torch.mul(hc, wc, out=s1).div_(d)  # y / (h + mu)
        part[0, c[1]] += sumsq(u)
        part[1, c[1]] += dot(u, torch.div(u, d, out=s2))  # y^2 / (h + mu)^3
    return part


def _refine(
    pieces: list[Piece], heavy: Tensor, survive: Tensor, t: Tensor, mu: Tensor, lower: Tensor, reduce: Reduce, tol: Tolerance
) -> tuple[Tensor, Tensor]:
    """Blocks near death re-solved in float64 from ``mu`` (their rows copied out)."""
    fine = pack(pieces, heavy, torch.float64)
    survive = _recheck(fine, heavy, survive, t, reduce)
    return iterate(fine, _fused_pass, t, mu, lower, ~(heavy & survive), reduce, tol)[0], survive


def _recheck(fine: list[Piece], which: Tensor, survive: Tensor, t: Tensor, reduce: Reduce) -> Tensor:
    """``survive`` with the blocks ``which`` decided by their float64 norm (their rows are in ``fine``)."""
    norm2 = t.new_zeros(t.numel())
    for p in fine:
        p.add_to(norm2, sumsq(p.h * p.w))
    return torch.where(which, reduce(norm2).sqrt() > t, survive)


def _write(p: Piece, mu: Tensor, overlap: bool) -> None:
    """``w <- w h / (h + mu)`` in place: exactly ``w`` where ``mu = 0``, zero where ``mu = inf``."""
    if p.fetch is not None and overlap:
        p.w = p.fetch()
    dtype = work_dtype(p)
    w, m_rows = p.w, p.spread(mu).to(dtype)
    if fused.wants(w) and fused.write_shrink(w, p.h, m_rows):
        p.commit()
        return
    for c, wc, hc, s1, _ in walk(p, dtype):
        shrink = torch.div(hc, torch.add(hc, per_row(m_rows[c[1]], hc), out=s1), out=s1)
        target = w[c]
        if target.dtype == dtype:
            target.mul_(shrink)
        else:
            target.copy_(wc * shrink)
    p.commit()
