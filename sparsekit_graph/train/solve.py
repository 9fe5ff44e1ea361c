"""The conditioned group prox of one group's channels: secular Newton over cache-sized chunks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .segments import ProxGroup

__all__ = ["cache_chunks", "solve_conditioned", "sum_squares"]

_TINY = torch.finfo(torch.float32).tiny


def solve_conditioned(g: ProxGroup, tau: Tensor, w_rows: list[Tensor], h_rows: list[Tensor]) -> Tensor:
    """The conditioned prox of every channel of ``g`` at once, written back; returns the killed channels.

    For a channel with elements ``w``, conditioner ``h`` and ``y = h w``: zero if ``||y|| <= tau``,
    else ``x = y / (h + mu)`` where ``mu > 0`` solves ``mu * ||y / (h + mu)|| = tau``. Newton runs on
    the secular form ``phi(mu) = 1/||y / (h + mu)|| - mu/tau`` (concave, nearly linear: exact in one
    step when ``h`` is constant), its first step taken from ``mu = 0`` with sums the setup pass
    computes anyway, bracket-guarded by the lower bound ``tau / ||w||``. Per-row sums are float32
    (cascade summation) combined in float64 and all-reduced across shards. Channels near death
    (``||y|| < 2 tau``, where the root amplifies rounding by ``||y|| / (||y|| - tau)``) are then
    re-solved from there in float64. Every pass walks the data in cache-sized chunks: the work is
    memory-bound, and temporaries that stay in cache make it several times faster.

    Args:
        g: The group.
        tau: ``(size,)`` float64 thresholds.
        w_rows: Per segment, ``data()`` of the parameter (written through, or committed).
        h_rows: Per segment, the conditioner laid out like ``w_rows`` (float32 or float64).
    """
    f64, size, segs = torch.float64, g.size, g.segments
    sums = tau.new_zeros(3, size, dtype=f64)
    y_rows = []
    for s, w, h in zip(segs, w_rows, h_rows):
        y = torch.empty_like(h)
        part = h.new_zeros(3, h.shape[1], dtype=f64)
        for c in cache_chunks(h):
            wc = w[c].to(h.dtype)
            torch.mul(h[c], wc, out=y[c])
            part[0, c[1]] += sum_squares(y[c])  # ||y||^2
            part[1, c[1]] += sum_squares(wc)  # ||w||^2
            part[2, c[1]] += _dot(wc, wc / h[c])  # sum w^2 / h
        y_rows.append(y)
        if s.counted and h.numel():
            sums += _to_channels(part, s.slots, size)
    g.reduce(sums)
    norm, t = sums[0].sqrt(), tau.double()
    survive = norm > t
    active = survive & (t > 0)
    q0 = sums[1].sqrt().clamp_min(_TINY)
    lower = torch.where(active, t / q0, 0.0)  # mu >= tau / ||w||
    start = (1 / q0) / (1 / t - sums[2] / q0**3)  # Newton from mu = 0 (phi = 1/||w||), for free
    start = torch.where(active & (start > lower) & torch.isfinite(start), start, lower)
    mu = _newton([(h, y, s.slots, s.counted) for s, h, y in zip(segs, h_rows, y_rows)], g, t, start, lower, ~active)
    heavy = active & (norm < 2 * t)
    if bool(heavy.any()):
        ids = heavy.nonzero().squeeze(1)
        fine = []
        norm2 = tau.new_zeros(size, dtype=f64)
        for s, w, h in zip(segs, w_rows, h_rows):
            rows = s.spread(heavy)
            h64 = h[:, rows].double()
            y64, slots = h64 * w[:, rows].double(), ids if s.slots is None else s.slots[rows]
            fine.append((h64, y64, slots, s.counted))
            if s.counted and y64.numel():
                norm2.index_add_(0, slots, y64.square().sum((0, 2)))
        survive = torch.where(heavy, g.reduce(norm2).sqrt() > t, survive)
        mu = _newton(fine, g, t, mu, lower, ~(heavy & survive))
    untouched = survive & ~active  # tau = 0: left exactly as they are
    any_untouched, any_dead = bool(untouched.any()), not bool(survive.all())  # one host sync each, per group
    for s, w, h, y in zip(segs, w_rows, h_rows, y_rows):
        m = s.spread(mu).to(h.dtype)[None, :, None]
        keep, dead = s.spread(untouched), s.spread(~survive)
        saved = w[:, keep].clone() if any_untouched and not g.overlap else None
        if g.overlap:  # an element in two blocks is shrunk by both: multiply what earlier segments wrote
            w = s.data()
            for c in cache_chunks(w):
                w[c] = w[c] * (h[c] / h[c].add(m[:, c[1]]))  # h / (h + mu): exactly 1 where mu = 0
        else:
            for c in cache_chunks(w):  # x = y / (h + mu), straight into the parameter where dtypes allow
                target, d = w[c], h[c].add_(m[:, c[1]])
                if target.dtype == y.dtype:
                    torch.div(y[c], d, out=target)
                else:
                    target.copy_(y[c] / d)
        if saved is not None:
            w[:, keep] = saved
        if any_dead:
            w[:, dead] = 0
        s.commit(w)
    return ~survive & (sums[1] > 0)


def cache_chunks(x: Tensor) -> list[tuple[slice, slice]]:
    """Index pairs cutting an ``(A, R, P)`` tensor into pieces of about ``_CHUNK`` elements (CPU caches;
    on an accelerator one piece: many small kernels cost more than the memory traffic they save)."""
    outer, rows, inner = x.shape
    if x.device.type != "cpu":
        return [(slice(None), slice(None))]
    if outer > 1:
        step = max(1, _CHUNK // max(1, rows * inner))
        return [(slice(a, min(a + step, outer)), slice(None)) for a in range(0, outer, step)]
    step = max(1, _CHUNK // max(1, inner))
    return [(slice(None), slice(a, min(a + step, rows))) for a in range(0, rows, step)]


def sum_squares(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)``: sums of squares over dims 0 and 2."""
    return torch.linalg.vector_norm(x[0], dim=1).square_() if x.shape[0] == 1 else _sum02(x * x)


