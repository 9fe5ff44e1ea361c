"""``soft_threshold_all``: one call for many couplings equals the calls one by one, in order."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

import sparsekit_graph as skg
from sparsekit_graph.engine import BlockCoupling, BlockSpec, ShapeMismatchError, SparseKitError, View, soft_threshold_all


def _chain(seed: int = 0) -> tuple[list[torch.Tensor], list[BlockCoupling]]:
    """A 3x3 conv -> BatchNorm -> 3x3 conv -> 1x1 conv chain: two couplings sharing the middle weight."""
    g = torch.Generator().manual_seed(seed)
    w1, bn, w2, w3 = (torch.randn(*s, generator=g) for s in ((12, 5, 3, 3), (12,), (10, 12, 3, 3), (7, 10, 1, 1)))

    def rows(w: torch.Tensor) -> BlockSpec:
        o = w.shape[0]
        return BlockSpec(View(w, (o, w[0].numel()), (w[0].numel(), 1)), (1, -1))

    def cols(w: torch.Tensor) -> BlockSpec:
        o, i, k = w.shape[0], w.shape[1], w[0, 0].numel()
        return BlockSpec(View(w, (o, i, k), (i * k, k, 1)), (-1, 1, -1))

    first = BlockCoupling([rows(w1), BlockSpec(bn), cols(w2)], [(0, 1), (0,), (1, 0, 2)])
    second = BlockCoupling([rows(w2), cols(w3)], [(0, 1), (1, 0, 2)])
    for c in (first, second):  # block norms spread over two decades, as sparse training leaves them
        c.apply_multiplier(10 ** (-2 * torch.rand(c.grid_shape, generator=g)))
    return [w1, bn, w2, w3], [first, second]


def _taus(couplings: list[BlockCoupling], zeroed: float = 0.25) -> list[torch.Tensor]:
    """Thresholds that zero about ``zeroed`` of each coupling's blocks (and shrink the rest)."""
    out = []
    for c in couplings:
        norms = c.norms().flatten()
        out.append(torch.full(c.grid_shape, float(norms.sort().values[int(zeroed * norms.numel())])))
    return out


def _one_by_one(couplings: list[BlockCoupling], taus: list[torch.Tensor], eps: float | None = None) -> None:
    for c, t in zip(couplings, taus):
        c.soft_threshold(t, eps=eps)


@pytest.mark.parametrize("reverse", [False, True], ids=["rows-first", "columns-first"])
def test_matches_calls_in_order(reverse: bool) -> None:
    ours, cs = _chain()
    theirs, cs2 = _chain()
    if reverse:  # the shared weight's columns group runs second: it must see the rows already scaled
        cs, cs2 = cs[::-1], cs2[::-1]
    taus = _taus(cs)
    soft_threshold_all(cs, taus)
    _one_by_one(cs2, taus)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(bool((c.norms() == 0).any()) for c in cs)  # some blocks died
    assert all(bool((c.norms() > 0).any()) for c in cs)  # and some survived


