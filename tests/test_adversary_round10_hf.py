"""Adversary round 10 (issue 7): timm and Hugging Face models built from configs (no download).

Each finding of ``/tmp/adv10hf`` in miniature (default run), and on the small library model
(``@pytest.mark.slow``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn


class FunctionalLayerNorm(nn.LayerNorm):
    """timm's ``LayerNorm``: a subclass with its own forward, so it is traced through."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class WeightlessNormNet(nn.Module):
    """timm ``qwen3_vit`` / ``gemma4_vit``'s classifier norm: ``LayerNorm(dim, affine=False)``
    on the pooled hidden width, the only layer reading it besides the linears."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.inp, self.norm, self.head = nn.Linear(8, 16), norm, nn.Linear(16, 4)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(self.norm(h.mean(1)))


@pytest.mark.parametrize("norm", [FunctionalLayerNorm, nn.LayerNorm, nn.RMSNorm])
def test_a_norm_without_affine_parameters_prunes_its_width(norm: type[nn.Module], tmp_path: Path) -> None:
    """A norm without weight pinned the width it normalises: traced through, "forward passes a
    number made from norm.normalized_shape = (16,) as a size (no axis of norm it counts is
    known)"; as a leaf, "has no affine parameters to resize". Its ``normalized_shape`` counts
    that axis (recorded: surgery rewrites it), so the width prunes, not zero-invariant."""
    torch.manual_seed(0)
    model = WeightlessNormNet(norm(16, elementwise_affine=False)).eval()
    result = check_oracle(model, torch.randn(2, 5, 8), tmp_path)
    width = result.plan.group("inp:out")
    assert width.prunable and not width.zero_invariant
    assert result.model.norm.normalized_shape == (result.model.inp.out_features,) != (16,)


timm = pytest.importorskip("timm")


@pytest.mark.slow
def test_timm_qwen3_vit_prunes_its_hidden_width(tmp_path: Path) -> None:
    """timm ``qwen3_vit`` (a 2-block, 64-wide ``qwen3_vit_88m``): its ``LayerNorm(affine=False)``
    after pooling pinned the hidden width: 4 of 9 groups prunable, 83% of the weights kept at
    0.5; now the width prunes too."""
    torch.manual_seed(0)
    model = timm.create_model("qwen3_vit_88m", pretrained=False, num_classes=10, embed_dim=64, depth=2, num_heads=4,
                              img_size=32).eval()  # fmt: skip
    result = check_oracle(model, torch.randn(2, 3, 32, 32), tmp_path)
    assert result.plan.group("encoder.patch_embed.proj:out").prunable
    assert result.report.params_ratio <= 0.5
