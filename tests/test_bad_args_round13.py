"""Arguments of the wrong kind to ``plan`` and ``prune`` (adversary round 13): a ``PlanError``
naming the argument, nothing of the model changed; numpy and 0-d tensor numbers still accepted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit_graph as skg
from sparsekit_graph.errors import PlanError


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, skg.Plan]:
    torch.manual_seed(0)
    model = _Net().eval()
    return model, skg.plan(model, torch.randn(2, 3, 8, 8))


_BAD: dict[str, tuple[Callable[[nn.Module, Any], Any], str]] = {
    "ratio as a string": (lambda m, p: skg.prune(m, p, ratio="0.5"), "ratio must be a number"),
    "round_to a float": (lambda m, p: skg.prune(m, p, ratio=0.5, round_to=2.5), "round_to must be a positive integer"),
    "seed None": (lambda m, p: skg.prune(m, p, ratio=0.5, importance="random", seed=None), "seed must be an integer"),
    "masks a list": (lambda m, p: skg.prune(m, p, masks=[1]), "masks must map group names"),
    "a mask on meta": (
        lambda m, p: skg.prune(m, p, masks={"a:out": torch.zeros(8, dtype=torch.bool, device="meta")}),
        r"masks\['a:out'\]: a mask on the meta device",
    ),
    "importance returns None": (lambda m, p: skg.prune(m, p, ratio=0.5, importance=lambda ctx: None), "must return a dict"),
    "plan None": (lambda m, p: skg.prune(m, None, ratio=0.5), "plan must be a Plan"),
    "prune a function": (lambda m, p: skg.prune(lambda t: t, p, ratio=0.5), "model must be an nn.Module"),
    "plan a function": (lambda m, p: skg.plan(lambda t: t, torch.randn(1, 3, 8, 8)), "model must be an nn.Module"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_wrong_kinds_are_named_and_change_nothing(net: tuple[nn.Module, skg.Plan], case: str) -> None:
    model, plan = net
    before = {k: v.clone() for k, v in model.state_dict().items()}
    call, message = _BAD[case]
    with pytest.raises(PlanError, match=message):
        call(model, plan)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("ratio", "round_to", "seed"),
    [(np.float32(0.5), np.int64(2), np.int32(3)), (torch.tensor(0.5), torch.tensor(2), torch.tensor(3)), (0.5, 2, 3)],
)
def test_numpy_and_tensor_numbers_prune_as_python_ones(
    net: tuple[nn.Module, skg.Plan], ratio: Any, round_to: Any, seed: Any
) -> None:
    model, plan = net
    got = skg.prune(model, plan, ratio=ratio, round_to=round_to, importance="random", seed=seed)
    want = skg.prune(model, plan, ratio=0.5, round_to=2, importance="random", seed=3)
    assert all(torch.equal(got.masks[k], want.masks[k]) for k in want.masks)
    assert got.report.kept == want.report.kept
