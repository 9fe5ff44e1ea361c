"""Round 24 of the adversaries (issue 7)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg


class TrainOnlyOnCpu(nn.Module):
    """Code only training runs, which also makes a tensor on the CPU (no meta copy runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it (the eval forward only)
            x = x.contiguous()
        h = torch.relu(self.a(x))
        if self.training:
            b, c = h.shape
            h = h.view(b, c // 4, 4).mean(-1).repeat(1, 4) + torch.arange(c) * 0.0
        return self.b(h)


def test_train_only_code_is_tried_with_weights_where_meta_cannot_run_it() -> None:
    """The model's own train forward fails on a meta copy (``torch.arange(c)`` is made on the
    CPU): the pruned copies' train forwards were not tried, and the pruned model failed in
    ``train()``. They run on copies with their weights and the real inputs now."""
    torch.manual_seed(0)
    model = TrainOnlyOnCpu().eval()
    plan = skg.plan(model, torch.randn(3, 8))
    assert plan.prunable == []
    assert "train forward fails" in (plan.group("a:out").reason or "")


class TrainOnlyThirds(TrainOnlyOnCpu):
    """Training views the width as three parts: the probe's count (3 of 18) runs, 11 does not."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 18), nn.Linear(18, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            x = x.contiguous()
        h = torch.relu(self.a(x))
        if self.training:
            b, c = h.shape
            h = h.view(b, 3, -1).flatten(1) + torch.arange(c) * 0.0
        return self.b(h)


def test_prune_tries_train_only_code_with_weights() -> None:
    """``prune`` checks the pruned model's train forward with its weights where a meta copy of
    the model cannot run it, and refuses a count the training code cannot take."""
    torch.manual_seed(0)
    model = TrainOnlyThirds().eval()
    plan = skg.plan(model, torch.randn(3, 8))
    assert [g.name for g in plan.prunable] == ["a:out"]
    with pytest.raises(skg.SparseKitError, match="train forward fails"):
        skg.prune(model, plan, masks={"a:out": torch.arange(18) < 7})
    small = skg.prune(model, plan, masks={"a:out": torch.arange(18) < 9}).model.train()  # keeps 9
    assert small(torch.randn(3, 8)).shape == (3, 4)
