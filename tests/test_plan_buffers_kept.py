"""plan() leaves a model's buffers as they were, even where its forward changes them in place while traced
(``trace._mode`` writes back every buffer whose version counter moved)."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit_graph as skg


class _Counts(nn.Module):
    """A forward that changes a real buffer while it is traced (it reaches it through
    ``_buffers``, which torch.fx does not proxy)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.register_buffer("seen", torch.zeros(3))
        self.register_buffer("calls", torch.tensor(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._buffers["seen"].add_(1.0)
        self._buffers["calls"].add_(1)
        return self.conv(x)


def test_plan_leaves_buffers_a_traced_forward_changed_in_place_as_they_were() -> None:
    model = _Counts().eval()
    plan = skg.plan(model, torch.randn(1, 3, 8, 8))
    assert "conv:out" in [g.name for g in plan.groups]
    assert torch.equal(model.seen, torch.zeros(3))
    assert int(model.calls) == 0
