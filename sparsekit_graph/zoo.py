"""Model specs for the CLI and examples: ``torchvision:resnet18``, ``timm:convnext_tiny``,
``path/to/file.py:factory``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SparseKitError

__all__ = ["load_spec"]

_INPUT_SIZE = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "swin_t": 224}


def load_spec(spec: str, *, batch: int = 1, image_size: int | None = None, seed: int = 0) -> tuple[nn.Module, Any]:
    """Build the model a spec names (random weights) and an example input for it."""
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise SparseKitError(f"model spec {spec!r} must look like 'torchvision:resnet18' or 'file.py:factory'")
    torch.manual_seed(seed)
    if kind == "torchvision":
        return _torchvision(name, batch, image_size)
    if kind == "timm":
        return _timm(name, batch, image_size)
    if kind == "hf":
        raise SparseKitError(f"model spec {spec!r}: Hugging Face models cannot be planned yet (they need torch.export tracing)")
    if kind.endswith(".py"):
        return _file(Path(kind), name, batch)
    raise SparseKitError(f"model spec {spec!r}: unknown source {kind!r} (torchvision, timm or a .py file)")


def _torchvision(name: str, batch: int, image_size: int | None) -> tuple[nn.Module, Any]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as e:
        raise SparseKitError(f"torchvision has no model {name!r}") from e
    kwargs: dict[str, Any] = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = builder(weights=None, **kwargs)
    size = image_size or _INPUT_SIZE.get(name, 224)
    return model.eval(), torch.randn(batch, 3, size, size)


def _timm(name: str, batch: int, image_size: int | None) -> tuple[nn.Module, Any]:
    import timm

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:
        raise SparseKitError(f"timm has no model {name!r}") from e
    size = image_size or model.default_cfg.get("input_size", (3, 224, 224))[-1]
    return model.eval(), torch.randn(batch, 3, size, size)


def _file(path: Path, factory: str, batch: int) -> tuple[nn.Module, Any]:
    if not path.exists():
        raise SparseKitError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if fn is None:
        raise SparseKitError(f"{path} has no function {factory!r}")
    out = fn()
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module)):
        raise SparseKitError(f"{path}:{factory}() must return (model, example_inputs)")
    return out
