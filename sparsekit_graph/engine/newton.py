"""Safeguarded Newton on the conditioned prox's secular function (``engine/solve.py``): the first
iterate from the setup sums, the iteration over a group's pieces, and one step with its error bound.

For a block with ``y = h w`` and threshold ``tau``, ``phi(mu) = 1/||y/(h + mu)|| - mu/tau`` is concave
and nearly linear; its root ``mu`` gives the block's prox ``x = y / (h + mu)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .piece import Piece, pack

__all__ = ["MARGIN", "TINY", "Reduce", "Tolerance", "first_iterate", "iterate", "newton_step", "noop"]

TINY = torch.finfo(torch.float32).tiny

Reduce = Callable[[Tensor], Tensor]


def noop(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    max_iter: int


def first_iterate(sums: Tensor, t: Tensor, floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """From the setup sums: each block's norm, whether it survives, whether it shrinks (``active``),
    the lower bound ``tau / ||w||`` of ``mu`` and Newton's first iterate."""
    norm = sums[0].sqrt()
    survive = norm > t + floor
    active = survive & (t > 0)
    q0 = sums[1].sqrt().clamp_min(TINY)
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


# A Newton step is accepted once its error bound is this many times below rtol: half for the bound,
# half for the sums' rounding (e / (2 (1 - rho)) <= 4.5e-7 for float32 terms at rho <= 0.6, where
# blocks beyond are re-solved in float64). The bound is loose: over bind(plan(resnet50))'s 11,456
# blocks in float64, accepting at 1x left 3e-8 at most; 8x (before) sent 6.6% of the blocks to a
# second sweep, 2x sends 2.2%.
MARGIN = 2.0


def iterate(
    pieces: list[Piece],
    sweep: Callable[[Piece, Tensor], Tensor],
    t: Tensor,
    mu: Tensor,
    lo: Tensor,
    done: Tensor,
    reduce: Reduce,
    tol: Tolerance,
    fine: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, list[Piece]]:
    """Safeguarded Newton on ``phi`` for the blocks not ``done``, from ``mu`` (``lo``: a lower bound).

    A Newton step ``delta`` (relative) leaves an error of at most ``c delta^2`` with
    ``c = 3 rho / (2 (1 - rho))``, ``rho = tau T / q^3 in [0, 1)`` (``mu |phi''| <= 3 T / q^3`` and
    ``|phi'| = (1 - rho) / tau``): a step is accepted without another pass once ``c delta^2`` is
    ``MARGIN`` times below ``rtol``, or when ``delta <= rtol`` (or its absolute change is below
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
        mu, lo, hi, done, rho_done = newton_step(st, t, mu, lo, hi, done, rho_done, tol.rtol, tol.atol)
    return mu, rho_done, exact, copied


def newton_step(
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
    c = 1.5 * rho / (1 - rho).clamp_min(TINY)
    converged = (delta <= rtol) | (newton & (delta <= 1e-2) & (MARGIN * c * delta * delta <= rtol))
    if atol > 0:
        converged = converged | (change <= atol)
    return torch.where(done, mu, step), lo, hi, done | converged, torch.where(done, rho_done, rho)
