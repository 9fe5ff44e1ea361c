"""Engine behaviour: closed forms, optimality, the reference oracle and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekit_graph
from sparsekit_graph.engine import (
    BlockCoupling,
    BlockSpec,
    CouplingError,
    ShapeMismatchError,
    SparseKitError,
    View,
)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, BlockCoupling]:
    """Rows of a (8, 6) linear coupled with columns of a (5, 8, 3) conv-like weight."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(8, 6, generator=g), torch.randn(5, 8, 3, generator=g)
    rows = BlockSpec(w1, (1, -1), name="rows")
    cols = BlockSpec(w2, (-1, 1, -1), name="cols")
    return w1, w2, BlockCoupling([rows, cols], [(0, 1), (1, 0, 2)], name="pair")


def test_error_root_is_shared() -> None:
    assert sparsekit_graph.SparseKitError is SparseKitError
    assert issubclass(CouplingError, SparseKitError) and issubclass(ShapeMismatchError, SparseKitError)


def test_view_writes_through_a_slice_with_offset() -> None:
    w = torch.zeros(4, 6)
    v = View(w, (2, 3), (6, 1), offset=7)  # rows 1..2, cols 1..3
    v.data.fill_(1.0)
    assert w.sum() == 6 and w[1:3, 1:4].eq(1).all()
    assert View(w, (2, 3), (6, 1), offset=7) == v and hash(View(w, (2, 3), (6, 1), 7)) == hash(v)


def test_view_rejects_window_past_the_end() -> None:
    with pytest.raises(ShapeMismatchError, match="past the end"):
        View(torch.zeros(4, 6), (4, 6), (6, 1), offset=1)


def test_coupling_norms_and_masks_cover_both_specs() -> None:
    w1, w2, c = _pair()
    assert c.grid_shape == (8, 1) and c.numblk() == 8 and c.numel_per_block() == 6 + 15
    expected = (w1.square().sum(1) + w2.square().sum((0, 2))).sqrt()
    torch.testing.assert_close(c.norms().reshape(-1), expected)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 5]] = True
    masks = c.get_masks(mask)
    assert list(masks) == c.specs
    assert masks[c.specs[0]].shape == (8, 6) and masks[c.specs[0]][1].all() and not masks[c.specs[0]][0].any()
    assert masks[c.specs[1]][:, 5].all() and not masks[c.specs[1]][:, 4].any()
    c.apply_mask(mask)
    assert w1[[1, 5]].eq(0).all() and w2[:, [1, 5]].eq(0).all() and w1[0].ne(0).all()


def test_euclidean_prox_closed_form() -> None:
    w1, w2, c = _pair(1)
    before = c.norms().reshape(-1)
    tau = before * torch.linspace(0.2, 1.4, 8)
    old1, old2 = w1.clone(), w2.clone()
    c.soft_threshold(tau)
    scale = (1 - tau / before).clamp_min(0)
    torch.testing.assert_close(w1, old1 * scale[:, None])
    torch.testing.assert_close(w2, old2 * scale[None, :, None])


def _kkt(w: torch.Tensor, x: torch.Tensor, h: torch.Tensor, tau: torch.Tensor) -> None:
    """Rows are blocks: survivors satisfy h (x - w) + tau x/||x|| = 0, the rest ||h w|| <= tau."""
    nx = x.norm(dim=1)
    alive = nx > 0
    resid = h[alive] * (x[alive] - w[alive]) + tau[alive, None] * x[alive] / nx[alive, None]
    assert resid.abs().max() <= 1e-4 * (h * w).abs().max()
    assert ((h[~alive] * w[~alive]).norm(dim=1) <= tau[~alive] * (1 + 1e-5)).all()
    assert alive.any() and (~alive).any()


def test_conditioned_prox_bf16_is_solved_in_fp32() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 20, generator=g)
    h = torch.rand(64, 20, generator=g) * 10 + 0.01
    tau = (h * w).norm(dim=1) * torch.rand(64, generator=g) * 1.6
    low, ref = w.to(torch.bfloat16), w.clone()
    BlockSpec(low, (1, -1)).soft_threshold(tau, h)
    BlockSpec(ref, (1, -1)).soft_threshold(tau, h)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, ref.to(torch.bfloat16), rtol=1e-2, atol=1e-2)
    assert torch.equal(low == 0, ref == 0) and (ref == 0).any()


def test_conditioned_prox_kkt_fp32() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(128, 33, generator=g)
    h = torch.exp(torch.randn(128, 33, generator=g) * 2)
    tau = (h * w).norm(dim=1) * torch.rand(128, generator=g) * 1.5
    x = w.clone()
    BlockSpec(x, (1, -1)).soft_threshold(tau, h)
    _kkt(w, x, h, tau)


