"""The DESIGN.md oracle over torchvision classification CNNs (slowest under -m slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

tv = pytest.importorskip("torchvision")
from helpers import check_oracle  # noqa: E402

FAST = [
    "resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0",
    "regnet_x_400mf", "googlenet", "mnasnet0_5", "alexnet",
]  # fmt: skip
SLOW = [
    "resnet50", "densenet121", "inception_v3", "convnext_tiny", "shufflenet_v2_x1_0", "mobilenet_v3_large",
    "resnext50_32x4d", "regnet_y_400mf", "vgg11_bn", "efficientnet_v2_s", "squeezenet1_0", "wide_resnet50_2",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "densenet161", "mnasnet1_0", "regnet_y_800mf", "resnet34",
]  # fmt: skip
# Below Torch-Pruning's kept fraction + 5 points at ratio 0.5 (measured by benchmarks/plan_vs_torch_pruning.py).
MAX_KEPT = {"resnet18": 0.30, "resnet50": 0.32, "mobilenet_v2": 0.40, "densenet121": 0.35, "convnext_tiny": 0.32}


def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = tv.models.get_model(name, weights=None, **kwargs)
    size = 299 if name == "inception_v3" else 64
    return model, torch.randn(2, 3, size, size)


def _run(name: str, tmp_path: Path) -> None:
    model, x = _build(name)
    result = check_oracle(model, x, tmp_path)
    kept = result.report.params_after / result.report.params_before
    assert kept <= MAX_KEPT.get(name, 0.6), f"{name} keeps {kept:.1%} of its parameters"


@pytest.mark.parametrize("name", FAST)
def test_oracle_fast(name: str, tmp_path: Path) -> None:
    _run(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_oracle_slow(name: str, tmp_path: Path) -> None:
    _run(name, tmp_path)


def test_resnet50_is_planned_in_default_run(tmp_path: Path) -> None:
    """ResNet-50 keeps <= 30% of its parameters at ratio 0.5 (Torch-Pruning: 27%)."""
    model, x = _build("resnet50")
    import sparsekit_graph as skg

    result = skg.prune(model, skg.plan(model, x), ratio=0.5)
    assert result.report.params_after / result.report.params_before <= 0.30
    assert result.model(x).shape == (2, 1000)