def test_eps_and_flat_thresholds_as_in_soft_threshold() -> None:
    ours, cs = _chain(1)
    theirs, cs2 = _chain(1)
    taus = [t.flatten() for t in _taus(cs, 0.1)]
    soft_threshold_all(cs, taus, eps=0.5)
    _one_by_one(cs2, taus, eps=0.5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unfused_layouts_fall_back_to_calls_in_order() -> None:
    """A parameter twice in one coupling, and a permuted part (rows copied out), take the one-by-one path."""
    g = torch.Generator().manual_seed(2)
    w, v = torch.randn(6, 6, generator=g), torch.randn(6, 4, generator=g)
    w2, v2 = w.clone(), v.clone()

    def build(w: torch.Tensor, v: torch.Tensor) -> list[BlockCoupling]:
        both = BlockCoupling([BlockSpec(w, (1, -1)), BlockSpec(w, (-1, 1))], [(0, 1), (1, 0)])
        permuted = BlockCoupling([BlockSpec(View(v, (2, 3, 4), (12, 4, 1)), (1, 1, -1))], [(1, 0, 2)])
        top, bottom = (BlockCoupling([BlockSpec(View(v, (3, 4), (4, 1), 12 * h), (1, -1))]) for h in (0, 1))
        return [both, permuted, top, bottom]  # the last two: disjoint slices of one parameter

    cs, cs2 = build(w, v), build(w2, v2)
    taus = _taus(cs, 0.3)
    soft_threshold_all(cs, taus)
    _one_by_one(cs2, taus)
    assert torch.equal(w, w2) and torch.equal(v, v2)


def test_bound_plan_matches_calls_in_order() -> None:
    """Every prunable group of bind(plan(resnet18)): BatchNorm vectors, residual groups, 3x3 and 1x1 convs, fc columns."""
    model = torchvision.models.resnet18(num_classes=10)
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    cs = [skg.bind(plan, model)[g.name] for g in plan.prunable]
    twin = torchvision.models.resnet18(num_classes=10)
    twin.load_state_dict(model.state_dict())
    cs2 = [skg.bind(plan, twin)[g.name] for g in plan.prunable]
    taus = _taus(cs, 0.05)
    soft_threshold_all(cs, taus)
    _one_by_one(cs2, taus)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert sum(int((c.norms() == 0).sum()) for c in cs) > 0


def test_bad_input_is_named() -> None:
    _, cs = _chain()
    taus = _taus(cs)
    with pytest.raises(SparseKitError, match="2 couplings"):
        soft_threshold_all(cs, taus[:1])
    with pytest.raises(SparseKitError, match="non-negative"):
        soft_threshold_all(cs, [taus[0], -taus[1]])
    with pytest.raises(ShapeMismatchError, match="block_thresholds"):
        soft_threshold_all(cs, [taus[0], torch.ones(3)])


def test_repeated_calls_read_the_parameters_current_tensors() -> None:
    """The second call reuses the first's layout (cached by coupling identity) but over the tensors
    the parameters hold now: new storage (``p.data = ...``), then a dtype change (no longer fused)."""
    ws, cs = _chain(3)
    ws2, cs2 = _chain(3)
    taus = _taus(cs, 0.1)
    for change in (None, "storage", "dtype"):
        if change == "storage":
            for w in (ws[2], ws2[2]):
                w.data = w.detach().clone().mul_(3.0)
        elif change == "dtype":
            for w in (ws[1], ws2[1]):
                w.data = w.detach().double()
        before = [w.clone() for w in ws + ws2]
        soft_threshold_all(cs, taus)
        _one_by_one(cs2, taus)  # the calls in order use the cache too: check both moved the live tensors
        assert not any(torch.equal(w, b) for w, b in zip(ws + ws2, before))
        for a, b in zip(ws, ws2):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ws[1].dtype == torch.float64 and bool((ws[2] == 0).any())


@pytest.mark.parametrize("kernels", ["eager", "native"])
def test_threads_across_weights_give_the_one_thread_bits(monkeypatch: pytest.MonkeyPatch, kernels: str) -> None:
    """With 2 intra-op threads the weights' reads and writes run on 2 workers (one intra-op thread
    each; the big 3x3 weights in row chunks), the calling thread's own kernels on one intra-op
    thread meanwhile: the same bits as the one-thread path, and torch's thread count is left as it was.
    Eager kernels (``sweeps.sums_split``) and the native program (``native_plan``, its own 2 threads) alike."""
    from sparsekit_graph.engine import batch, native, native_plan, sweeps, workers

    seen: list[int] = []  # the calling thread's intra-op threads while it hands the reads to the workers
    monkeypatch.setattr(native, "_state", {**native._state, "on": kernels == "native"})
    if kernels == "native":
        assert native.enabled(torch.zeros(2, 2)), native._state["broken"]
        run = native_plan.Program.run

        def spy(self: native_plan.Program, taus: list, floor: float, threads: int) -> torch.Tensor:
            if threads == 2:  # the 2-thread call: the caller's own kernels on one intra-op thread meanwhile
                seen.append(torch.get_num_threads())
            return run(self, taus, floor, threads)

        monkeypatch.setattr(native_plan.Program, "run", spy)
    else:
        split = sweeps.sums_split
        monkeypatch.setattr(sweeps, "sums_split", lambda *a: (seen.append(torch.get_num_threads()), split(*a))[1])

    model = torchvision.models.resnet18(num_classes=10)
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    twin = torchvision.models.resnet18(num_classes=10)
    twin.load_state_dict(model.state_dict())
    cs, cs2 = ([skg.bind(plan, m)[g.name] for g in plan.prunable] for m in (model, twin))
    taus = _taus(cs, 0.05)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        soft_threshold_all(cs2, taus)  # one thread: no workers
        torch.set_num_threads(2)
        monkeypatch.setattr(batch, "SPLIT", True)
        soft_threshold_all(cs, taus)
        assert torch.get_num_threads() == 2 and (os.getpid(), 2) in workers._POOLS
        assert seen and set(seen) == {1}
    finally:
        torch.set_num_threads(before)
    assert any(p.numel() > sweeps.CHUNK and p.dim() == 4 and p.shape[-1] == 3 for p in model.parameters())
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nap_team_leaves_torch_thread_count(n: int) -> None:
    """Putting the caller's OpenMP team to sleep (a fill on n + 1 threads where n fill the CPUs)
    leaves torch's thread count as it was, and kernels after it still run and agree."""
    from sparsekit_graph.engine import workers

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        x = torch.randn(1 << 18)
        want = x.square().sum()
        workers.nap_team(n)
        assert torch.get_num_threads() == n
        torch.testing.assert_close(x.square().sum(), want)
        with workers.caller_on_one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
