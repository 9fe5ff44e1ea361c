"""The diagonally conditioned group-lasso prox, solved for every block at once.

For a block with weights ``w`` and conditioner ``h > 0`` the prox of ``tau ||x||`` in the
metric ``diag(h)`` is zero when ``||y|| <= tau`` (``y = h w``) and otherwise
``x = w h t / (1 + h t)``, where ``t = 1/mu > 0`` solves

    psi(t) = sum y^2 u^2 = tau^2,        u = 1 / (1 + h t).

``psi`` is convex and decreasing, so Newton's method started below the root (at the known
lower bound of ``t``) climbs to it monotonically. When a block is shrunk hard
(``tau^2 >= ||y||^2 / 2``) the same equation is solved in the complementary form
``sum y^2 (1 - u^2) = ||y||^2 - tau^2`` (concave, increasing), whose residual has no
cancellation there. Each step needs two sums over the block (float64 accumulators),
one sweep of elementwise work; a bracket guards every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SparseKitError

__all__ = ["conditioned"]

_TINY = torch.finfo(torch.float32).tiny


def conditioned(
    weights: list[Tensor],
    conditioners: list[Tensor],
    tau: Tensor,
    *,
    max_iter: int,
    rtol: float,
    atol: float,
    floor: float,
    label: str,
) -> list[Tensor]:
    """Solve the conditioned prox for ``B`` blocks split over several parts.

    Args:
        weights: Per part, ``(B, n_p)`` float32 rows; row ``b`` belongs to block ``b``.
        conditioners: Same shapes as ``weights``, strictly positive.
        tau: ``(B,)`` non-negative thresholds.
        max_iter: Newton iterations at most.
        rtol: Stop when Newton's step for every block is at most ``rtol * t``.
        atol: Or when it changes ``mu = 1/t`` by at most ``atol`` (0 disables).
        floor: Blocks with ``||h w|| <= tau + floor`` are zeroed.
        label: Names the block in errors.

    Returns:
        The new rows per part (float32), to be written back.
    """
    for w, h in zip(weights, conditioners):
        if w.shape != h.shape:
            raise SparseKitError(f"{label}: conditioner rows {tuple(h.shape)} do not match weights {tuple(w.shape)}")
    y2 = [(h * w).square_() for w, h in zip(weights, conditioners)]
    norm2 = sum(y.sum(1, dtype=torch.float64) for y in y2)
    h_min = torch.stack([h.amin(1) for h in conditioners]).amin(0)
    h_max = torch.stack([h.amax(1) for h in conditioners]).amax(0)
    if bool((h_min <= 0).any()) or not bool(torch.isfinite(h_max).all()):
        raise SparseKitError(f"{label}: conditioners must be finite and strictly positive")

    norm = norm2.sqrt()
    tau64 = tau.double()
    survive = norm > tau64 + floor
    solve = survive & (tau > 0)
    t = torch.zeros_like(tau)
    for heavy in (True, False):
        rows = (solve & ((2 * tau64 * tau64 >= norm2) == heavy)).nonzero().squeeze(1)
        if rows.numel():
            sub_norm = norm[rows]
            if heavy:  # ||y||^2 - tau^2 cancels: recompute ||y|| from float64 products
                sub_norm = sum(
                    (h[rows].double() * w[rows].double()).square().sum(1) for w, h in zip(weights, conditioners)
                ).sqrt()
            t[rows] = _newton(
                [y[rows] for y in y2],
                [h[rows] for h in conditioners],
                tau64[rows],
                sub_norm,
                h_min[rows],
                h_max[rows],
                heavy=heavy,
                max_iter=max_iter,
                rtol=rtol,
                atol=atol,
            )
    out = []
    for w, h in zip(weights, conditioners):
        ht = h * t[:, None]
        scale = torch.where(solve[:, None], ht / (1 + ht), 1.0)
        out.append(torch.where(survive[:, None], w * scale, 0.0))
    return out


def _newton(
    y2: list[Tensor],
    h: list[Tensor],
    tau: Tensor,
    norm: Tensor,
    h_min: Tensor,
    h_max: Tensor,
    *,
    heavy: bool,
    max_iter: int,
    rtol: float,
    atol: float,
) -> Tensor:
    """Safeguarded Newton for ``t`` on surviving blocks of one regime (float64 tau, norm)."""
    gap = (norm - tau).float().clamp_min(_TINY)
    tau32 = tau.float().clamp_min(_TINY)
    lo = gap / (tau32 * h_max)  # t = 1/mu lies in [lo, hi]
    hi = gap / (tau32 * h_min)
    target = (norm - tau) * (norm + tau) if heavy else tau * tau
    t = lo.clone()
    for _ in range(max_iter):
        value = torch.zeros_like(tau)
        slope = torch.zeros_like(tau)
        for yy, hh in zip(y2, h):
            z = hh * t[:, None]
            u = (1 + z).reciprocal_()
            a = yy * u * u  # y^2 u^2
            value += (a * z * (2 + z) if heavy else a).sum(1, dtype=torch.float64)
            slope += a.mul_(hh).mul_(u).sum(1, dtype=torch.float64)
        # Newton on value(t) = target; value increases (heavy) or decreases (light) in t.
        residual = (target - value) if heavy else (value - target)
        step = t + (residual / (2 * slope).clamp_min(_TINY)).float()
        done = (step - t).abs() <= rtol * step
        if atol > 0:
            done |= (1.0 / step - 1.0 / t).abs() <= atol
        lo = torch.where(residual > 0, t, lo)
        hi = torch.where(residual < 0, t, hi)
        outside = ((step < lo) | (step > hi) | ~torch.isfinite(step)) & ~done
        t = torch.where(outside, 0.5 * (lo + hi), step)
        if bool(done.all()):
            break
    return t
