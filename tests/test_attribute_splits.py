"""Split sizes held in a module's own int attributes (timm's Res2Net ``split(out, self.width,
1)``): the literal carries its origin (``graph/attribute_sizes.py``), so the split follows the
attribute, surgery rewrites it, and the pruned model matches the masked dense one. An
attribute that also decides control flow, or sizes an axis that cannot shrink, pins."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import check_oracle, realistic_bn
from test_size_tuple_concat import HEAD_DIM, HEADS, WIDTH, Attention, Net
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
    [("res2net50_14w_8s", True), ("skresnet18", True), ("cs3darknet_s", True), ("cspresnet50", True),
     ("mixnet_s", True), ("ghostnet_100", True), ("rexnet_100", True)],
)  # fmt: skip
def test_timm_families_with_attribute_sizes(name: str, gains: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each prunes at 0.5 and runs; the stages sized by their own attributes become prunable:
    Res2Net's ``split(out, self.width, 1)``, SKNet's ``split(x, self.in_channels //
    self.num_paths, 1)``, CSPNet's ``x.split(self.expand_chs // 2, dim=1)``, GhostNet's
    ``out[:, :self.out_chs]``, ReXNet's ``x[:, 0:self.in_channels]`` and ``x[:, self.in_channels:]``.
    MixNet's list attribute ``splits`` (of an ``nn.ModuleDict``): each part on its own."""
    n0, c0, before = _timm_pruned(name, False, monkeypatch)
    n1, c1, after = _timm_pruned(name, True, monkeypatch)
    assert c1 >= c0
    assert (c1 > c0) == gains
    if gains:
        assert after.report.params_after < before.report.params_after


class Paths2(nn.Module):
    """Two paths over halves of one conv's output (SKNet's selective kernel, CSPNet's cross
    stage), the split size spelled as each library writes it; every spelling means
    ``chunk(2)`` and must plan as it does."""

    stride = 4  # a class attribute: ``split(out, self.stride, 1)``

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.width, self.scale = spelling, 4, 2
        self.in_channels, self.num_paths, self.expand_chs, self._width = 8, 2, 8, 4
        self.conv1 = nn.Conv2d(8, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.paths = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))
        self.conv3 = nn.Conv2d(8, 8, 1)

    @property
    def part(self) -> int:
        return self._width

    def sizes(self) -> object:
        if self.spelling == "local":
            w = self.width
            return [w, w]
        return {
            "width": lambda: self.width,
            "list": lambda: [self.width] * self.scale,
            "property": lambda: self.part,
            "class": lambda: self.stride,
            "sknet": lambda: self.in_channels // self.num_paths,
            "cspnet": lambda: self.expand_chs // 2,
            "product": lambda: self.width * self.scale // self.scale,
        }[self.spelling]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu()
        parts = out.chunk(2, 1) if self.spelling == "chunk" else torch.split(out, self.sizes(), 1)  # type: ignore[arg-type]
        return self.conv3(torch.cat([p(t).relu() for p, t in zip(self.paths, parts)], 1)) + x


SPELLINGS = ["width", "list", "local", "property", "class", "sknet", "cspnet", "product"]


def _summary(plan: skg.Plan) -> list[tuple[str, bool, int, bool]]:
    return [(g.name, g.prunable, g.size, g.zero_invariant) for g in plan.groups]


def test_split_sizes_made_from_attributes_plan_as_chunk() -> None:
    x = torch.randn(2, 8, 6, 6)
    torch.manual_seed(0)
    reference = _summary(_plan(Paths2("chunk").eval(), x))
    assert ("conv1:out", True, 4, True) in reference
    for spelling in SPELLINGS:
        torch.manual_seed(0)
        assert _summary(_plan(Paths2(spelling).eval(), x)) == reference, spelling


