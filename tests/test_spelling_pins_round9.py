"""Needless pins of round 9 (issue 7): spellings that pinned where their plain twin prunes.

1. A list attribute of split sizes (timm MixNet's ``MixedConv2d.splits = [16, 8, 8]``, an
   ``nn.ModuleDict``): each part is an offset segment of the input's group, pruned on its own,
   and surgery lowers ``splits[k]`` by what segment ``k`` lost. A list that also sizes another
   axis still pins.
2. ``int(c / g)`` as a view size is ``c // g`` (``flow_values.flows_as_size``).
3. ``.type(torch.float64)``, ``.double()``, ``.half()``: ``.to(dtype)``.
4. Weight norm (``torch._weight_norm``, ``nn.utils.weight_norm``, its parametrization), ``dim`` 0, 2
   and None, exact at 0.5.
5. ``index_add`` / ``index_copy`` / ``scatter`` along an axis that is not the channels pass them.
Each unpinned spelling has a twin that still pins.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import check_oracle, realistic_bn
from torch import Tensor, nn

import sparsekit_graph as skg

# --- 1: a list attribute of split sizes (MixNet) -------------------------------------------------

SPLITS = [16, 8, 8]


class MixedConv(nn.ModuleDict):
    """timm's ``MixedConv2d``: depthwise convs of growing kernels over parts of the channels."""

    def __init__(self, splits: list[int]) -> None:
        super().__init__()
        for i, s in enumerate(splits):
            self.add_module(str(i), nn.Conv2d(s, s, 3 + 2 * i, padding=1 + i, groups=s))
        self.splits = list(splits)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([c(parts[i]) for i, c in enumerate(self.values())], 1)


class PlainMixed(nn.Module):
    """The same on a plain module, its convs in a ``ModuleList``; ``spelling`` says how the
    split sizes are also used: ``"view"`` sizes the model input's channels by ``splits[0]``
    (which cannot shrink), ``"tuple"`` splits by a tuple of the attribute's elements."""

    def __init__(self, splits: list[int], spelling: str = "plain") -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, s, 3 + 2 * i, padding=1 + i, groups=s) for i, s in enumerate(splits))
        self.splits, self.spelling = list(splits), spelling

    def forward(self, x: Tensor) -> Tensor:
        sizes = tuple(self.splits) if self.spelling == "tuple" else self.splits
        parts = torch.split(x, sizes, 1)
        return torch.cat([c(p) for c, p in zip(self.convs, parts)], 1)


class MixBlock(nn.Module):
    """MixNet's inverted residual: 1x1 expansion, BN, ReLU, the mixed depthwise conv, BN, ReLU,
    1x1 projection. ``"view"``: the input (16 channels) is also viewed as ``(b, splits[0], -1)``."""

    def __init__(self, mixed: nn.Module, spelling: str = "plain") -> None:
        super().__init__()
        width = sum(SPLITS)
        self.pw, self.bn1 = nn.Conv2d(16, width, 1), nn.BatchNorm2d(width)
        self.mixed, self.bn2 = mixed, nn.BatchNorm2d(width)
        self.pwl = nn.Conv2d(width, 16, 1)
        self.spelling = spelling

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn2(self.mixed(torch.relu(self.bn1(self.pw(x))))))
        y = self.pwl(h) + x
        if self.spelling == "view":
            y = y + x.view(x.shape[0], self.mixed.splits[0], -1).mean(-1)[..., None, None]
        return y


X = (2, 16, 8, 8)


def _segments(plan: skg.Plan) -> list[skg.Group]:
    return [g for g in plan.groups if g.name.startswith("pw:out")]


@pytest.mark.parametrize("make", [MixedConv, PlainMixed, lambda s: PlainMixed(s, "tuple")], ids=["moduledict", "plain", "tuple"])
def test_list_split_sizes_prune_each_segment(make: object, tmp_path: Path) -> None:
    """Each part of the split is its own group, zero-invariant and pruned exactly; surgery
    lowers each element of ``splits`` by what its part lost, on the copy only."""
    torch.manual_seed(0)
    model = MixBlock(make(SPLITS)).eval()  # type: ignore[operator]
    result = check_oracle(model, torch.randn(*X), tmp_path)
    segments = _segments(result.plan)
    assert sorted(g.size for g in segments) == [8, 8, 16]
    assert all(g.prunable and g.zero_invariant for g in segments), [(g.name, g.reason) for g in segments]
    assert result.model.mixed.splits == [8, 4, 4]
    assert model.mixed.splits == SPLITS  # the user's model keeps its list


