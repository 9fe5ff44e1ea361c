"""The conditioned prox's first Newton iterate (``engine/solve.py``): blocks near death, where the
Taylor series at ``mu = 0`` says nothing, start from the upper bound of Jensen's inequality."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sparsekit_graph.engine import fused, solve


@pytest.fixture
def eager() -> None:
    old = fused.set_kernel_mode("eager")
    yield
    fused.set_kernel_mode(old)


def _bisect(w: Tensor, h: Tensor, tau: Tensor) -> Tensor:
    """Float64 ``mu`` of ``(B, n)`` rows by bisection (``mu ||y / (h + mu)|| = tau``)."""
    w, h, tau = w.double(), h.double(), tau.double()
    lo, hi = torch.zeros(w.shape[0], dtype=torch.float64), torch.full((w.shape[0],), 1e15, dtype=torch.float64)
    for _ in range(400):
        mu = (lo + hi) / 2
        below = mu * (h * w / (h + mu[:, None])).norm(dim=1) < tau
        lo, hi = torch.where(below, mu, lo), torch.where(below, hi, mu)
    return (lo + hi) / 2


def _near_death(rows: int, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Conditioners over four decades with a few large ones, thresholds 0.1-20% below ``||h w||``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, n, generator=g)
    h = torch.exp(torch.randn(rows, n, generator=g) * 1.5) * 1e-3
    h[:, : n // 50] *= 100
    gap = torch.logspace(-3, -0.7, rows, dtype=torch.float64)
    tau = ((h * w).double().norm(dim=1) / (1 + gap)).float()
    return w, h, tau


def test_far_bound_is_above_the_root() -> None:
    w, h, tau = _near_death(64, 500, seed=0)
    y = (h * w).double()
    norm = y.norm(dim=1)
    far = tau.double() * (y.square() * h.double()).sum(1) / (norm.square() * (norm - tau.double()))
    mu = _bisect(w, h, tau)
    assert bool((far >= mu * (1 - 1e-9)).all())
    assert float((far / mu).min()) < 1.01  # and tight where mu is large next to h


def test_near_death_blocks_need_few_sweeps(eager: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block solved to relative 1e-6, with two sweeps over the whole piece (the Taylor start of
    before took ten: most blocks were still unsolved after nine, so Newton never moved to copies of
    the unsolved rows)."""
    w, h, tau = _near_death(64, 500, seed=1)
    sweeps = []
    inner = solve._fused_pass

    def counted(p: solve.Piece, mu: Tensor) -> Tensor:
        sweeps.append((p.w.dtype, p.w.shape == x.shape))
        return inner(p, mu)

    monkeypatch.setattr(solve, "_fused_pass", counted)
    x = w.clone()[None]
    solve.conditioned([solve.Piece(x, h[None])], tau)
    mu = _bisect(w, h, tau)
    exact = h.double() * w.double() / (h.double() + mu[:, None])
    rel = (x[0].double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert float(rel.max()) < 1e-6
    assert sum(whole for d, whole in sweeps if d == torch.float32) <= 2