@pytest.mark.parametrize(
    ("spelling", "attr", "after"),
    [("list", "width", 2), ("property", "_width", 2), ("class", "stride", 2), ("sknet", "in_channels", 4),
     ("cspnet", "expand_chs", 4)],
)  # fmt: skip
def test_split_sizes_made_from_attributes_prune_exactly(spelling: str, attr: str, after: int, tmp_path: Path) -> None:
    """Surgery rewrites the attribute the size is made of (``in_channels``, not ``num_paths``:
    the count of paths stays), and the pruned model matches the masked dense one."""
    torch.manual_seed(0)
    model, x = Paths2(spelling).eval(), torch.randn(2, 8, 6, 6)
    result = check_oracle(model, x, tmp_path)
    assert getattr(result.model, attr) == after
    assert result.model.num_paths == 2 and result.model.scale == 2
    assert getattr(model, attr) == 2 * after  # the user's model keeps its value


class Unfollowed(Paths2):
    """Sizes that do not follow pruning: a literal beside a read (``[self.width, 4]``), a
    number of an attribute that counts nothing here (``self.num_paths * 2``), a size that
    moves against the count (``16 // self.width``, ``self.width * self.width // 4``)."""

    def sizes(self) -> object:
        return {
            "mixed": lambda: [self.width, 4],
            "paths": lambda: self.num_paths * 2,
            "inverse": lambda: 16 // self.width,
            "square": lambda: self.width * self.width // 4,
        }[self.spelling]()


@pytest.mark.parametrize("spelling", ["mixed", "paths", "inverse", "square"])
def test_split_sizes_that_do_not_follow_pin(spelling: str) -> None:
    torch.manual_seed(0)
    plan = _plan(Unfollowed(spelling).eval(), torch.randn(2, 8, 6, 6))
    g = next(g for g in plan.groups if g.name.startswith("conv1:out"))
    assert not g.prunable and "split" in (g.reason or ""), (spelling, g.reason)


