"""Conditioned ``soft_threshold_all``: couplings solved in waves equal the calls one by one, in order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchvision

import sparsekit_graph as skg
from sparsekit_graph.engine import BlockCoupling, SparseKitError, fused, soft_threshold_all
from sparsekit_graph.engine.waves import waves


@pytest.fixture
def eager() -> Iterator[None]:
    """Eager kernels (no compile on a cold cache; the compiled ones have their own tests), one
    thread (many small kernels: a second thread only waits when the machine is shared)."""
    old, threads = fused.set_kernel_mode("eager"), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    fused.set_kernel_mode(old)
    torch.set_num_threads(threads)


def _bound(model: torch.nn.Module) -> list[BlockCoupling]:
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    return [skg.bind(plan, model)[g.name] for g in plan.prunable]


def _twins() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    twin = torchvision.models.resnet18(num_classes=10)
    twin.load_state_dict(model.state_dict())
    return model, twin


def _conditioners(model: torch.nn.Module, cs: list[BlockCoupling]) -> list[dict]:
    """Conditioners spread over two decades, one tensor per parameter."""
    g = torch.Generator().manual_seed(1)
    full = {p: torch.exp(torch.randn(p.shape, generator=g)) for p in model.parameters()}
    return [{s: s.view.window(full[s.view.param]) for s in c.specs} for c in cs]


def _taus(cs: list[BlockCoupling], hs: list[dict], zeroed: float) -> list[torch.Tensor]:
    """Per-block thresholds that zero about ``zeroed`` of each coupling's blocks (many near death)."""
    out = []
    for c, h in zip(cs, hs):
        norms = c.norms({s: h[s] * s.data for s in c.specs}).flatten()
        k = norms.sort().values[int(zeroed * norms.numel())]
        out.append(k * (0.5 + torch.rand(norms.shape, generator=torch.Generator().manual_seed(c.numblk()))))
    return out


def test_waves_keep_the_order_of_couplings_that_share_a_parameter() -> None:
    cs = _bound(torchvision.models.resnet18(num_classes=10))
    ws = waves(cs)
    assert sorted(k for w in ws for k in w) == list(range(len(cs)))
    wave_of = {k: i for i, w in enumerate(ws) for k in w}
    params = [{id(s.view.param) for s in c.specs} for c in cs]
    for j in range(len(cs)):
        for k in range(j + 1, len(cs)):
            if params[j] & params[k]:
                assert wave_of[j] < wave_of[k]
    assert len(ws) < len(cs) and max(len(w) for w in ws) > 1  # some groups really are solved together


@pytest.mark.parametrize("zeroed", [0.05, 0.3])
def test_bound_plan_matches_calls_in_order(eager: None, zeroed: float) -> None:
    """Every prunable group of bind(plan(resnet18)): BatchNorm vectors, residual groups, 3x3 and
    1x1 convs, fc columns, with per-block thresholds (some blocks within a hair of death)."""
    model, twin = _twins()
    cs, cs2 = _bound(model), _bound(twin)
    hs, hs2 = _conditioners(model, cs), _conditioners(twin, cs2)
    taus = _taus(cs, hs, zeroed)
    soft_threshold_all(cs, taus, hs)
    for c, t, h in zip(cs2, taus, hs2):
        c.soft_threshold(t, h)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=name)
    dead = sum(int((c.norms() == 0).sum()) for c in cs)
    assert dead == sum(int((c.norms() == 0).sum()) for c in cs2) and dead > 0


def test_bad_conditioner_changes_nothing(eager: None) -> None:
    model, _ = _twins()
    cs = _bound(model)
    hs = _conditioners(model, cs)
    taus = _taus(cs, hs, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = cs[-1].specs[0]
    hs[-1] = {**hs[-1], spec: hs[-1][spec] * 0}  # the last coupling's conditioner: not positive
    with pytest.raises(SparseKitError, match="strictly positive"):
        soft_threshold_all(cs, taus, hs)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(SparseKitError, match="conditioners"):
        soft_threshold_all(cs, taus, hs[:-1])