def _dot(x: Tensor, z: Tensor) -> Tensor:
    """``(a, r, p), (a, r, p) -> (r,)``: sums of products over dims 0 and 2."""
    return torch.linalg.vecdot(x[0], z[0], dim=1) if x.shape[0] == 1 else _sum02(x * z)


def _sum02(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)`` for a contiguous ``x``: a GEMV over dim 0 (a strided sum is far slower), then dim 2."""
    a, r, p = x.shape
    rows = (x.new_ones(1, a) @ x.reshape(a, r * p)).reshape(r, p)
    return rows.sum(1) if p > 1 else rows.reshape(r)


def _to_channels(per_row: Tensor, slots: Tensor | None, size: int) -> Tensor:
    """(k, R) per-row sums -> (k, size) per-channel sums."""
    if slots is None:
        return per_row
    return per_row.new_zeros(per_row.shape[0], size).index_add_(1, slots, per_row)


def _newton(
    parts: list[tuple[Tensor, Tensor, Tensor | None, bool]], g: ProxGroup, t: Tensor, mu: Tensor, lo: Tensor, done: Tensor
) -> Tensor:
    """Safeguarded Newton on ``phi`` for the channels not ``done``, from ``mu`` (``lo``: a lower bound).

    ``parts``: per segment, ``(h, y, slots, counted)`` shaped ``(A, R, P)``; ``slots`` maps rows to
    channels (None: row ``i`` is channel ``i``). Returns ``mu`` (float64, ``(size,)``).

    A Newton step ``delta`` (relative) leaves an error of at most ``c delta^2`` with
    ``c = 3 rho / (2 (1 - rho))``, ``rho = tau T / q^3 in [0, 1)`` (``mu |phi''| <= 3 T / q^3`` and
    ``|phi'| = (1 - rho) / tau``): a step is accepted without another pass once ``c delta^2`` is
    8x below ``rtol``, or when ``delta <= rtol``.
    """
    size, f64 = t.numel(), torch.float64
    lo, hi, done = lo.clone(), torch.full_like(mu, math.inf), done.clone()
    for _ in range(_MAX_ITER):
        if bool(done.all()):
            break
        st = t.new_zeros(2, size)
        for h, y, slots, counted in parts:
            if counted and y.numel():
                m = (mu if slots is None else mu[slots]).to(h.dtype)[None, :, None]
                part = y.new_zeros(2, y.shape[1], dtype=f64)
                for c in cache_chunks(y):
                    d = h[c].add(m[:, c[1]])  # h + mu
                    u = torch.div(y[c], d)  # y / (h + mu)
                    part[0, c[1]] += sum_squares(u)
                    part[1, c[1]] += _dot(u, u.div(d))  # y^2 / (h + mu)^3
                st += _to_channels(part, slots, size)
        g.reduce(st)
        q = st[0].sqrt()
        phi = 1 / q - mu / t
        slope = st[1] / (st[0] * q) - 1 / t  # d/dmu 1/q = sum y^2 / (h + mu)^3 / q^3
        step = mu - phi / slope
        lo = torch.where(phi > 0, mu, lo)
        hi = torch.where(phi < 0, mu, hi)
        fallback = torch.where(torch.isinf(hi), 2 * lo, 0.5 * (lo + hi))
        newton = (step > lo) & (step < hi)  # also false for nan
        step = torch.where(newton, step, fallback)
        delta = (step - mu).abs() / step
        rho = (t * st[1] / (st[0] * q)).clamp(0.0, 1.0)
        c = 1.5 * rho / (1 - rho).clamp_min(_TINY)
        converged = (delta <= _RTOL) | (newton & (delta <= 1e-2) & (8 * c * delta * delta <= _RTOL))
        mu = torch.where(done, mu, step)
        done |= converged
    return mu


_CHUNK = 1 << 17  # elements per slice of rows: a few such temporaries fit in a core's L2 cache
_MAX_ITER = 50
_RTOL = 1e-6