@pytest.mark.parametrize(
    ("n", "spread", "frac"),
    [(17, 3.0, 0.5), (2304, 3.0, 0.5), (2304, 1.0, 0.95), (2304, 1.0, 0.05), (17, 3.0, 0.99)],
    ids=["small", "conv-size", "heavy-shrink", "light-shrink", "near-death"],
)
def test_conditioned_prox_relative_accuracy_1e6_with_defaults(n: int, spread: float, frac: float) -> None:
    """Against a float64 bisection to machine precision on the same float32 inputs."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, n, generator=g).double()
    h = torch.exp(torch.randn(32, n, generator=g) * spread).double()
    tau = ((h * w).norm(dim=1) * frac).float().double()
    lo, hi = torch.zeros(32, dtype=torch.float64), torch.full((32,), 1e15, dtype=torch.float64)
    for _ in range(500):
        mu = (lo + hi) / 2
        zeta = mu * (h * w / (h + mu[:, None])).norm(dim=1)
        lo, hi = torch.where(zeta < tau, mu, lo), torch.where(zeta < tau, hi, mu)
    exact = h * w / (h + mu[:, None])
    x = w.float()
    BlockSpec(x, (1, -1)).soft_threshold(tau.float(), h.float())
    rel = (x.double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert rel.max() < 1e-6


def test_block_size_one_reduces_to_euclidean_on_tau_over_h() -> None:
    w = torch.randn(10, 4)
    h = torch.rand(10, 4) + 0.5
    tau = torch.rand(10, 4)
    x = w.clone()
    BlockSpec(x, (1, 1)).soft_threshold(tau, h)
    expected = w.sign() * (w.abs() - tau / h).clamp_min(0)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conditioned", [False, True], ids=["euclidean", "conditioned"])
def test_copied_and_in_place_parts_give_the_same_prox(conditioned: bool) -> None:
    """A permuted 2-d grid is solved on copied rows, its transpose in place: same result."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(6, 4, 5, generator=g)
    h = torch.rand(6, 4, 5, generator=g) + 0.05
    permuted = BlockSpec(w.clone(), (1, 1, -1))  # grid (6, 4), coupled as (4, 6)
    assert permuted._parts()[0].arp(w) is not None
    copied = BlockCoupling([permuted], [(1, 0, 2)])
    assert copied._parts()[0].arp(permuted.data) is None
    plain_w = w.transpose(0, 1).contiguous()
    plain = BlockSpec(plain_w, (1, 1, -1))
    tau = plain.norms() * torch.rand(4, 6, 1, generator=g) * 1.4
    if conditioned:
        copied.soft_threshold(tau, {permuted: h})
        plain.soft_threshold(tau, h.transpose(0, 1).contiguous())
    else:
        copied.soft_threshold(tau)
        plain.soft_threshold(tau)
    torch.testing.assert_close(permuted.data.transpose(0, 1), plain_w, rtol=1e-6, atol=1e-7)
    assert (plain_w.flatten(0, 1).norm(dim=1) == 0).any()


def test_hard_threshold_zeroes_small_blocks() -> None:
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [1.0, 0.0]])
    BlockSpec(w, (1, -1)).hard_threshold(torch.tensor([[1.0], [1.0], [1.5]]))
    assert w.tolist() == [[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]


def test_misc_interface() -> None:
    w1, w2, c = _pair(2)
    assert len(c.parameters()) == 2 and c.nnz() == w1.numel() + w2.numel()
    assert c.block_view().shape == (8, 1, 21)
    torch.testing.assert_close(c.reduce(None, lambda t: t.abs().amax(-1)), c.norms(p=float("inf")))
    torch.testing.assert_close(c.max(), c.block_view().amax(-1))
    torch.testing.assert_close(c.min(), c.block_view().amin(-1))
    c.apply_multiplier(torch.full((8,), 2.0))
    assert c.data[c.specs[0]].data_ptr() == w1.data_ptr()


def test_grids_differing_in_rank_align_row_major() -> None:
    a, b = torch.randn(6, 4), torch.randn(2, 3, 5)
    c = BlockCoupling([BlockSpec(a, (1, -1)), BlockSpec(b, (1, 1, -1))], [(0, 1), (0, 1, 2)])
    assert c.grid_shape == (6, 1)
    c.apply_mask(torch.tensor([False, False, False, False, True, False]))
    assert a[4].eq(0).all() and b[1, 1].eq(0).all() and b[1, 0].ne(0).all()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: BlockSpec(torch.zeros(6, 4), (4, 1), name="w"), r"w.*dim 0 of size 6 .*block size 4"),
        (lambda: BlockSpec(torch.zeros(6, 4), (1, 1, 1), name="w"), r"w.*one entry per dim"),
        (
            lambda: BlockCoupling([BlockSpec(torch.zeros(4, 6), name="a"), BlockSpec(torch.zeros(6, 4), name="b")]),
            r"spec b has grid \(6, 4\)",
        ),
        (lambda: BlockCoupling([BlockSpec(torch.zeros(4, 6))], [(0, 0)]), "not a permutation"),
    ],
    ids=["indivisible", "wrong-rank", "mismatched-grids", "bad-order"],
)
def test_bad_construction_is_named(build, match: str) -> None:
    with pytest.raises(SparseKitError, match=match):
        build()


