"""``prune(inplace=True)``: the user's module objects are kept, and nothing changes on failure."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_untouched, fingerprint
from torch import nn

import sparsekit_graph as skg
from sparsekit_graph.prune import api as prune_api

torchvision = pytest.importorskip("torchvision")


@pytest.fixture
def resnet() -> tuple[nn.Module, torch.Tensor, skg.Plan]:
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    return model, x, skg.plan(model, x)


def test_inplace_keeps_every_module_object(resnet) -> None:
    model, x, plan = resnet
    reference = copy.deepcopy(model)
    layer, block = model.layer1[0].conv1, model.layer1[0]
    modules_before = dict(model.named_modules())
    width = layer.out_channels
    r = skg.prune(model, plan, ratio=0.5, inplace=True)
    assert r.model is model
    assert model.layer1[0].conv1 is layer and model.layer1[0] is block
    assert all(model.get_submodule(name) is m for name, m in modules_before.items())
    owner = next(g for g in plan.groups if any(m.param == "layer1.0.conv1.weight" and m.axis == 0 for m in g.members))
    assert layer.out_channels == r.report.kept[owner.name]
    assert layer.out_channels < width and layer.weight.shape[0] == layer.out_channels
    assert model.layer1[0].bn1.num_features == layer.out_channels == model.layer1[0].bn1.running_mean.shape[0]
    copied = skg.prune(reference, plan, masks=r.masks)  # the same surgery on a copy gives the same model
    with torch.no_grad():
        torch.testing.assert_close(model(x), copied.model(x))
    assert r.report.params_after == sum(p.numel() for p in model.parameters())


def test_inplace_failure_after_validation_rolls_back(resnet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Surgery on the user's model that breaks half way (after its copy passed) is undone."""
    model, x, plan = resnet
    layer = model.layer1[0].conv1
    before = fingerprint(model)
    attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    tensors = {n: t for n, t in (*model.named_parameters(), *model.named_buffers())}
    real = prune_api.remove_channels
    calls: list[int] = []

    def flaky(target: nn.Module, *args, **kwargs) -> None:
        calls.append(1)
        real(target, *args, **kwargs)
        if len(calls) == 2:  # the copy went through; the user's model fails after being cut
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(prune_api, "remove_channels", flaky)
    with pytest.raises(skg.SparseKitError, match="inplace surgery failed; nothing was changed: disk on fire"):
        skg.prune(model, plan, ratio=0.5, inplace=True)
    assert len(calls) == 2
    assert_untouched(model, before, "failed inplace prune")
    assert model.layer1[0].conv1 is layer and layer.out_channels == layer.weight.shape[0] == 64
    assert {n: dict(vars(m)) for n, m in model.named_modules()} == attrs
    assert all(t is tensors[n] for n, t in (*model.named_parameters(), *model.named_buffers()))
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def test_inplace_failure_before_surgery_keeps_parameters(resnet) -> None:
    model, _, plan = resnet
    params = dict(model.named_parameters())
    before = fingerprint(model)
    group = next(g for g in plan.groups if g.prunable)
    with pytest.raises(skg.PlanError, match="every channel"):
        skg.prune(model, plan, masks={group.name: torch.ones(group.size, dtype=torch.bool)}, inplace=True)
    assert_untouched(model, before, "rejected inplace prune")
    assert all(p is params[n] for n, p in model.named_parameters())