def test_list_split_sizes_prune_unevenly() -> None:
    """Explicit masks that take different counts from each part: every element follows its own."""
    torch.manual_seed(0)
    model, x = MixBlock(MixedConv(SPLITS)).eval(), torch.randn(*X)
    realistic_bn(model, x)
    plan = skg.plan(model, x)
    masks = {}
    for g, drop in zip(sorted(_segments(plan), key=lambda g: g.members[0].start), (3, 5, 1)):
        m = torch.zeros(g.size, dtype=torch.bool)
        m[torch.randperm(g.size)[:drop]] = True
        masks[g.name] = m
    pruned = skg.prune(model, plan, masks=masks).model.eval()
    assert pruned.mixed.splits == [13, 3, 7]
    dense = MixBlock(MixedConv(SPLITS)).eval()
    dense.load_state_dict(model.state_dict())
    couplings = skg.bind(plan, dense)
    for name, m in masks.items():
        couplings[name].apply_mask(m)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)


def test_list_split_sizes_that_also_size_another_axis_pin() -> None:
    """``x.view(b, self.mixed.splits[0], -1)`` on the model input: lowering ``splits[0]`` would
    break that view, so the part it counts stays pinned, naming the attribute."""
    torch.manual_seed(0)
    model, x = MixBlock(PlainMixed(SPLITS), "view").eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    first = next(g for g in _segments(plan) if g.members[0].start == 0)
    assert not first.prunable and "splits[0]" in (first.reason or ""), first.reason
    small = skg.prune(model, plan, ratio=0.5).model.eval()
    assert small.mixed.splits[0] == 16
    with torch.no_grad():
        assert small(x).shape == model(x).shape


class Appends(PlainMixed):
    """Writes to its list while running (and reads it after)."""

    def forward(self, x: Tensor) -> Tensor:
        self.splits.append(0)
        self.splits.pop()
        return super().forward(x)


def test_a_list_attribute_written_in_forward_pins_what_it_sizes(tmp_path: Path) -> None:
    """The model's code gets one copy of the list per trace and writes to it as it would to its
    own: a list the forward writes is no list of sizes, so the parts it sizes pin (naming the
    write); the plan holds (prune exact where it claims to be) and the user's list is untouched."""
    torch.manual_seed(0)
    model, x = MixBlock(Appends(SPLITS)).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    assert model.mixed.splits == SPLITS
    parts = [g for g in plan.groups if any(m.param.startswith("mixed.") for m in g.members)]
    assert (
        parts
        and not any(g.prunable for g in parts if "write to its list" in (g.reason or ""))
        and any("write to its list" in (g.reason or "") for g in parts)
    ), [(g.name, g.reason) for g in parts]
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
    assert model.mixed.splits == SPLITS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixnet_s", "tf_mixnet_s"])
