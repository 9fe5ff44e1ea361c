"""The diagonally conditioned group-lasso prox, solved for every block at once.

For a block with weights ``w`` and conditioner ``h > 0`` the prox of ``tau ||x||`` in the
metric ``diag(h)`` is zero when ``||h w|| <= tau`` and otherwise ``x = h w / (h + mu)``,
where ``mu > 0`` solves ``mu ||h w / (h + mu)|| = tau``. We solve for ``t = 1 / mu``:
``r(t) = psi(t)^{-1/2} - 1/tau = 0`` with ``psi(t) = sum (h w)^2 / (1 + h t)^2``, which is
increasing in ``t`` and exactly linear when ``h`` is constant, so Newton's method converges
in a few steps. Each step needs ``psi`` and ``psi'`` only: one sweep over the block.
A bracket from the known bounds on ``mu`` guards every step (bisection when Newton leaves it).
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
        rtol: Stop when every block's ``t`` moved by at most ``rtol * t``.
        atol: Or when ``mu = 1/t`` moved by at most ``atol`` (0 disables).
        floor: Blocks with ``||h w|| <= tau + floor`` are zeroed.
        label: Names the block in errors.

    Returns:
        The new rows per part (float32), to be written back.
    """
    for w, h in zip(weights, conditioners):
        if w.shape != h.shape:
            raise SparseKitError(f"{label}: conditioner rows {tuple(h.shape)} do not match weights {tuple(w.shape)}")
    y2 = [(h * w).square_() for w, h in zip(weights, conditioners)]
    norm_hw = torch.stack([y.sum(1) for y in y2]).sum(0).sqrt_()
    h_min = torch.stack([h.amin(1) for h in conditioners]).amin(0)
    h_max = torch.stack([h.amax(1) for h in conditioners]).amax(0)
    if bool((h_min <= 0).any()) or not bool(torch.isfinite(h_max).all()):
        raise SparseKitError(f"{label}: conditioners must be finite and strictly positive")

    survive = norm_hw > tau + floor
    solve = survive & (tau > 0)
    gap = (norm_hw - tau).clamp_min(_TINY)
    tau_safe = tau.clamp_min(_TINY)
    lo = gap / (tau_safe * h_max)  # t = 1/mu lies in [lo, hi]
    hi = gap / (tau_safe * h_min)
    inv_tau = 1.0 / tau_safe
    t = lo.clone()
    for _ in range(max_iter):
        s2 = torch.zeros_like(t)
        s3 = torch.zeros_like(t)
        for y, h in zip(y2, conditioners):
            u = torch.addcmul(torch.ones_like(h), h, t[:, None]).reciprocal_()  # 1 / (1 + h t)
            a = y * u * u
            s2 += a.sum(1)
            s3 += (a.mul_(h).mul_(u)).sum(1)
        s2.clamp_min_(_TINY)
        r = s2.rsqrt() - inv_tau  # increasing in t; root at the solution
        dr = s3 * s2.pow(-1.5)
        lo = torch.where(r < 0, t, lo)
        hi = torch.where(r > 0, t, hi)
        step = t - r / dr.clamp_min(_TINY)
        outside = (step < lo) | (step > hi) | ~torch.isfinite(step)
        new_t = torch.where(outside, 0.5 * (lo + hi), step)
        moved = (new_t - t).abs()
        done = moved <= rtol * new_t
        if atol > 0:
            done |= (1.0 / new_t - 1.0 / t).abs() <= atol
        t = torch.where(solve, new_t, t)
        if bool((done | ~solve).all()):
            break

    out = []
    for w, h in zip(weights, conditioners):
        ht = h * t[:, None]
        scale = torch.where(solve[:, None], ht / (1 + ht), 1.0)
        out.append(torch.where(survive[:, None], w * scale, 0.0))
    return out