class Ghost(nn.Module):
    """GhostNet's module: a primary conv and a cheap depthwise one, concatenated and cut to
    ``self.out_chs`` (all of it when ``out_chs`` is even, one short when odd)."""

    def __init__(self, spelling: str, out_chs: int = 8) -> None:
        super().__init__()
        self.spelling, self.out_chs = spelling, out_chs
        init = (out_chs + 1) // 2
        self.primary = nn.Sequential(nn.Conv2d(8, init, 1), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init), nn.BatchNorm2d(init), nn.ReLU())
        self.conv3 = nn.Conv2d(out_chs, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        out = torch.cat([a, self.cheap(a)], 1)
        out = out if self.spelling == "whole" else out[:, : self.out_chs, :, :]
        return self.conv3(out) + x


def test_a_slice_to_an_attribute_plans_as_no_slice(tmp_path: Path) -> None:
    x = torch.randn(2, 8, 6, 6)
    plans = []
    for spelling in ("whole", "attr"):
        torch.manual_seed(0)
        plans.append(_summary(_plan(Ghost(spelling).eval(), x)))
    assert plans[0] == plans[1] and ("primary.0:out", True, 4, True) in plans[1]
    torch.manual_seed(0)
    result = check_oracle(Ghost("attr").eval(), x, tmp_path)
    assert result.model.out_chs == 4


def test_a_slice_to_an_attribute_that_cuts_prunes_exactly(tmp_path: Path) -> None:
    """``out_chs`` odd: the slice drops the last cheap channel; each kept channel of the
    primary conv counts once or twice in ``out_chs``, which drops by both."""
    torch.manual_seed(0)
    model = Ghost("attr", out_chs=7).eval()
    result = check_oracle(model, torch.randn(2, 8, 6, 6), tmp_path)
    assert result.model.out_chs == result.model.conv3.in_channels < 7


class Rex(nn.Module):
    """ReXNet's partial residual: ``cat([x[:, 0:self.in_channels] + shortcut,
    x[:, self.in_channels:]])``, a block widening its input."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.in_channels = spelling, 8
        self.stem = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8))
        self.conv = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12))
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.stem(x).relu()
        y = self.conv(shortcut)
        n = shortcut.size(1)  # the same width, read off the shortcut
        if self.spelling == "suffix only":
            y = torch.cat([y[:, :8] + shortcut, y[:, self.in_channels :]], 1)
        elif self.spelling == "read suffix only":
            y = torch.cat([y[:, :8] + shortcut, y[:, n:]], 1)
        elif self.spelling == "read":
            y = torch.cat([y[:, :n] + shortcut, y[:, n:]], 1)
        else:
            y = torch.cat([y[:, 0 : self.in_channels] + shortcut, y[:, self.in_channels :]], dim=1)
        return self.head(y)


@pytest.mark.parametrize("spelling", ["attr", "read"])
def test_a_partial_residual_sliced_by_an_attribute_prunes_exactly(spelling: str, tmp_path: Path) -> None:
    """``read``: the bound is the shortcut's width (``graph/read_bounds.py``), linked to it."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    plan = _plan(Rex(spelling).eval(), x)  # the stem's channels (the prefix) and the block's own
    assert [(g.name, g.prunable, g.size) for g in plan.groups] == [
        ("stem.0:in", False, 4), ("stem.0:out", True, 8), ("conv.0:out", True, 4), ("head:out", False, 4)
    ]  # fmt: skip
    result = check_oracle(Rex(spelling).eval(), x, tmp_path)
    small = result.model
    assert small.stem[0].out_channels < 8
    assert small.in_channels == (small.stem[0].out_channels if spelling == "attr" else 8)  # read only by "attr"


@pytest.mark.parametrize("spelling", ["suffix only", "read suffix only"])
def test_a_suffix_without_its_prefix_slice_pins(spelling: str) -> None:
    """``y[:, self.in_channels:]`` (or ``y[:, n:]``) beside a literal prefix: nothing says the
    start counts the prefix, so it would not move with it."""
    torch.manual_seed(0)
    plan = _plan(Rex(spelling).eval(), torch.randn(2, 4, 6, 6))
    assert not any(g.prunable for g in plan.groups if g.name.startswith("conv.0")), [(g.name, g.reason) for g in plan.groups]


class ProductMerge(Attention):
    """MobileViT's attention (``test_size_tuple_concat``) merging its heads by the product of
    two attributes, as a plain argument or inside the size tuple."""

    def __init__(self, merge: str) -> None:
        super().__init__(merge)
        self.num_heads = HEADS

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            f(h).view(*h.shape[:-1], -1, self.attention_head_size).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        c = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).permute(0, 2, 1, 3).contiguous()
        if self.merge == "argument":
            return c.view(*c.size()[:-2], self.num_heads * self.attention_head_size)
        return c.view(c.size()[:-2] + (self.num_heads * self.attention_head_size,))


@pytest.mark.parametrize("merge", ["argument", "tuple"])
def test_heads_merged_by_a_product_of_attributes_in_a_size_tuple_prune(merge: str) -> None:
    """The product's reads are recorded on the tuple's ``add`` node (``sizes.read_sites``)."""
    torch.manual_seed(0)
    model, x = Net("attribute").eval(), torch.randn(2, 5, WIDTH)
    model.att = ProductMerge(merge).eval()
    plan = skg.plan(model, x)
    heads = plan.group("att.query:out")
    assert heads.prunable and heads.zero_invariant and heads.size == HEADS, heads.reason
    assert [(r.owner, r.attr) for r in heads.sizes] == [("att", "num_heads")]
    mask = torch.tensor([False, True])
    small = skg.prune(model, plan, masks={heads.name: mask}).model.eval()
    assert small.att.num_heads == 1 and small.att.attention_head_size == HEAD_DIM
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[heads.name].apply_mask(mask)
    with torch.no_grad():
        torch.testing.assert_close(small(x), dense(x), rtol=1e-4, atol=1e-5)
