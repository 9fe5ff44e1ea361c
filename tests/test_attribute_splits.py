"""Split sizes held in a module's own int attributes (timm's Res2Net ``split(out, self.width,
1)``): the literal carries its origin (``graph/attribute_sizes.py``), so the split follows the
attribute, surgery rewrites it, and the pruned model matches the masked dense one. An
attribute that also decides control flow, or sizes an axis that cannot shrink, pins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle, realistic_bn
from torch import nn

import sparsekit_graph as skg


class Res2(nn.Module):
    """A Res2Net bottleneck's core: ``scale`` chunks of ``width`` channels, a 3x3 conv over
    each but the last, each fed the previous chunk's output."""

    def __init__(self, spelling: str = "width", c: int = 8, width: int = 4, scale: int = 3) -> None:
        super().__init__()
        self.spelling, self.width, self.scale = spelling, width, scale
        self.conv1 = nn.Conv2d(c, width * scale, 1)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, c, 1)

    def split_size(self, out: torch.Tensor) -> int:
        if self.spelling == "branch" and self.width > 2:  # control flow on the attribute
            return self.width
        if self.spelling == "input":  # the attribute also sizes the model input, which cannot shrink
            self.seen = out.new_zeros(1) + self.x.view(self.x.shape[0], self.width, -1).sum()
            return self.width
        return self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        out = self.bn1(self.conv1(x)).relu()
        spx = torch.split(out, self.split_size(out), 1)
        outs = []
        sp = spx[0]
        for i in range(self.scale - 1):  # a loop over an attribute that sizes nothing: no pin
            sp = sp if i == 0 else sp + spx[i]
            sp = self.convs[i](sp).relu()
            outs.append(sp)
        outs.append(spx[-1])
        y = self.conv3(torch.cat(outs, 1)) + x
        return y + self.seen if self.spelling == "input" else y


def _plan(model: nn.Module, x: torch.Tensor) -> skg.Plan:
    realistic_bn(model, x)
    return skg.plan(model, x)


def test_a_split_by_a_module_attribute_prunes_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Res2().eval(), torch.randn(2, 8, 6, 6)
    plan = _plan(model, x)
    g = next(g for g in plan.groups if g.name == "conv1:out")
    assert g.prunable and g.zero_invariant, g.reason
    assert [(r.owner, r.attr) for r in g.sizes] == [("", "width")]
    result = check_oracle(model, x, tmp_path)
    assert result.model.width == 2
    assert result.model.conv1.out_channels == 6


def test_control_flow_on_the_attribute_pins() -> None:
    torch.manual_seed(0)
    plan = _plan(Res2("branch").eval(), torch.randn(2, 8, 6, 6))
    g = next(g for g in plan.groups if g.name.startswith("conv1:out"))
    assert not g.prunable and "width" in (g.reason or ""), g.reason


def test_an_attribute_sizing_the_model_input_pins() -> None:
    torch.manual_seed(0)
    plan = _plan(Res2("input").eval(), torch.randn(2, 8, 6, 6))
    g = next(g for g in plan.groups if g.name.startswith("conv1:out"))
    assert not g.prunable, [(h.name, h.prunable, h.reason) for h in plan.groups]


class ScaledByWidth(Res2):
    """The attribute is also a number of the data (``h * self.width``): rewriting it would
    change the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.width


def test_an_attribute_used_as_a_value_pins() -> None:
    torch.manual_seed(0)
    plan = _plan(ScaledByWidth().eval(), torch.randn(2, 8, 6, 6))
    g = next(g for g in plan.groups if g.name.startswith("conv1:out"))
    assert not g.prunable and "width" in (g.reason or ""), g.reason


class Paths(nn.Module):
    """SKNet's attention: ``view(b, self.num_paths, -1, h, w)``, a constant factor of a reshape
    (the paths are no channels of one group); the literal spelling plans the same."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal, self.num_paths = literal, 2
        self.fc = nn.Conv2d(8, 16, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        a = self.fc(x).view(b, 2 if self.literal else self.num_paths, -1, h, w).softmax(1)
        return self.out(a.sum(1))


def test_a_reshape_factor_read_from_an_attribute_plans_like_the_literal() -> None:
    x = torch.randn(2, 8, 6, 6)
    plans = []
    for literal in (True, False):
        torch.manual_seed(0)
        plans.append(_plan(Paths(literal).eval(), x))
    assert [(g.name, g.prunable, g.size) for g in plans[0].groups] == [(g.name, g.prunable, g.size) for g in plans[1].groups]
    assert any(g.prunable for g in plans[1].groups)


def _timm_pruned(name: str, attribute_sizes: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, skg.PruneResult]:
    """(prunable groups, their channels, the model pruned at 0.5) of a timm model, with
    ``attribute_sizes`` off as before them."""
    timm = pytest.importorskip("timm")
    from sparsekit_graph.graph import size_reads

    if not attribute_sizes:
        monkeypatch.setattr(size_reads, "plain_int_attributes", lambda m: frozenset())
    torch.manual_seed(0)
    model, x = timm.create_model(name, pretrained=False, num_classes=10), torch.randn(2, 3, 64, 64)
    realistic_bn(model, x)
    model.eval()
    plan = skg.plan(model, x)
    result = skg.prune(model, plan, ratio=0.5)
    with torch.no_grad():
        assert result.model(x).shape == (2, 10)
    monkeypatch.undo()
    return len(plan.prunable), sum(g.size for g in plan.prunable), result


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "gains"),
    [("res2net50_14w_8s", True), ("skresnet18", False), ("cs3darknet_s", False), ("mixnet_s", False),
     ("ghostnet_100", False), ("rexnet_100", False)],
)  # fmt: skip
def test_timm_families_with_attribute_sizes(name: str, gains: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each prunes at 0.5 and runs; Res2Net's ``split(out, self.width, 1)`` stages become
    prunable, the others plan no less than before."""
    n0, c0, before = _timm_pruned(name, False, monkeypatch)
    n1, c1, after = _timm_pruned(name, True, monkeypatch)
    assert c1 >= c0
    assert (c1 > c0) == gains
    if gains:
        assert after.report.params_after < before.report.params_after