def test_timm_mixnet_prunes_its_mixed_convs(name: str, tmp_path: Path) -> None:
    """timm's MixNet: no group pinned by a split (all of its mixed convolutions' parts were),
    far fewer parameters kept at 0.5, exact."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    result = check_oracle(model, x, tmp_path)
    plan = skg.plan(model, x)
    split = [(g.name, g.reason) for g in plan.groups if "split" in (g.reason or "")]
    assert not split and sum(g.prunable for g in plan.groups) >= 60, split
    assert result.report.params_after < 0.45 * result.report.params_before  # 0.56 with the splits pinned


# --- 3: dtype conversions are ``to(dtype)`` however they are spelled ------------------------------

_DTYPES = {
    "type": (
        lambda s, h: h.to(torch.float64).relu().to(torch.float32),
        lambda s, h: h.type(torch.float64).relu().type(torch.float32),
    ),
    "type-kw": (
        lambda s, h: h.to(torch.float64).relu().to(torch.float32),
        lambda s, h: h.type(dtype=torch.float64).relu().type(dtype=torch.float32),
    ),
    "type-f16": (
        lambda s, h: h.to(torch.float16).to(torch.float32) * 2,
        lambda s, h: h.type(torch.float16).type(torch.float32) * 2,
    ),
    "double": (lambda s, h: h.to(torch.float64).relu().to(torch.float32), lambda s, h: h.double().relu().float()),
    "half": (lambda s, h: h.to(torch.float16).to(torch.float32) * 2, lambda s, h: h.half().float() * 2),
}


@pytest.mark.parametrize("spelling", list(_DTYPES))
def test_dtype_spellings_plan_as_to(spelling: str) -> None:
    """``.type(torch.float64)`` pinned ("arguments could not be read") where ``.to(torch.float64)``
    prunes; ``.double()`` / ``.half()`` are the same call."""
    from test_spelling_pins_round8 import _same_plan

    plain, other = _DTYPES[spelling]
    _same_plan(plain, other)


def _calls(fn: object) -> list[object]:
    """The normalised ops of ``fn(self, h)`` traced on a (2, 12, 6, 6) input."""
    import torch.fx as fx

    from sparsekit_graph.graph.normalize import normalize

    class F(nn.Module):
        def forward(self, h: Tensor) -> object:
            return fn(self, h)  # type: ignore[operator]

    gm = fx.symbolic_trace(F())
    for n in gm.graph.nodes:
        n.meta["skg.value"] = n.meta.get("skg.value")
    return [normalize(n).op for n in gm.graph.nodes if n.op == "call_method"]


def test_dtype_spellings_normalise_to_one_op() -> None:
    """Every spelling binds as ``Tensor.to`` with its dtype, a type named by a string too (round
    10: ``"torch.DoubleTensor"`` is float64); ``.type()`` (the type's name, a string) stays
    ``Tensor.type``: no dtype to read."""
    for fn in (lambda s, h: h.type(torch.float64), lambda s, h: h.double(), lambda s, h: h.half(), lambda s, h: h.bfloat16()):
        assert _calls(fn) == [Tensor.to]
    assert _calls(lambda s, h: h.type()) == [Tensor.type]
    assert _calls(lambda s, h: h.type("torch.DoubleTensor")) == [Tensor.to]
    assert _calls(lambda s, h: h.type("torch.NoSuchTensor")) == [Tensor.type]


def test_dtype_spelling_twins_still_pin() -> None:
    """A conversion before an op with no rule pins as before (the spelling is no way around it),
    and ``h.type()`` compared in Python computes the same at every count: nothing pinned."""
    from test_adversary_round4 import Net, X

    twin = Net(lambda s, h: torch.fft.fft(h.type(torch.float64), dim=1).real.float()).eval()
    g = skg.plan(twin, torch.randn(*X)).group("a:out")
    assert not g.prunable and "fft" in (g.reason or ""), g.reason
    named = Net(lambda s, h: h * (2.0 if h.type() == "torch.FloatTensor" else 1.0)).eval()
    assert skg.plan(named, torch.randn(*X)).group("a:out").prunable


# --- 4: weight norm (torch._weight_norm, nn.utils.weight_norm and its parametrization) -----------


class WeightNormed(nn.Module):
    """conv ``a`` -> BN -> ReLU -> a weight-normed 3x3 conv (``how``: ``"param"`` the
    parametrization, ``"hook"`` the pre-hook API, ``"fn"`` ``torch._weight_norm`` in forward) ->
    ReLU -> 1x1 head. ``dim`` as torch takes it (None: one norm over the whole weight)."""

    def __init__(self, how: str, dim: int | None) -> None:
        super().__init__()
        self.a, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        c = nn.Conv2d(8, 8, 3, padding=1)
        self.how, self.dim = how, -1 if dim is None else dim
        if how == "param":
            c = nn.utils.parametrizations.weight_norm(c, dim=dim)
        elif how == "hook":
            with warnings.catch_warnings():  # deprecated, still in use (WavLM, SEW checkpoints)
                warnings.simplefilter("ignore", FutureWarning)
                c = nn.utils.weight_norm(c, dim=dim)
        else:
            self.v = nn.Parameter(torch.randn(8, 8, 3, 3))
            self.g = nn.Parameter(torch.rand(tuple([8, 8, 3, 3][d] if d == self.dim else 1 for d in range(4))) + 0.5)
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        if self.how == "fn":
            h = torch.nn.functional.conv2d(h, torch._weight_norm(self.v, self.g, self.dim), self.c.bias, padding=1)
        else:
            h = self.c(h)
        return self.head(torch.relu(h))


def _channel_groups(plan: skg.Plan) -> list[tuple[int, bool, bool]]:
    return sorted((g.size, g.prunable, g.zero_invariant) for g in plan.groups if g.prunable)


@pytest.mark.parametrize("dim", [0, 2, None], ids=["dim0", "dim2", "whole"])
@pytest.mark.parametrize("how", ["param", "hook", "fn"])
def test_weight_norm_prunes_exactly(how: str, dim: int | None, tmp_path: Path) -> None:
    """Each spelling plans alike: the input channels (norms over them: a zeroed channel adds
    nothing) zero-invariant; the output rows prunable, zero-invariant unless they are the norm's
    own axis (``dim=0``: a zeroed row divides by a zero norm); pruned at 0.5 and exact."""
    torch.manual_seed(0)
    model = WeightNormed(how, dim).eval()
    result = check_oracle(model, torch.randn(2, 3, 6, 6), tmp_path)
    assert _channel_groups(result.plan) == sorted([(8, True, True), (8, True, dim != 0)])
    if how == "hook":
        assert result.model.c.weight.shape[:2] == result.model.c.weight_v.shape[:2]


class Shifted(WeightNormed):
    """``torch._weight_norm(self.v + 1, ...)``: the direction is not zero where its channels are."""

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        return self.head(torch.nn.functional.conv2d(h, torch._weight_norm(self.v + 1, self.g, 2), padding=1))


def test_weight_norm_twins_still_pin() -> None:
    """Another pre-hook beside weight norm's is not modelled: the layer pins; a direction that is
    not zero where its channels are (``v + 1``) keeps the input channels prunable, not exact."""
    torch.manual_seed(0)
    hooked = WeightNormed("hook", 0).eval()
    hooked.c.register_forward_pre_hook(lambda m, args: None)
    plan = skg.plan(hooked, torch.randn(2, 3, 6, 6))
    assert not plan.group("a:out").prunable and "hooks" in (plan.group("a:out").reason or "")
    shifted = Shifted("fn", 2).eval()
    g = skg.plan(shifted, torch.randn(2, 3, 6, 6)).group("a:out")
    assert not g.zero_invariant, g


# --- 5: index_add / index_copy / scatter along an axis that is not the channels ------------------

_IDX = torch.tensor([0, 2, 1, 3, 5, 4])
_WRITES = {
    "index_add": lambda s, h: h.index_add(2, s.idx, h * 2),
    "index_add_fn": lambda s, h: torch.index_add(torch.zeros_like(h), 3, s.idx, h, alpha=2),
    "index_copy": lambda s, h: h.index_copy(3, s.idx, h * 2),
    "index_fill": lambda s, h: h.index_fill(2, s.idx[:2], 0.5),
    "scatter": lambda s, h: torch.zeros_like(h).scatter(3, s.idx.view(1, 1, 1, 6).expand_as(h), h),
    "scatter_add": lambda s, h: h.scatter_add(2, s.idx.view(1, 1, 6, 1).expand_as(h), h),
    "scatter_reduce": lambda s, h: h.scatter_reduce(3, s.idx.view(1, 1, 1, 6).expand_as(h), h, "amax"),
}


@pytest.mark.parametrize("spelling", list(_WRITES))
def test_writes_along_another_axis_pass_the_channels(spelling: str, tmp_path: Path) -> None:
    """The channels pass through a write along a spatial axis (they pinned: "unknown op"): the
    group prunes at 0.5 and matches the masked dense model."""
    from test_adversary_round4 import Net, X

    torch.manual_seed(0)
    model = Net(_WRITES[spelling], idx=_IDX).eval()
    result = check_oracle(model, torch.randn(*X), tmp_path)
    assert result.plan.group("a:out").prunable and result.model.a.out_channels == 6


_FLIP = torch.arange(12).flip(0)
_CHANNEL_WRITES = {
    "index_add": lambda s, h: h.index_add(1, s.flip, h * 2),
    "index_copy": lambda s, h: torch.zeros_like(h).index_copy(1, s.flip, h),
    "scatter": lambda s, h: torch.zeros_like(h).scatter(1, s.flip.view(1, 12, 1, 1).expand_as(h), h),
    "scatter_part": lambda s, h: h.scatter(3, s.idx.view(1, 1, 1, 6).expand(2, 6, 6, 6), h),
}


@pytest.mark.parametrize("spelling", list(_CHANNEL_WRITES))
def test_writes_along_the_channels_still_pin(spelling: str) -> None:
    """Along the channel axis the written positions are data: pinned; so is a scatter whose
    index covers only part of the channels (the rest keep the input's values)."""
    from test_adversary_round4 import Net, X

    plan = skg.plan(Net(_CHANNEL_WRITES[spelling], idx=_IDX, flip=_FLIP).eval(), torch.randn(*X))
    g = plan.group("a:out")
    assert not g.prunable and ("index" in (g.reason or "") or "lengths" in (g.reason or "")), g.reason


# --- 2: ``int(c / g)`` as a view size is ``c // g`` --------------------------------------------


def _shuffle_floor(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, w = h.shape
    return h.view(b, 3, c // 3, hh * w).transpose(1, 2).reshape(b, c, hh, w)


def _shuffle_int(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, w = h.shape
    return h.view(b, 3, int(c / 3), hh * w).transpose(1, 2).reshape(b, c, hh, w)


def _shuffle_int_size(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.size(0), 3, int(h.size(1) / 3), -1).transpose(1, 2).reshape(h.shape)


def _shuffle_int_local(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, w = h.shape
    n = int(c / 3)
    return h.reshape(b, 3, n, hh * w).transpose(1, 2).reshape(b, c, hh, w)


@pytest.mark.parametrize("other", [_shuffle_int, _shuffle_int_size, _shuffle_int_local], ids=["shape", "size", "local"])
def test_int_of_a_quotient_as_a_view_size_plans_as_floor_division(other: object) -> None:
    """``int(c / g)`` pinned ("python control flow") where ``c // g`` follows: a number only
    passed as one size of one ``view`` is held there as ``c // g`` (``flow_values``)."""
    from test_spelling_pins_round8 import _same_plan

    _same_plan(_shuffle_floor, other)  # type: ignore[arg-type]


def _twice(s: nn.Module, h: Tensor) -> Tensor:  # the number is also a value
    b, c, hh, w = h.shape
    n = int(c / 3)
    return h.view(b, 3, n, hh * w).transpose(1, 2).reshape(b, c, hh, w) * n


def _modulo(s: nn.Module, h: Tensor) -> Tensor:  # another number at the example's count only
    b, c, hh, w = h.shape
    return h.view(b, 3, int(c / 3) % 5, hh * w).transpose(1, 2).reshape(b, c, hh, w)


def _negative(s: nn.Module, h: Tensor) -> Tensor:  # truncation is not flooring below zero
    b, c, hh, w = h.shape
    return h.view(b, 3, -int(c / -3), hh * w).transpose(1, 2).reshape(b, c, hh, w)


def _two_views(s: nn.Module, h: Tensor) -> Tensor:  # one number, two sizes
    b, c, hh, w = h.shape
    n = int(c / 3)
    return h.view(b, 3, n, hh * w).transpose(1, 2).reshape(b, c, hh, w) + h.view(b, n, 3, hh * w).reshape(b, c, hh, w)


@pytest.mark.parametrize("fn", [_twice, _modulo, _negative, _two_views], ids=["value", "modulo", "negative", "two-views"])
def test_int_of_a_quotient_elsewhere_still_pins(fn: object) -> None:
    from test_adversary_round4 import Net, X

    g = skg.plan(Net(fn).eval(), torch.randn(*X)).group("a:out")  # type: ignore[arg-type]
    assert not g.prunable and "control flow" in (g.reason or ""), g.reason
