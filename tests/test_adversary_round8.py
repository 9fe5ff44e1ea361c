"""Wrong plans adversary round 8 found in hand-written models (issue 7), fixed at their root.

Harness and the full list of models tried: /tmp/adv8/REPORT.md.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsekit_graph as skg

# --- complex parameters: importance norms of complex blocks -----------------------------------------


class _ComplexMLP(nn.Module):
    """Two complex ``Linear`` layers (``dtype=torch.cfloat``), the output read as magnitudes."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8, dtype=dtype)
        self.l2 = nn.Linear(8, 4, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.l1(x) * 0.5).abs()


@pytest.mark.parametrize("dtype", [torch.cfloat, torch.cdouble])
@pytest.mark.parametrize("importance", ["l2", "l1"])
def test_complex_layers_prune_by_ratio(dtype: torch.dtype, importance: str) -> None:
    """``prune(ratio=0.5)`` raised torch's RuntimeError ("linalg.vector_norm: dtype should be complex
    for complex inputs"): the block norms cast complex weights to float32. The norm of a complex
    block is the norm of its moduli; the kept channels are the largest ones."""
    torch.manual_seed(0)
    model = _ComplexMLP(dtype).eval()
    x = torch.randn(3, 6, dtype=dtype)
    plan = skg.plan(model, x)
    group = plan.group("l1:out")
    assert group.prunable
    result = skg.prune(model, plan, ratio=0.5, importance=importance)
    assert result.model.l1.out_features == 4
    assert result.model(x).shape == (3, 4)
    p = 2 if importance == "l2" else 1
    rows = torch.cat([model.l1.weight, model.l1.bias[:, None]], 1).abs().norm(p=p, dim=1)
    rows = rows.pow(p) + model.l2.weight.abs().pow(p).sum(0)
    removed = result.masks["l1:out"]
    assert rows[~removed].min() >= rows[removed].max()
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["l1:out"].apply_mask(removed)
    torch.testing.assert_close(result.model(x), dense(x), rtol=1e-4, atol=1e-5)
