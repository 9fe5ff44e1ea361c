"""The Euclidean engine and ``ProximalStep``'s SGD step read nothing back to the host in the steady state.

On CUDA every read-back (``bool(t)``, ``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing,
ops whose output shape depends on values) stalls the host until the queue drains. ``NoSync`` records
such ops on CPU: aten ops tagged ``data_dependent_output`` or ``dynamic_output_shape`` (except
indexing by integer tensors, which does not sync) and the tensor methods that copy values to the
host without an aten op. The sync-free checks are chosen on CUDA tensors; ``batch.SYNC_FREE = True``
takes them on CPU here. Results must equal the existing (syncing) path bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import sparsekit_graph as skg
from sparsekit_graph import ProximalStep
from sparsekit_graph.engine import BlockCoupling, BlockSpec, View, batch, soft_threshold_all
from sparsekit_graph.errors import SparseKitError
from sparsekit_graph.train.graphed import GraphedStep

_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_SYNC_OPS = {torch.ops.aten.is_nonzero.default, torch.ops.aten.nonzero_numpy.default}
_HOST_METHODS = ("tolist", "numpy", "cpu", "__array__")


def _bool_index(args: Any) -> bool:
    tensors = [t for t in (args if isinstance(args, list | tuple) else [args]) if isinstance(t, Tensor)]
    return any(t.dtype in (torch.bool, torch.uint8) for t in tensors)


class NoSync(TorchDispatchMode):
    """Records every op that would synchronise the host with a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in (torch.ops.aten.index, torch.ops.aten.index_put_, torch.ops.aten.index_put, torch.ops.aten._index_put_impl_):
            if _bool_index(args[1]):
                self.syncs.append(f"{func} with a boolean mask")
        elif packet is torch.ops.aten.repeat_interleave:
            if kwargs.get("output_size") is None and isinstance(args[-1] if len(args) > 1 else args[0], Tensor):
                self.syncs.append(str(func))
        elif func in _SYNC_OPS or any(t in func.tags for t in _TAGS):
            self.syncs.append(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def nosync(monkeypatch: pytest.MonkeyPatch) -> Iterator[NoSync]:
    """A ``NoSync`` to enter, with the host-copying tensor methods recorded into it too."""
    mode = NoSync()
    for name in _HOST_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapped(self: Tensor, *a: Any, _f: Any = original, _n: str = name, **k: Any) -> Any:
            if mode in _active():
                mode.syncs.append(f"Tensor.{_n}")
            return _f(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    monkeypatch.setattr(batch, "SYNC_FREE", True)
    torch.set_num_threads(1)
    yield mode


def _active() -> list[TorchDispatchMode]:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return list(_get_current_dispatch_mode_stack())


class _Net(nn.Module):
    """3x3 and 1x1 convs each the rows of one group and the columns of the next, BatchNorms, a residual, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.c3, self.b3 = nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c4 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.b1(self.c1(x)))
        h = h + self.b3(self.c3(F.relu(self.b2(self.c2(h)))))
        return self.fc(F.relu(self.c4(F.relu(h))).mean((2, 3)))


_X = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
_Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))


def _model() -> tuple[nn.Module, skg.Plan]:
    torch.manual_seed(0)
    m = _Net()
    return m, skg.plan(m, _X[:1])


def _couplings(m: nn.Module, plan: skg.Plan) -> list[BlockCoupling]:
    """Every prunable group of the plan (the fused pattern), then one coupling outside it (called on its
    own: c3's square slice as rows and as columns, one parameter twice in a coupling)."""
    bound = skg.bind(plan, m)
    view = View(m.c3.weight, (16, 16, 9), (216, 9, 1))
    odd = BlockCoupling([BlockSpec(view, (1, -1, -1)), BlockSpec(view, (-1, 1, -1))], [[0, 1, 2], [1, 0, 2]], name="odd")
    return [bound[g.name] for g in plan.prunable] + [odd]


def _call(cs: list[BlockCoupling], taus: list[Tensor]) -> list[Tensor]:
    """``soft_threshold_all`` of the plan's groups, then of the odd coupling (the per-coupling path)."""
    return soft_threshold_all(cs[:-1], taus[:-1]) + soft_threshold_all(cs[-1:], taus[-1:])


def _taus(cs: list) -> list[Tensor]:
    out = []
    for c in cs:
        n = c.norms().flatten()
        out.append((n.sort().values[max(1, n.numel() // 4)] * torch.ones(c.grid_shape)).reshape(c.grid_shape))
    return out


def test_detector_catches_syncs(nosync: NoSync) -> None:
    t, idx = torch.arange(6.0), torch.tensor([0, 2])
    with nosync:
        t[idx].sum()  # integer indexing: no sync
        torch.repeat_interleave(t, 2)  # an int count: no sync
    assert nosync.syncs == []
    with nosync:
        bool(t.sum() > 0)
        t.max().item()
        t.tolist()
        t.nonzero()
        t[t > 2]
        t.repeat_interleave(torch.tensor([1, 0, 2, 1, 1, 1]))
    assert len(nosync.syncs) >= 6, nosync.syncs
    assert any("nonzero" in s for s in nosync.syncs) and "Tensor.tolist" in nosync.syncs


def test_soft_threshold_all_has_no_sync_after_the_first_call(nosync: NoSync) -> None:
    m, plan = _model()
    cs = _couplings(m, plan)
    taus = _taus(cs)
    _call(cs, taus)  # builds and caches the layout
    with nosync:
        killed = _call(cs, taus)
    assert nosync.syncs == [], nosync.syncs
    assert all(k.dtype == torch.bool for k in killed) and sum(int(k.sum()) for k in killed) > 0


def test_sync_free_checks_give_the_same_bits() -> None:
    results = []
    for free in (False, True):
        m, plan = _model()
        cs = _couplings(m, plan)
        taus = _taus(cs)
        batch.SYNC_FREE = free
        try:
            killed = [_call(cs, taus) for _ in range(2)]
        finally:
            batch.SYNC_FREE = None
        results.append(([p.detach().clone() for p in m.parameters()], killed))
    (a, ka), (b, kb) = results
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for ks, ls in zip(ka, kb) for x, y in zip(ks, ls))
    # and the same as the couplings one by one in float64
    m, plan = _model()
    cs = _couplings(m, plan)
    taus = _taus(cs)
    ref = copy.deepcopy(m).double()
    rcs = _couplings(ref, plan)
    for c, t in zip(rcs, taus):
        c.soft_threshold(t.double())
    _call(cs, taus)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert float((p.detach().double() - q.detach()).norm()) <= 1e-5 * max(float(q.detach().norm()), 1e-30)


def test_negative_thresholds_on_the_sync_free_path(nosync: NoSync) -> None:
    m, plan = _model()
    cs = _couplings(m, plan)
    taus = _taus(cs)
    taus[1] = -taus[1]
    batch.SYNC_FREE = False
    with pytest.raises(SparseKitError, match="non-negative"):
        _call(cs, taus)
    batch.SYNC_FREE = True  # a device-side assert: raised at once on CPU, at the next sync on CUDA
    with pytest.raises(RuntimeError, match="non-negative"):
        _call(cs, taus)


def _train(m: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    F.cross_entropy(m(_X), _Y).backward()
    opt.step()


def _sgd(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)


def test_proximal_step_has_no_sync_after_the_first_step(nosync: NoSync) -> None:
    m, plan = _model()
    opt = _sgd(m)
    prox = ProximalStep(plan, m, opt, lam=0.5)
    _train(m, opt)
    prox.step()
    for _ in range(2):
        _train(m, opt)
        with nosync:
            assert prox.step()
    assert nosync.syncs == [], nosync.syncs
    assert prox.stats().channels_zero > 0  # the steps killed channels (their momentum reset ran)


def _steps(free: bool | None, graphed: bool, lrs: list[float]) -> tuple[list[Tensor], list[Tensor], list[dict]]:
    m, plan = _model()
    opt = _sgd(m)
    prox = ProximalStep(plan, m, opt, lam=0.5, weights={plan.prunable[0].name: 0.0})  # one group never penalised
    g = GraphedStep(prox, prox._groups) if graphed else None
    batch.SYNC_FREE = free
    masks = []
    try:
        for lr in lrs:
            for pg in opt.param_groups:
                pg["lr"] = lr
            _train(m, opt)
            if g is None:
                prox.step()
            else:  # what the CUDA graph holds, run eagerly
                g._fill([prox.lam * prox._lr(gr) for gr in prox._groups])
                g.body()
            masks.append(prox.masks())
    finally:
        batch.SYNC_FREE = None
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in m.parameters()]
    return [p.detach().clone() for p in m.parameters()], bufs, masks


def test_sync_free_step_and_graph_body_equal_the_existing_step() -> None:
    lrs = [0.05, 0.05, 0.0, 0.08, 0.05]  # lr 0: a step that changes nothing; a new lr: no recapture needed
    ref = _steps(False, False, lrs)
    assert any(bool(v.any()) for v in ref[2][-1].values())
    for free, graphed in ((True, False), (True, True)):
        got = _steps(free, graphed, lrs)
        assert all(torch.equal(a, b) for a, b in zip(ref[0], got[0])), (free, graphed)
        assert all(torch.equal(a, b) for a, b in zip(ref[1], got[1])), (free, graphed)
        assert all(torch.equal(x[k], y[k]) for x, y in zip(ref[2], got[2]) for k in x)


def test_cuda_graph_needs_cuda_and_sgd() -> None:
    m, plan = _model()
    with pytest.raises(SparseKitError, match="not a CUDA device"):
        ProximalStep(plan, m, _sgd(m), lam=0.1, cuda_graph=True)
    with pytest.raises(SparseKitError, match="only the Euclidean step"):
        ProximalStep(plan, m, torch.optim.AdamW(m.parameters()), lam=0.1, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steady_state_and_graph_match() -> None:
    outs = []
    for graph in (False, True):
        m, plan = _model()
        m.cuda()
        opt = _sgd(m)
        prox = ProximalStep(plan, m, opt, lam=0.5, cuda_graph=graph)
        x, y = _X.cuda(), _Y.cuda()
        for i in range(4):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
            if i >= 1:
                torch.cuda.set_sync_debug_mode("error")
            try:
                prox.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        if graph:
            assert prox._graphed.captures == 1 and prox._graphed.replays == 3
        outs.append([p.detach().cpu() for p in m.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*outs))