def test_bad_calls_leave_parameters_unchanged() -> None:
    w1, w2, c = _pair(6)
    old1, old2 = w1.clone(), w2.clone()
    with pytest.raises(ShapeMismatchError, match="pair.*block_thresholds"):
        c.soft_threshold(torch.ones(7))
    with pytest.raises(CouplingError, match="no tensor given for spec cols"):
        c.soft_threshold(torch.ones(8), {c.specs[0]: torch.ones(8, 6)})
    with pytest.raises(SparseKitError, match="strictly positive"):
        c.soft_threshold(torch.ones(8), {c.specs[0]: torch.ones(8, 6), c.specs[1]: torch.zeros(5, 8, 3)})
    with pytest.raises(ShapeMismatchError, match="mask"):
        c.apply_mask(torch.ones(3, dtype=torch.bool))
    assert torch.equal(w1, old1) and torch.equal(w2, old2)


def test_two_tilings_of_one_parameter_do_not_collide() -> None:
    w = torch.randn(6, 6)
    rows, cols = BlockSpec(w, (1, -1)), BlockSpec(w, (-1, 1))
    c = BlockCoupling([rows, cols], [(0, 1), (1, 0)])
    assert len(set(c.specs)) == 2 and len(c.get_masks(torch.zeros(6, dtype=torch.bool))) == 2


def test_methods_run_without_autograd() -> None:
    p = torch.nn.Parameter(torch.randn(4, 3))
    spec = BlockSpec(p, (1, -1))
    spec.soft_threshold(torch.full((4, 1), 0.1), torch.ones(4, 3))
    spec.apply_mask(torch.tensor([[True], [False], [False], [False]]))
    assert p[0].eq(0).all() and p.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    w = torch.randn(64, 20)
    h = torch.rand(64, 20) + 0.1
    tau = torch.rand(64)
    x, y = w.clone(), w.cuda()
    BlockSpec(x, (1, -1)).soft_threshold(tau, h)
    BlockSpec(y, (1, -1)).soft_threshold(tau.cuda(), h.cuda())
    torch.testing.assert_close(y.cpu(), x, rtol=1e-5, atol=1e-6)


# -- differential tests against the reference package ------------------------------------------

sk = pytest.importorskip("sparsekit.block", reason="the sparsekit oracle is not installed")
skv = pytest.importorskip("sparsekit.view")


@st.composite
def _coupled_case(draw: st.DrawFn) -> tuple:
    """Two specs whose grids match after a random order; random block shapes."""
    nd = draw(st.integers(1, 3))
    grid = [draw(st.integers(1, 4)) for _ in range(nd)]
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        order = draw(st.permutations(range(nd)))
        block = [draw(st.integers(1, 3)) for _ in range(nd)]
        spec_grid = [0] * nd
        for k, axis in enumerate(order):
            spec_grid[axis] = grid[k]
        shape = [g * b for g, b in zip(spec_grid, block)]
        specs.append((tuple(shape), tuple(block), tuple(order)))
    return tuple(grid), specs, draw(st.integers(0, 2**16))


def _both(case):
    grid, specs, seed = case
    g = torch.Generator().manual_seed(seed)
    ours, ref, tensors = [], [], []
    for shape, block, _ in specs:
        t = torch.randn(shape, generator=g)
        mine, theirs = t.clone(), t.clone()
        tensors.append((mine, theirs, torch.rand(shape, generator=g) + 0.05))
        ours.append(BlockSpec(mine, block))
        ref.append(sk.BlockSpec(skv.View(theirs, shape, theirs.stride()), block))
    orders = [o for _, _, o in specs]
    return BlockCoupling(ours, orders), sk.BlockCoupling(ref, orders), tensors, g


@settings(deadline=None, max_examples=40)
@given(_coupled_case())
def test_matches_reference_norms_and_euclidean_prox(case) -> None:
    ours, ref, tensors, g = _both(case)
    assert ours.grid_shape == tuple(ref.grid_shape)
    torch.testing.assert_close(ours.norms(), ref.norms(None).float())
    tau = ours.norms() * torch.rand(ours.grid_shape, generator=g) * 1.5
    ours.soft_threshold(tau)
    ref.soft_threshold(tau)
    for mine, theirs, _ in tensors:
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@settings(deadline=None, max_examples=40)
@given(_coupled_case())
def test_matches_reference_conditioned_prox(case) -> None:
    ours, ref, tensors, g = _both(case)
    tau = ours.norms() * torch.rand(ours.grid_shape, generator=g) * 1.5
    ours.soft_threshold(tau, {s: h for s, (_, _, h) in zip(ours.specs, tensors)})
    ref.soft_threshold(tau, {s: h for s, (_, _, h) in zip(ref.specs, tensors)}, max_iter=200, atol=1e-12)
    for mine, theirs, _ in tensors:
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
