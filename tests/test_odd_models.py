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
