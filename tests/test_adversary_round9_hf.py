"""Adversary round 9 (issue 7): timm and Hugging Face models built from configs (no download).

Each finding of ``/tmp/adv9hf`` in miniature where one exists (default run), else on the small
library model (``@pytest.mark.slow``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn


class LenNorm2d(nn.Module):
    """timm's ``RmsNorm2d`` / ``SimpleNorm``: ``rms_norm2d(x, self.normalized_shape, ...)`` opens
    with ``assert len(normalized_shape) == 1``, the only use of the tuple it reads."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.normalized_shape = (channels,)
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        assert len(self.normalized_shape) == 1
        v = x.pow(2).mean(1, keepdim=True)
        return x * torch.rsqrt(v + 1e-6) * self.weight.reshape(1, -1, 1, 1)


class LenNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm, self.fc = nn.Conv2d(3, 16, 3, padding=1), LenNorm2d(16), nn.Linear(16, 4)
        self.up, self.down = nn.Conv2d(16, 24, 1), nn.Conv2d(24, 16, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.stem(x))
        return self.fc(self.down(torch.relu(self.up(h))).mean((2, 3)))


def test_len_of_a_size_tuple_is_no_control_flow_on_its_sizes(tmp_path: Path) -> None:
    """``len(self.normalized_shape)`` (the number of axes, which pruning never changes) reached
    the tuple through our stand-in for ``builtins.len``, whose frame hid the model's own call:
    the read looked unused, "a use the traced graph does not hold", and pinned the stem (timm
    RmsNorm2d, SimpleNorm: nothing prunable)."""
    torch.manual_seed(0)
    result = check_oracle(LenNormNet().eval(), torch.randn(2, 3, 8, 8), tmp_path)
    groups = {g.name: g for g in result.plan.groups}
    assert groups["stem:out"].prunable and not groups["stem:out"].zero_invariant  # an RMS over the channels: not zero-invariant
