"""Odd models: low precision, shared layers, tied weights, raw parameters and buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import nn

import sparsekit_graph as skg


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_parameters(dtype: torch.dtype) -> None:
    model = Net().to(dtype)
    x = torch.randn(1, 3, 6, 6, dtype=dtype)
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable and plan.inputs[0].dtype == str(dtype).removeprefix("torch.")
    result = skg.prune(model, plan, ratio=0.5)
    assert result.model.a.weight.dtype == dtype and result.model.a.out_channels == 4
    couplings = skg.bind(plan, model)
    couplings["a:out"].soft_threshold(torch.full((8,), 0.01))
    assert model.a.weight.dtype == dtype


class Shared(nn.Module):
    """One conv applied twice: its input and output channels become one space."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.twice, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.twice(torch.relu(self.twice(self.stem(x)))))


def test_shared_module(tmp_path: Path) -> None:
    model = Shared()
    plan = skg.plan(model, torch.randn(1, 3, 5, 5))
    group = plan.group("stem:out")
    assert {(m.param, m.axis) for m in group.members} >= {("twice.weight", 0), ("twice.weight", 1)}
    check_oracle(model, torch.randn(2, 3, 5, 5), tmp_path, min_drop=0.0)


class Tied(nn.Module):
    """An MLP with a raw parameter and a raw buffer used directly in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(12, 6)
        self.dec = nn.Linear(6, 12)
        self.dec.weight = nn.Parameter(torch.randn(12, 6))
        self.mid = nn.Linear(6, 6)
        self.register_buffer("shift", torch.zeros(6))
        self.gain = nn.Parameter(torch.ones(6))

    def forward(self, x):
        h = torch.relu(self.mid(self.enc(x)) * self.gain + self.shift)
        return self.dec(h)


def test_raw_parameters_and_buffers_are_members(tmp_path: Path) -> None:
    model = Tied()
    plan = skg.plan(model, torch.randn(3, 12))
    group = plan.group("mid:out")
    assert {"gain", "shift", "mid.weight", "dec.weight"} <= {m.param for m in group.members}
    result = check_oracle(model, torch.randn(3, 12), tmp_path, min_drop=0.0)
    assert result.model.shift.shape == result.model.gain.shape == (3,)


def test_tied_weights_keep_one_name_and_stay_tied() -> None:
    class TiedLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.h, self.b = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 4)
            self.h2 = nn.Linear(8, 8)
            self.h2.weight = self.h.weight  # tied

        def forward(self, x):
            return self.b(torch.relu(self.h2(torch.relu(self.h(torch.relu(self.a(x)))))))

    model = TiedLinear()
    plan = skg.plan(model, torch.randn(2, 4))
    names = {m.param for g in plan.groups for m in g.members}
    assert "h.weight" in names and "h2.weight" not in names
    result = skg.prune(model, plan, ratio=0.5)
    assert result.model.h.weight is result.model.h2.weight
    assert result.model(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet10t"])
def test_timm_models_stay_untouched(name: str, tmp_path: Path) -> None:
    """timm's BatchNormAct2d reads ``self.training`` and counts batches while being traced."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=10)
    model.train()  # a user's model mid-training: the train-mode trace must not count a batch
    check_oracle(model, torch.randn(2, 3, 64, 64), tmp_path)


class WeightNormed(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        wrap = {
            "weight_norm": nn.utils.parametrizations.weight_norm,
            "spectral_norm": nn.utils.parametrizations.spectral_norm,
            "orthogonal": nn.utils.parametrizations.orthogonal,
        }[how]
        self.a, self.b = wrap(nn.Conv2d(3, 8, 3, padding=1)), wrap(nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_weight_norm_is_planned_through(tmp_path: Path) -> None:
    model = WeightNormed("weight_norm")
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    group = next(g for g in plan.groups if ("a.parametrizations.weight.original1", 0) in {(m.param, m.axis) for m in g.members})
    assert group.prunable and not group.zero_invariant  # a zeroed row divides by a zero norm
    params = {m.param for m in group.members}
    assert {"a.parametrizations.weight.original0", "b.parametrizations.weight.original1", "a.bias"} <= params
    small = skg.prune(model, plan, ratio=0.5).model
    assert small.a.out_channels == 4 and small.a.weight.shape == (4, 3, 3, 3)
    assert small(x).shape == (2, 2)


def test_other_parametrizations_pin_with_the_reason() -> None:
    plan = skg.plan(WeightNormed("orthogonal"), torch.randn(2, 3, 6, 6))
    assert not plan.prunable
    assert any("_Orthogonal" in (g.reason or "") for g in plan.groups)


def test_spectral_norm_is_planned_through() -> None:
    """``u`` and ``v`` are members beside the weight (``graph/spectral.py``)."""
    plan = skg.plan(WeightNormed("spectral_norm"), torch.randn(2, 3, 6, 6))
    group = next(g for g in plan.groups if ("a.parametrizations.weight.original", 0) in {(m.param, m.axis) for m in g.members})
    assert group.prunable and group.zero_invariant
    assert {"a.parametrizations.weight.0._u", "b.parametrizations.weight.0._v"} <= {m.param for m in group.members}


def test_weight_standardised_convolutions(tmp_path: Path) -> None:
    """timm StdConv2d / ScaledStdConv2d (BiT, NFNet): rows exact, fan-in not zero-invariant."""
    std_conv = pytest.importorskip("timm.layers.std_conv")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = std_conv.StdConv2d(3, 8, 3, padding=1), std_conv.ScaledStdConv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    model, x = Net(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    a, b = plan.group("a:out"), plan.group("b:out")
    assert a.prunable and not a.zero_invariant  # the fan-in statistics of b change
    assert b.prunable and b.zero_invariant and "b.gain" in {m.param for m in b.members}
    check_oracle(model, x, tmp_path, min_drop=0.0)
