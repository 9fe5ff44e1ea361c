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
``h / (h + mu)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from . import fused
from .piece import Piece, merge_small, pack

__all__ = ["Piece", "conditioned", "euclidean"]

_TINY = torch.finfo(torch.float32).tiny
_CHUNK = 1 << 17  # elements per chunk on CPU: a few such buffers stay in a core's L2 cache

Reduce = Callable[[Tensor], Tensor]


def _noop(t: Tensor) -> Tensor:
    return t


# -- chunked elementwise work ----------------------------------------------------------------------
def _chunks(x: Tensor) -> list[tuple[slice, slice]]:
    """Index pairs cutting ``(A, R, P)`` into pieces of about ``_CHUNK`` elements (CPU caches; on an
    accelerator one piece: many small kernels cost more than the memory traffic they save)."""
    outer, rows, inner = x.shape
    if x.device.type != "cpu":
        return [(slice(None), slice(None))]
    if outer > 1:
        step = max(1, _CHUNK // max(1, rows * inner))
        return [(slice(a, min(a + step, outer)), slice(None)) for a in range(0, outer, step)]
    step = max(1, _CHUNK // max(1, inner))
    return [(slice(None), slice(a, min(a + step, rows))) for a in range(0, rows, step)]


def _buffers(p: Piece, dtype: torch.dtype) -> list[Tensor]:
    """Two flat scratch buffers of one chunk's size, reused by every pass over ``p``."""
    if not p._buf or p._buf[0].dtype != dtype:
        outer, rows, inner = p.w.shape
        n = p.w.numel() if p.w.device.type != "cpu" else min(p.w.numel(), max(_CHUNK, rows * inner if outer > 1 else inner))
        p._buf = [torch.empty(n, dtype=dtype, device=p.w.device) for _ in range(2)]
    return p._buf


def _walk(p: Piece, dtype: torch.dtype) -> Iterator[tuple[tuple[slice, slice], Tensor, Tensor, Tensor, Tensor]]:
    """Per chunk ``c``: ``(c, w[c], h[c], scratch, scratch)``, all in ``dtype`` and shaped like the
    chunk; ``w[c]`` and ``h[c]`` are read-only."""
    bufs = _buffers(p, dtype)
    for c in _chunks(p.w):
        wc = p.w[c]
        shape, n = wc.shape, wc.numel()
        s1, s2 = bufs[0][:n].view(shape), bufs[1][:n].view(shape)
        hc = p.h[c] if p.h.dtype == dtype else p.h[c].to(dtype)
        yield c, wc if wc.dtype == dtype else wc.to(dtype), hc, s1, s2


def _sumsq(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)``: sums of squares over dims 0 and 2."""
    if x.shape[0] == 1:
        return x[0, :, 0].square() if x.shape[2] == 1 else torch.linalg.vector_norm(x[0], dim=1).square_()
    return _sum02(x * x)


def _dot(x: Tensor, z: Tensor) -> Tensor:
    """``(a, r, p), (a, r, p) -> (r,)``: sums of products over dims 0 and 2."""
    if x.shape[0] == 1:
        return x[0, :, 0] * z[0, :, 0] if x.shape[2] == 1 else torch.linalg.vecdot(x[0], z[0], dim=1)
    return _sum02(x * z)


def _sum02(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)`` for a contiguous ``x``: a GEMV over dim 0 (a strided sum is far slower), then dim 2."""
    a, r, p = x.shape
    rows = (x.new_ones(1, a) @ x.reshape(a, r * p)).reshape(r, p)
    return rows.sum(1) if p > 1 else rows.reshape(r)


def _work_dtype(p: Piece) -> torch.dtype:
    return torch.float64 if p.w.dtype == torch.float64 or (p.h is not None and p.h.dtype == torch.float64) else torch.float32


# -- Euclidean ---------------------------------------------------------------------------------------
def euclidean(pieces: list[Piece], tau: Tensor, *, reduce: Reduce = _noop, overlap: bool = False, floor: float = 0.0) -> Tensor:
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
    sumsq = tau.new_zeros(size, dtype=f64)
    for p in pieces:
        if p.counted and p.w.numel():
            p.add_to(sumsq, _row_sumsq(p.w))
    reduce(sumsq)
    norm = sumsq.sqrt()
    scale = (1 - tau.double() / norm.clamp_min(_TINY)).clamp_(min=0)
    if floor > 0:
        scale = torch.where(norm > tau + floor, scale, 0.0)
    for p in pieces:
        if p.fetch is not None and overlap:
            p.w = p.fetch()
        _scale_rows(p.w, p.spread(scale))
        p.commit()
    return (scale == 0) & (sumsq > 0)


def _row_sumsq(x: Tensor) -> Tensor:
    """``(A, R, P) -> (R,)`` float64 sums of squares (float32 pieces: shards sum in any order)."""
    if x.shape[0] == 1 and x.dtype != torch.float64:  # one fused reduction, no temporary
        return torch.linalg.vector_norm(x[0], dim=1, dtype=torch.float32).double().square_()
    wide = x if x.dtype == torch.float64 else x.float()
    return _sum02(wide * wide).double()  # one temporary, one GEMV: fewer kernels beat cache reuse here


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
    reduce: Reduce = _noop,
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
    norm, survive, active, lower, start = _start(sums, t, floor)
    tol = _Tolerance(rtol, atol, max_iter)
    mu, rho, exact, fine = _newton(pieces, _fused_pass, t, start, lower, ~active, reduce, tol, torch.float64)
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


@dataclass(frozen=True)
class _Tolerance:
    rtol: float
    atol: float
    max_iter: int


def _start(sums: Tensor, t: Tensor, floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """From the setup sums: each block's norm, whether it survives, whether it shrinks (``active``),
    the lower bound ``tau / ||w||`` of ``mu`` and Newton's first iterate."""
    norm = sums[0].sqrt()
    survive = norm > t + floor
    active = survive & (t > 0)
    q0 = sums[1].sqrt().clamp_min(_TINY)
    lower = torch.where(active, t / q0, 0.0)  # mu >= tau / ||w||
    # A first iterate for free, from phi at mu = 0: phi = Q^-1/2 - mu/tau with Q(mu) = ||y/(h+mu)||^2,
    # whose value and first two derivatives at 0 are ||w||^2, -2 sum w^2/h and 6 sum w^2/h^2. phi is
    # concave (Cauchy-Schwarz), so Newton's step from 0 overshoots the root and Halley's lands short
    # of Newton's; their geometric mean needs the fewest sweeps in the regimes measured (conditioners
    # of a few Adam steps, spread over decades).
    # Far from 0 (a block near death: mu large next to h) that Taylor series says nothing (Newton's
    # step from 0 is then negative), but Jensen bounds the root from above: 1/q(mu) <= (mu + s)/||y||
    # with s = sum y^2 h / ||y||^2 (1/(h + mu)^2 is convex in h), so phi(mu) <= 0 at
    # mu = tau s / (||y|| - tau). Where Newton's step from 0 is valid and below that bound, start from
    # the mean above; else from the bound (Newton then converges monotonically from the right).
    m0 = q0 * q0
    f0, f1 = 1 / q0, sums[2] / (m0 * q0) - 1 / t
    f2 = 3 * sums[2] ** 2 / (m0 * m0 * q0) - 3 * sums[3] / (m0 * q0)
    newton, halley = -f0 / f1, -2 * f0 * f1 / (2 * f1 * f1 - f0 * f2)
    start = (newton * halley).sqrt()
    far = t * sums[4] / (sums[0] * (norm - t))
    near = (newton > lower) & (newton < far) & (start > lower) & torch.isfinite(start)
    far_ok = (far > lower) & torch.isfinite(far)
    start = torch.where(active & near, start, torch.where(active & far_ok, far, lower))
    return norm, survive, active, lower, start


def _setup_pass(p: Piece) -> Tensor:
    """``(5, R)`` float64: per row ``||y||^2``, ``||w||^2``, ``sum w^2/h``, ``sum w^2/h^2``, ``sum y^2 h``."""
    part = fused.setup_sums(p.w, p.h) if fused.wants(p.w) else None
    if part is not None:
        return part
    part = p.w.new_zeros(5, p.w.shape[1], dtype=torch.float64)
    for c, wc, hc, s1, s2 in _walk(p, _work_dtype(p)):
        part[1, c[1]] += _sumsq(wc)  # ||w||^2
        part[2, c[1]] += _dot(wc, torch.div(wc, hc, out=s1))  # sum w^2 / h
        part[3, c[1]] += _sumsq(s1)  # sum w^2 / h^2
        y = torch.mul(hc, wc, out=s1)
        part[0, c[1]] += _sumsq(y)  # ||y||^2
        part[4, c[1]] += _dot(y, torch.mul(y, hc, out=s2))  # sum y^2 h
    return part


# With sums accumulated in float64 (compiled kernels; short float32 rows), their relative error
# ``e`` is the terms' float32 rounding and ``mu`` is off by ``e / (2 (1 - rho))``: float64 is needed
# only where ``rho`` is near 1. 0.6, not the 0.8 that e <= 2e-7 would allow: with 0.8 the largest
# error over bind(plan(resnet50)) was 8.3e-7 (eager: 1.5e-7). Otherwise where ``||y|| < 2 tau``.
_RHO_PRECISE = 0.6


# A Newton step is accepted once its error bound is this many times below rtol: half for the bound,
# half for the sums' rounding (e / (2 (1 - rho)) <= 4.5e-7 for float32 terms at rho <= 0.6, where
# blocks beyond are re-solved in float64). The bound is loose: over bind(plan(resnet50))'s 11,456
# blocks in float64, accepting at 1x left 3e-8 at most; 8x (before) sent 6.6% of the blocks to a
# second sweep, 2x sends 2.2%.
_MARGIN = 2.0


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
    mu_rows = mu_rows.to(_work_dtype(p))
    for c, wc, hc, s1, s2 in _walk(p, _work_dtype(p)):
        d = torch.add(hc, _per_row(mu_rows[c[1]], hc), out=s2)  # h + mu
        u = torch.mul(hc, wc, out=s1).div_(d)  # y / (h + mu)
        part[0, c[1]] += _sumsq(u)
        part[1, c[1]] += _dot(u, torch.div(u, d, out=s2))  # y^2 / (h + mu)^3
    return part


def _newton(
    pieces: list[Piece],
    sweep: Callable[[Piece, Tensor], Tensor],
    t: Tensor,
    mu: Tensor,
    lo: Tensor,
    done: Tensor,
    reduce: Reduce,
    tol: _Tolerance,
    fine: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, list[Piece]]:
    """Safeguarded Newton on ``phi`` for the blocks not ``done``, from ``mu`` (``lo``: a lower bound).

    A Newton step ``delta`` (relative) leaves an error of at most ``c delta^2`` with
    ``c = 3 rho / (2 (1 - rho))``, ``rho = tau T / q^3 in [0, 1)`` (``mu |phi''| <= 3 T / q^3`` and
    ``|phi'| = (1 - rho) / tau``): a step is accepted without another pass once ``c delta^2`` is
    ``_MARGIN`` times below ``rtol``, or when ``delta <= rtol`` (or its absolute change is below
    ``atol``).

    Once at most half the blocks are left, their rows are copied (in ``fine``, if given: the blocks
    near death, which need float64, are then among them; their bracket restarts from ``lo``, as a
    float32 sign of ``phi`` may have set it wrongly).
    Returns ``mu``, each block's ``rho`` at its last sweep, the blocks swept in ``fine`` from the
    first copy on (None: no copy in ``fine``) and that copy's pieces.
    """
    size = blocks = t.numel()
    lo0, lo, hi, done = lo, lo.clone(), torch.full_like(mu, math.inf), done.clone()
    rho_done = torch.zeros_like(mu)
    exact: Tensor | None = None
    copied: list[Piece] = []
    shrink = 2  # half the blocks or fewer left: iterate on copies of their rows; once copied, an
    # eighth (sweeping a few converged rows along costs less than copying the rest again)
    for _ in range(tol.max_iter):
        pending = int((~done).sum())
        if pending == 0:
            break
        if shrink * pending <= blocks:
            pieces, blocks, shrink = pack(pieces, ~done, fine if shrink == 2 else None), pending, 8
            if fine is not None and exact is None:
                exact, copied = ~done, pieces
                lo, hi = torch.where(exact, lo0, lo), torch.where(exact, math.inf, hi)
        st = t.new_zeros(2, size)
        for p in pieces:
            if p.counted and p.w.numel():
                p.add_to(st, sweep(p, p.spread(mu)))
        reduce(st)
        mu, lo, hi, done, rho_done = _step(st, t, mu, lo, hi, done, rho_done, tol.rtol, tol.atol)
    return mu, rho_done, exact, copied


def _step(
    st: Tensor, t: Tensor, mu: Tensor, lo: Tensor, hi: Tensor, done: Tensor, rho_done: Tensor, rtol: float, atol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One safeguarded Newton step from the sweep's sums ``st`` at ``mu``: the new ``mu``, bracket
    ``lo``/``hi``, ``done`` and ``rho`` (blocks already done keep their ``mu`` and ``rho``)."""
    q = st[0].sqrt()
    phi = 1 / q - mu / t
    slope = st[1] / (st[0] * q) - 1 / t  # d/dmu 1/q = sum y^2 / (h + mu)^3 / q^3
    step = mu - phi / slope
    lo = torch.where(phi > 0, mu, lo)
    hi = torch.where(phi < 0, mu, hi)
    fallback = torch.where(hi == math.inf, 2 * lo, 0.5 * (lo + hi))  # hi is inf or a past mu
    newton = (step > lo) & (step < hi)  # also false for nan
    step = torch.where(newton, step, fallback)
    change = (step - mu).abs()
    delta = change / step
    rho = (t * st[1] / (st[0] * q)).clamp(0.0, 1.0)
    c = 1.5 * rho / (1 - rho).clamp_min(_TINY)
    converged = (delta <= rtol) | (newton & (delta <= 1e-2) & (_MARGIN * c * delta * delta <= rtol))
    if atol > 0:
        converged = converged | (change <= atol)
    return torch.where(done, mu, step), lo, hi, done | converged, torch.where(done, rho_done, rho)


def _refine(
    pieces: list[Piece], heavy: Tensor, survive: Tensor, t: Tensor, mu: Tensor, lower: Tensor, reduce: Reduce, tol: _Tolerance
) -> tuple[Tensor, Tensor]:
    """Blocks near death re-solved in float64 from ``mu`` (their rows copied out)."""
    fine = pack(pieces, heavy, torch.float64)
    survive = _recheck(fine, heavy, survive, t, reduce)
    return _newton(fine, _fused_pass, t, mu, lower, ~(heavy & survive), reduce, tol)[0], survive


def _recheck(fine: list[Piece], which: Tensor, survive: Tensor, t: Tensor, reduce: Reduce) -> Tensor:
    """``survive`` with the blocks ``which`` decided by their float64 norm (their rows are in ``fine``)."""
    norm2 = t.new_zeros(t.numel())
    for p in fine:
        p.add_to(norm2, _sumsq(p.h * p.w))
    return torch.where(which, reduce(norm2).sqrt() > t, survive)


def _per_row(m: Tensor, x: Tensor) -> Tensor:
    """``(R,)`` -> broadcastable over an ``(A, R, P)`` chunk ``x`` (spelled out along a short ``P``
    when ``A > 1``: a 3x3 kernel's inner loop then vectorises)."""
    m = m[None, :, None]
    return m.expand(1, *x.shape[1:]).contiguous() if x.shape[0] > 1 and 1 < x.shape[2] <= 64 else m


def _write(p: Piece, mu: Tensor, overlap: bool) -> None:
    """``w <- w h / (h + mu)`` in place: exactly ``w`` where ``mu = 0``, zero where ``mu = inf``."""
    if p.fetch is not None and overlap:
        p.w = p.fetch()
    dtype = _work_dtype(p)
    w, m_rows = p.w, p.spread(mu).to(dtype)
    if fused.wants(w) and fused.write_shrink(w, p.h, m_rows):
        p.commit()
        return
    for c, wc, hc, s1, _ in _walk(p, dtype):
        shrink = torch.div(hc, torch.add(hc, _per_row(m_rows[c[1]], hc), out=s1), out=s1)
        target = w[c]
        if target.dtype == dtype:
            target.mul_(shrink)
        else:
            target.copy_(wc * shrink)
    p.commit()
