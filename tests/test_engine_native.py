"""The optional C++ Euclidean kernels (``engine/native.py``): off by default, and when on, the same
prox as the eager kernels (sums equal to rounding, writes in the eager order)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import sparsekit_graph as skg
from sparsekit_graph.engine import native, soft_threshold_all


def test_off_by_default_builds_nothing() -> None:
    import os

    assert native._state["on"] == (os.environ.get("SPARSEKIT_GRAPH_EUCLID_KERNELS") == "native")  # off unless asked
    was = native.set_native(False)
    built = native._state["ext"]
    try:
        assert not native.enabled(torch.zeros(4, 4))
        assert native._state["ext"] is built  # asking while off builds nothing
    finally:
        native.set_native(was)


def _taus(couplings: list, zeroed: float) -> list[torch.Tensor]:
    out = []
    for c in couplings:
        norms = c.norms().flatten().sort().values
        k = int(zeroed * norms.numel())  # halfway between two blocks' norms: no block sits at its threshold
        out.append(torch.full(c.grid_shape, float(norms[k] + norms[k + 1]) / 2))
    return out


@pytest.mark.slow  # the first build compiles C++ (minutes on a busy 2-core machine)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernels_match_eager_over_a_plan(threads: int) -> None:
    """ResNet-18's plan: 3x3 weights shared by two groups (M), 1x1 rows and columns, fc columns."""
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for p in model.parameters():  # blocks of unequal norms: some die, the others shrink unequally
            p.mul_(10 ** (-2 * torch.rand(p.shape[:1])).reshape(-1, *[1] * (p.dim() - 1)))
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    twin = copy.deepcopy(model)
    groups = [g.name for g in plan.prunable]
    bound, bound2 = skg.bind(plan, model), skg.bind(plan, twin)
    cs, cs2 = [bound[n] for n in groups], [bound2[n] for n in groups]
    taus, before = _taus(cs, 0.05), torch.get_num_threads()
    was = native.set_native(True)
    try:
        torch.set_num_threads(threads)
        assert native.enabled(torch.zeros(4, 4)), native._state["broken"]
        killed = soft_threshold_all(cs, taus)
        native.set_native(False)
        killed2 = soft_threshold_all(cs2, taus)
    finally:
        native.set_native(was)
        torch.set_num_threads(before)
    assert sum(int(k.sum()) for k in killed) > 0
    for k, k2 in zip(killed, killed2):
        assert torch.equal(k, k2)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
