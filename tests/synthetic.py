"""Synthetic deep CNNs of any depth, for scaling benchmarks and work-count tests.

Test/benchmark code, not part of the package: ``tests/test_scaling.py`` imports it as ``synthetic``
(pytest puts ``tests/`` on ``sys.path``), ``benchmarks/scaling.py`` by adding ``tests/`` to ``sys.path``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["deep_cnn"]


class _Deep(nn.Module):
    """Conv-BN-ReLU layers; a residual add every 2 layers, a concat + chunk every 8."""

    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(layers))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        skip = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = torch.relu(bn(conv(x)))
            if i % 2 == 1:
                x = x + skip
                skip = x
            if i % 8 == 7:
                x = torch.cat([x, skip], dim=1).chunk(2, dim=1)[0]
        return self.head(x.mean((2, 3)))


def deep_cnn(layers: int, width: int = 16, size: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A ``layers``-deep CNN and an input for it."""
    return _Deep(layers, width).eval(), torch.randn(1, 3, size, size)
