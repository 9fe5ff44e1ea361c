"""Adversary round 13: a forward that asks a traced value what it is. Under torch.fx the value is
a Proxy, so ``isinstance(h, torch.Tensor)`` and ``torch.is_tensor(h)`` are False and
``hasattr(h, "anything")`` True, where the eager forward gets the opposite answers: the traced
branch is not the one that runs. The class asked is noted and the trace given up for
torch.export's (whose fake tensors answer as tensors do); an attribute a tensor lacks is missing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import assert_masked_is_pruned
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.size_tracer import SizeTracer


def _centre(t: Tensor) -> Tensor:  # a helper written for "a tensor or a list of tensors"
    if isinstance(t, torch.Tensor):
        return t - t.mean(1, keepdim=True)  # mixes channels: a:out is not zero-invariant
    return t


def _rotate(t: Tensor) -> Tensor:
    if torch.is_tensor(t):
        return torch.cat([t[:, 1:], t[:, :1]], 1)
    return t


def _tuple_or_tensor(t: Tensor) -> Tensor:
    return t[0] if isinstance(t, (tuple, list)) else t.flip(1)


def _named(t: Tensor) -> Tensor:
    return t if hasattr(t, "names_of_my_own") else t.roll(1, 1)


class _Net(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.fn(torch.relu(self.bn(self.a(x)))))


def _model(fn: Callable[[Tensor], Tensor]) -> _Net:
    torch.manual_seed(0)
    model = _Net(fn).eval()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.normal_(0, 0.2)
    return model


_MASK = {"a:out": torch.tensor([False, True, False, False, True, False, True, False])}


def _kept_if_tensor(t: Tensor) -> Tensor:  # the eager branch leaves the channels alone
    return t if isinstance(t, torch.Tensor) else t.roll(1, 1)


_EAGER_OPS = [(_centre, "mean"), (_rotate, "cat"), (_tuple_or_tensor, "channel order"), (_named, "roll")]


@pytest.mark.parametrize(("fn", "op"), _EAGER_OPS)
def test_the_branch_planned_is_the_branch_that_runs(fn: Callable[[Tensor], Tensor], op: str) -> None:
    """Each eager branch mixes or moves channels (the other branch would leave them alone, and
    a:out would read prunable and zero-invariant): a:out is not both, for that op."""
    plan = skg.plan(_model(fn), torch.randn(2, 3, 8, 8))
    group = next(g for g in plan.groups if g.name == "a:out")
    assert not (group.prunable and group.zero_invariant), group
    assert op in (group.reason or "") or not group.zero_invariant, group


def test_an_eager_branch_that_keeps_the_channels_prunes_exactly() -> None:
    model, x = _model(_kept_if_tensor), torch.randn(2, 3, 8, 8)
    plan = skg.plan(model, x)
    assert next(g for g in plan.groups if g.name == "a:out").prunable
    assert_masked_is_pruned(model, plan, _MASK, x)


def test_asking_the_class_gives_up_the_fx_trace_only_in_the_models_code() -> None:
    """torch's own checks of a Proxy (its argument parser, ``torch.div(h, 2, rounding_mode=...)``)
    are not the model asking: torchvision's ResNet traces with torch.fx as before."""
    seen: list[list[str]] = []
    trace = SizeTracer.trace

    def spy(self: SizeTracer, root: nn.Module, concrete_args: dict | None = None) -> object:
        try:
            return trace(self, root, concrete_args)
        finally:
            seen.append(list(self.classes_asked))

    class Div(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return h * torch.div(h.new_ones(8)[None, :, None, None], 2, rounding_mode="floor")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SizeTracer, "trace", spy)
        skg.plan(Div(), torch.randn(1, 3, 4, 4))
        skg.plan(_model(_rotate), torch.randn(2, 3, 8, 8))
    assert seen[0] == [] and len(seen[1]) == 1 and "_rotate" in seen[1][0]
