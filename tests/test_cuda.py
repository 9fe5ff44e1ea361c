"""Models that live on a GPU: plan, prune (ratio and CPU masks), exactness and a reloadable
Hugging Face config there. Skipped without CUDA (run on a GPU machine: ``python -m pytest
tests/test_cuda.py``). Before, a model on the GPU planned on CPU example inputs under
torch.export (every Hugging Face model failed to trace), the config fit ran CPU inputs through
the GPU model (the config silently kept the original sizes), and masks made on the CPU could
not be applied to GPU weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
transformers = pytest.importorskip("transformers")

CUDA = torch.device("cuda")


def _resnet() -> tuple[nn.Module, Tensor]:
    return torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 64, 64)


def _llama() -> tuple[nn.Module, Tensor]:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 64, (2, 8))


@pytest.fixture(autouse=True)
def _exact_matmuls() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("make", [_resnet, _llama], ids=["resnet18", "llama"])
def test_a_model_on_the_gpu_plans_and_prunes_exactly_there(make: Callable[[], tuple[nn.Module, Tensor]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = make()
    model, x = model.to(CUDA), x.to(CUDA)
    result = check_oracle(model, x, tmp_path, min_drop=0.0)  # masks made on the CPU, applied to GPU weights
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}


def test_a_pruned_hugging_face_model_on_the_gpu_reloads_from_its_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _llama()
    model, x = model.to(CUDA), x.to(CUDA)
    result = skg.prune(model, skg.plan(model, x), ratio=0.5)
    assert result.report.reloadable is True
    rebuilt = type(model)(result.model.config).to(CUDA).eval()
    rebuilt.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, result.model(x).logits)
