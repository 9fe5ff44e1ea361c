"""The conditioned prox's compiled kernels (``engine/fused.py``): as exact as the eager path."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from sparsekit_graph import SparseKitError
from sparsekit_graph.engine import BlockSpec, View, fused, solve


@pytest.fixture
def compiled() -> Iterator[None]:
    old = fused.set_kernel_mode("compiled")
    yield
    fused.set_kernel_mode(old)


def _exact(w: Tensor, h: Tensor, tau: Tensor) -> Tensor:
    """Float64 conditioned prox of ``(B, n)`` rows by bisection on ``mu`` to machine precision."""
    w, h, tau = w.double(), h.double(), tau.double()
    lo, hi = torch.zeros(w.shape[0], dtype=torch.float64), torch.full((w.shape[0],), 1e15, dtype=torch.float64)
    for _ in range(500):
        mu = (lo + hi) / 2
        zeta = mu * (h * w / (h + mu[:, None])).norm(dim=1)
        lo, hi = torch.where(zeta < tau, mu, lo), torch.where(zeta < tau, hi, mu)
    alive = (h * w).norm(dim=1) > tau
    return torch.where(alive[:, None], h * w / (h + mu[:, None]), 0.0)


def _case(outer: int, rows: int, inner: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A ``(outer, rows, inner)`` weight, conditioners over decades, thresholds from light shrink to
    within 0.1% of death (and a few dead)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(outer, rows, inner, generator=g)
    h = torch.exp(torch.randn(outer, rows, inner, generator=g) * 3)
    frac = torch.cat([torch.rand(rows - 8, generator=g), torch.tensor([0.999, 0.99, 0.95, 0.9, 0.8, 1.001, 1.2, 0.0])])
    tau = (h * w).square().sum((0, 2)).sqrt() * frac
    return w, h, tau.float()


# outer slices x rows x inner run: a (rows, inner) matrix, conv columns (3x3 and 1x1), a long inner
# run. Compiling a layout's kernels takes 10-30 s on a cold cache: one layout in the default run.
# Outer sizes divisible by fused.TILE (8) take the tiled kernels (rows are never tiled).
LAYOUTS = [
    pytest.param(1, 96, 700, id="rows"),
    pytest.param(304, 40, 1, id="cols-1x1-tiled"),
    pytest.param(1, 96, 704, id="rows-long", marks=pytest.mark.slow),
    pytest.param(80, 48, 9, id="cols-3x3-tiled", marks=pytest.mark.slow),
    pytest.param(75, 48, 9, id="cols-3x3", marks=pytest.mark.slow),
    pytest.param(300, 40, 1, id="cols-1x1", marks=pytest.mark.slow),
    pytest.param(5, 24, 100, id="wide", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("outer", "rows", "inner"), LAYOUTS)
def test_compiled_conditioned_prox_relative_1e6(compiled: None, outer: int, rows: int, inner: int) -> None:
    w, h, tau = _case(outer, rows, inner, seed=outer + rows)
    exact = _exact(w.transpose(0, 1).reshape(rows, -1), h.transpose(0, 1).reshape(rows, -1), tau)
    x = w.clone()
    assert fused.wants(x)
    dead = solve.conditioned([solve.Piece(x, h)], tau)
    got = x.transpose(0, 1).reshape(rows, -1).double()
    norm = exact.norm(dim=1)
    assert torch.equal(dead, norm == 0) and bool(dead.any())
    rel = (got - exact).norm(dim=1) / norm.clamp_min(1e-300)
    assert float(rel[norm > 0].max()) < 1e-6
    assert torch.equal(got[norm == 0], exact[norm == 0])


@pytest.mark.slow
def test_compiled_matches_eager_on_a_strided_view_and_bf16(compiled: None) -> None:
    """In place through a strided window of a larger parameter; bfloat16 solved in float32."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(40, 30, generator=g)
    h = torch.exp(torch.randn(40, 30, generator=g))
    tau = (h[5:35] * base[5:35]).norm(dim=1) * 0.7
    results = {}
    for mode in ("compiled", "eager"):
        fused.set_kernel_mode(mode)
        for dtype in (torch.float32, torch.bfloat16):
            p = base.to(dtype)
            BlockSpec(View(p, (30, 30), (30, 1), offset=150), (1, -1)).soft_threshold(tau, h[5:35])
            results[mode, dtype] = p
    torch.testing.assert_close(results["compiled", torch.float32], results["eager", torch.float32], rtol=2e-6, atol=1e-7)
    assert torch.equal(results["compiled", torch.float32][:5], base[:5])
    assert torch.equal(results["compiled", torch.bfloat16][35:], base.to(torch.bfloat16)[35:])
    torch.testing.assert_close(results["compiled", torch.bfloat16].float(), results["eager", torch.bfloat16].float())


def test_auto_compiles_only_large_pieces() -> None:
    old = fused.set_kernel_mode("auto")
    try:
        assert not fused.wants(torch.zeros(1, 8, 8))
        assert fused.wants(torch.zeros(1, 256, fused.MIN_NUMEL // 256))
        assert not fused.wants(torch.zeros(1, 256, fused.MIN_NUMEL // 256, dtype=torch.float64))
        fused.set_kernel_mode("eager")
        assert not fused.wants(torch.zeros(1, 256, fused.MIN_NUMEL))
    finally:
        fused.set_kernel_mode(old)


def test_no_compiled_kernels_under_a_dispatch_mode() -> None:
    """An op counter (a ``TorchDispatchMode``) gets the eager kernels, without a warning, and the
    compiled ones stay available after it (they are not marked broken)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            return func(*args, **(kwargs or {}))

    old = fused.set_kernel_mode("compiled")
    try:
        w = torch.zeros(1, 256, 256)
        with Counter():
            assert not fused.wants(w)
        assert fused.wants(w)
    finally:
        fused.set_kernel_mode(old)


def test_a_failed_compile_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler: one warning, then the eager kernels give the eager result."""

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setitem(fused._state, "fns", {})
    monkeypatch.setitem(fused._state, "broken", None)
    monkeypatch.setitem(fused._state, "mode", "compiled")
    w, h, tau = _case(1, 16, 50, seed=1)
    x = w.clone()
    with pytest.warns(UserWarning, match="compiled prox kernels unavailable"):
        solve.conditioned([solve.Piece(x, h)], tau)
    assert not fused.wants(x)
    monkeypatch.setitem(fused._state, "mode", "eager")
    y = w.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve.conditioned([solve.Piece(y, h)], tau)
    assert torch.equal(x, y)


def test_bad_kernel_mode() -> None:
    with pytest.raises(SparseKitError, match="kernel mode"):
        fused.set_kernel_mode("fast")


def test_float64_copies_sweep_compiled_as_exactly_as_eager(compiled: None) -> None:
    """Newton's float64 copies of rows take the compiled float64 sweep, with eager's sums (float64 rounding)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(1, 37, 150, generator=g, dtype=torch.float64)
    h = torch.exp(torch.randn(1, 37, 150, generator=g, dtype=torch.float64) * 3)
    mu = torch.rand(37, generator=g, dtype=torch.float64)
    assert fused.wants_exact(w, h) and not fused.wants(w)
    assert not fused.wants_exact(w.float(), h.float()) and not fused.wants_exact(w.expand(2, 37, 150), h.expand(2, 37, 150))
    got = solve._fused_pass(solve.Piece(w, h), mu)
    d = h[0] + mu[:, None]
    u = h[0] * w[0] / d
    want = torch.stack([(u * u).sum(1), (u * u / d).sum(1)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    fused.set_kernel_mode("eager")
    assert not fused.wants_exact(w, h)
