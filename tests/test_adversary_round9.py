"""Wrong plans and spelling splits adversary round 9 found in hand-written models (issue 7).

Harness and the full list of models tried: /tmp/adv9/REPORT.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg

# --- a weight computed from parameters, passed to a product: every spelling plans as F.linear ---------

_C = 8

_WEIGHTS: dict[str, Callable[[nn.Module], Tensor]] = {
    "masked_by_buffer": lambda m: m.a * m.mask[:, None],
    "where_buffer": lambda m: torch.where(m.keep[:, None], m.a, m.b),
    "softmax_rows": lambda m: m.a.softmax(0),
}

_PRODUCTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "linear": lambda t, w: F.linear(t, w),
    "matmul_T": lambda t, w: t @ w.T,
    "matmul_t": lambda t, w: torch.matmul(t, w.t()),
    "einsum": lambda t, w: torch.einsum("...c,oc->...o", t, w),
}


class _ComputedWeight(nn.Module):
    """A conv stem, channels-last, a product with a weight the forward computes, a head."""

    def __init__(self, weight: Callable[[nn.Module], Tensor], product: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.weight_of, self.product = weight, product
        self.stem = nn.Conv2d(3, _C, 3, padding=1)
        self.a = nn.Parameter(torch.randn(_C, _C) * 0.3)
        self.b = nn.Parameter(torch.randn(_C, _C) * 0.3)
        self.register_buffer("mask", torch.rand(_C) + 0.5)
        self.register_buffer("keep", torch.arange(_C) % 2 == 0, persistent=False)
        self.head = nn.Linear(_C, 4)

    def forward(self, x: Tensor) -> Tensor:
        t = F.relu(self.stem(x)).permute(0, 2, 3, 1)
        return self.head(F.relu(self.product(t, self.weight_of(self))).mean((1, 2)))


def _signature(plan: skg.Plan) -> list[tuple]:
    return sorted((g.name, g.size, g.prunable, g.zero_invariant) for g in plan.groups)


@pytest.mark.parametrize("weight", list(_WEIGHTS))
def test_computed_weight_plans_alike_in_every_product_spelling(weight: str) -> None:
    """``x @ (w * mask).T`` and ``einsum(.., w + b)`` pinned the weight's rows ("no parameter
    produces these channels") where ``F.linear(x, w * mask)`` pruned them: a product produced
    channels only from a parameter or a view of one. A weight computed from parameters alone
    produces them in every spelling; the plans agree and every prune is exact where claimed."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    plans = {}
    for name, product in _PRODUCTS.items():
        model = _ComputedWeight(_WEIGHTS[weight], product).eval()
        plans[name] = plan = skg.plan(model, x)
        group = plan.group("a:0")
        assert group.prunable, (name, group.reason)
        removed = torch.zeros(_C, dtype=torch.bool)
        removed[1::3] = True
        pruned = skg.prune(model, plan, masks={"a:0": removed}).model
        assert pruned.a.shape == (_C - int(removed.sum()), _C)
        if group.zero_invariant:
            dense = copy.deepcopy(model)
            skg.bind(plan, dense)["a:0"].apply_mask(removed)
            torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)
    first = _signature(plans["linear"])
    assert all(_signature(p) == first for p in plans.values()), {k: _signature(p) for k, p in plans.items()}


# --- a tensor's values read as a number (.item()): torch.export plans it, as with a device check ------


class _ItemScale(nn.Module):
    """A conv whose output is scaled by a statistic over all its channels, read with ``.item()``."""

    def __init__(self, statistic: Callable[[Tensor], Tensor], gate: bool) -> None:
        super().__init__()
        self.statistic, self.gate = statistic, gate
        self.stem = nn.Conv2d(3, _C, 3, padding=1)
        self.c = nn.Conv2d(_C, _C, 1)
        self.head = nn.Conv2d(_C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        if self.gate and h.is_cuda:  # a device check: torch.fx cannot trace it, torch.export does
            h = h + 0
        h = h * self.statistic(h).item()
        return self.head(self.c(h)).mean((2, 3))


@pytest.mark.parametrize(
    ("statistic", "exact"),
    [pytest.param(lambda h: h.max(), False, id="max"), pytest.param(lambda h: F.relu(h).sum() * 0.01 + 1, True, id="relu_sum")],
)
def test_item_of_a_statistic_plans_as_under_export(statistic: Callable[[Tensor], Tensor], exact: bool) -> None:
    """``h * h.max().item()`` was refused (TraceError: "Tensor.item() cannot be called on meta
    tensors": torch.fx traced it, meta shapes could not run it) while the same model behind a
    device check planned through torch.export. Both now plan alike, and the plan holds: every
    prune runs, and the claims of zero-invariance are exact (``max`` over the channels is not)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    plain, gated = _ItemScale(statistic, False).eval(), _ItemScale(statistic, True).eval()
    gated.load_state_dict(plain.state_dict())
    plan = skg.plan(plain, x)
    assert _signature(plan) == _signature(skg.plan(gated, x))
    assert [g.name for g in plan.prunable] == ["stem:out", "c:out"]
    removed = torch.zeros(_C, dtype=torch.bool)
    removed[::3] = True
    for group in plan.prunable:
        pruned = skg.prune(plain, plan, masks={group.name: removed}).model
        dense = copy.deepcopy(plain)
        skg.bind(plan, dense)[group.name].apply_mask(removed)
        if group.zero_invariant:
            torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)
        assert pruned(x).shape == (2, 4)
    assert plan.group("stem:out").zero_invariant is exact  # a masked channel's zeros can be the max


# --- torch.export: a functional norm's normalized_shape read off the tensor ---------------------------


class _NormShape(nn.Module):
    """``F.layer_norm`` channels-last with the shape as the code gives it, behind a device check."""

    def __init__(self, shape: Callable[[nn.Module, Tensor], tuple[int, ...]]) -> None:
        super().__init__()
        self.shape = shape
        self.stem = nn.Conv2d(3, _C, 3, padding=1)
        self.w = nn.Parameter(torch.rand(_C) + 0.5)
        self.b = nn.Parameter(torch.randn(_C) * 0.1)
        self.head = nn.Linear(_C, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        if h.is_cuda:  # torch.fx cannot trace it: torch.export does
            h = h + 0
        t = h.permute(0, 2, 3, 1)
        return self.head(F.layer_norm(t, self.shape(self, t), self.w, self.b).mean((1, 2)))


@pytest.mark.parametrize(
    ("shape", "prunable"),
    [
        pytest.param(lambda m, t: t.shape[-1:], True, id="shape_slice"),
        pytest.param(lambda m, t: m.w.shape, True, id="weight_shape"),
        pytest.param(lambda m, t: (8,), False, id="literal"),
    ],
)
def test_layer_norm_shape_read_off_a_tensor_under_export(shape: Callable, prunable: bool) -> None:
    """Under torch.export ``F.layer_norm(t, t.shape[-1:], w, b)`` pinned the channels ("literal
    normalized_shape": the export writes the read as ``[8]``) where torch.fx pruned them. The
    shape must equal the input's trailing axes, so it follows them; a literal of the code is
    caught by the re-trace of a pruned copy and still pins."""
    torch.manual_seed(0)
    model, x = _NormShape(shape).eval(), torch.randn(2, 3, 5, 5)
    plan = skg.plan(model, x)
    group = plan.group("stem:out")
    assert group.prunable is prunable, group.reason
    if prunable:
        assert skg.prune(model, plan, ratio=0.5).model(x).shape == (2, 4)
    else:
        assert "does not trace" in (group.reason or ""), group.reason
