"""Needless pins of round 8 (issue 7): two spellings of one op give one plan.

Each model is ``tests/test_adversary_round4.Net``: a conv ``a`` (group ``a:out``, 12 channels) ->
BN -> ReLU -> the spelling -> a 1x1 conv head. ``_holds`` prunes every prunable group to one
channel and compares with the masked dense model where zero-invariance is claimed; the plain
spelling (one that already pruned) and the other must give the same groups (size, prunable,
zero_invariant, members), and the other must prune at a uniform 0.5.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adversary_round4 import C, Net, X, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg

Fn = Callable[[nn.Module, Tensor], Tensor]


_PLAIN: dict[object, set[tuple]] = {}  # the plain spellings' signatures, each planned and pruned once


def _same_plan(plain: Fn, other: Fn, **extra: object) -> skg.Plan:
    """Both spellings prune (``_holds``), plan alike and prune at 0.5; the plan of ``other``."""
    key = (plain.__code__, tuple(extra))
    if key not in _PLAIN:
        a = _holds(Net(plain, **extra))
        assert a.group("a:out").prunable, a.group("a:out")
        _PLAIN[key] = _signature(a)
    model = Net(other, **extra).eval()
    b = _holds(model)
    assert _PLAIN[key] == _signature(b)
    small = skg.prune(model, b, ratio=0.5).model.eval()
    assert small.a.out_channels == C // 2 and small(torch.randn(*X)).shape == model(torch.randn(*X)).shape
    return b


def _tokens(h: Tensor) -> Tensor:
    return h.flatten(2).transpose(1, 2)  # (B, 36, C)


def _image(t: Tensor) -> Tensor:
    return t.transpose(1, 2)[..., None]  # (B, C, L, 1)


# --- 1: hsplit / vsplit / dsplit are tensor_split along a fixed axis; atleast_nd adds axes -------

_SPLITS = {
    "hsplit": (lambda s, h: torch.cat(torch.tensor_split(h, 2, 1)[::-1], 1), lambda s, h: torch.cat(torch.hsplit(h, 2)[::-1], 1)),
    "hsplit-method": (lambda s, h: torch.cat(h.tensor_split(3, dim=1), 1) * 2, lambda s, h: torch.cat(h.hsplit(3), 1) * 2),
    "hsplit-1d": (
        lambda s, h: h * torch.cat(torch.tensor_split(h.mean((0, 2, 3)), 2)[::-1]).view(1, -1, 1, 1),
        lambda s, h: h * torch.cat(torch.hsplit(h.mean((0, 2, 3)), 2)[::-1]).view(1, -1, 1, 1),
    ),
    "vsplit": (lambda s, h: torch.cat(torch.tensor_split(h, 2, 0)[::-1]), lambda s, h: torch.cat(torch.vsplit(h, 2)[::-1])),
    "dsplit-indices": (
        lambda s, h: torch.cat(torch.tensor_split(h, [2, 5], 2)[::-1], 2),
        lambda s, h: torch.cat(h.dsplit([2, 5])[::-1], 2),
    ),
    "vsplit-indices": (lambda s, h: torch.cat(h.tensor_split([1], 0)[::-1]), lambda s, h: torch.cat(h.vsplit([1])[::-1])),
}


@pytest.mark.parametrize("name", list(_SPLITS))
def test_hsplit_vsplit_dsplit_plan_as_tensor_split(name: str) -> None:
    plain, other = _SPLITS[name]
    assert _same_plan(plain, other).group("a:out").zero_invariant


def test_hsplit_by_indices_of_the_channels_pins_as_tensor_split_does() -> None:
    """Literal split indices along the channels fix the parts' sizes: both spellings pin alike."""
    plans = [
        skg.plan(Net(fn).eval(), torch.randn(*X))
        for fn in (lambda s, h: torch.cat(h.tensor_split([4, 8], 1)[::-1], 1), lambda s, h: torch.cat(h.hsplit([4, 8])[::-1], 1))
    ]
    assert not plans[1].group("a:out").prunable and "split with fixed sizes [4, 8]" in (plans[1].group("a:out").reason or "")
    assert _signature(plans[0]) == _signature(plans[1])


def _same(s: nn.Module, h: Tensor) -> Tensor:
    return h


def _by_channel_means(s: nn.Module, h: Tensor) -> Tensor:
    return h * h.mean((0, 2, 3))[None, :, None, None]


def _by_view(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.size(0), h.size(1), -1).view(h.shape)


_ATLEAST = {
    "1d-of-4d": (_same, lambda s, h: torch.atleast_1d(h)),
    "2d-of-4d": (_same, lambda s, h: torch.atleast_2d(h)),
    "3d-of-4d": (_same, lambda s, h: torch.atleast_3d(h)),
    "3d-of-2d": (lambda s, h: h * h.mean((2, 3))[..., None, None], lambda s, h: h * torch.atleast_3d(h.mean((2, 3)))[..., None]),
    "3d-of-1d": (
        _by_channel_means,
        lambda s, h: h * torch.atleast_3d(h.mean((0, 2, 3)))[..., None],
    ),
    "2d-of-1d": (
        _by_channel_means,
        lambda s, h: h * torch.atleast_2d(h.mean((0, 2, 3)))[..., None, None],
    ),
    "1d-of-0d": (lambda s, h: h * h.mean().view(1, 1, 1, 1), lambda s, h: h * torch.atleast_1d(h.mean()).view(1, 1, 1, 1)),
}


@pytest.mark.parametrize("name", list(_ATLEAST))
def test_atleast_nd_plans_as_the_axes_it_adds(name: str) -> None:
    plain, other = _ATLEAST[name]
    _same_plan(plain, other)


# --- 3: a fresh tensor sized by one traced int ------------------------------------------------------

_ONE_INT = {
    "zeros": (
        lambda s, h: h + torch.zeros((h.size(1),)).view(1, -1, 1, 1),
        lambda s, h: h + torch.zeros(h.size(1)).view(1, -1, 1, 1),
    ),
    "ones": (
        lambda s, h: h * torch.ones((h.size(1),)).view(1, -1, 1, 1),
        lambda s, h: h * torch.ones(h.shape[1]).view(1, -1, 1, 1),
    ),
    "empty": (
        lambda s, h: h + torch.empty((h.size(1),)).zero_().view(1, -1, 1, 1),
        lambda s, h: h + torch.empty(h.size(1)).zero_().view(1, -1, 1, 1),
    ),
    "new_zeros": (
        lambda s, h: h + h.new_zeros((h.size(1),)).view(1, -1, 1, 1),
        lambda s, h: h + h.new_zeros(h.size(1)).view(1, -1, 1, 1),
    ),
}


@pytest.mark.parametrize("name", list(_ONE_INT))
def test_a_fresh_tensor_sized_by_one_length_plans_as_its_tuple(name: str) -> None:
    plain, other = _ONE_INT[name]
    _same_plan(plain, other)


def test_randn_sized_by_one_length_plans_as_its_tuple() -> None:
    """Random values differ run to run (no exactness to check): the two spellings plan alike."""
    plans = [
        skg.plan(Net(fn).eval(), torch.randn(*X))
        for fn in (
            lambda s, h: h * torch.randn((h.size(1),)).view(1, -1, 1, 1),
            lambda s, h: h * torch.randn(h.size(1)).view(1, -1, 1, 1),
        )
    ]
    assert _signature(plans[0]) == _signature(plans[1])


# --- 5: a pooled axis whose window is one index passes through --------------------------------------

_POOLS = {
    "avg-funnel": lambda s, h: _image(F.avg_pool2d(_tokens(h)[:, None], (2, 1), stride=(2, 1), ceil_mode=True)[:, 0]),
    "avg-layer": lambda s, h: _image(s.avg(_tokens(h)[:, None])[:, 0]),
    "max": lambda s, h: _image(F.max_pool2d(_tokens(h)[:, None], (2, 1))[:, 0]),
    "max-layer": lambda s, h: _image(s.max(_tokens(h)[:, None])[:, 0]),
    "avg-padded-rows": lambda s, h: _image(F.avg_pool2d(_tokens(h)[:, None], (3, 1), 1, (1, 0), count_include_pad=False)[:, 0]),
    "avg-1d": lambda s, h: _image(F.avg_pool1d(h.flatten(2), 1).transpose(1, 2)),
}
_POOL_LAYERS = {"avg": nn.AvgPool2d((2, 1), ceil_mode=True), "max": nn.MaxPool2d((2, 1))}


@pytest.mark.parametrize("name", list(_POOLS))
def test_a_window_of_one_index_passes_the_axis_through(name: str) -> None:
    """Pooling a (B, 1, L, C) tensor with a kernel 1 along ``C`` is an identity per channel: it
    plans as the channels would without it (``h`` pooled over the rows alone)."""
    plan = _same_plan(lambda s, h: _image(_tokens(h)), _POOLS[name], **_POOL_LAYERS)
    assert plan.group("a:out").zero_invariant


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, h: _image(F.max_pool2d(_tokens(h)[:, None], (2, 1), return_indices=True)[0][:, 0]),
        lambda s, h: _image(F.avg_pool2d(_tokens(h)[:, None], (2, 2), (2, 1))[:, 0]),
        lambda s, h: _image(F.avg_pool2d(_tokens(h)[:, None], (2, 1), (2, 2))[:, 0]),
    ],
    ids=["with-indices", "kernel-2", "stride-2"],
)
def test_other_windows_keep_their_pin(fn: Fn) -> None:
    """Positions flatten the pooled axes into one index; a wider window or stride mixes or drops channels."""
    group = skg.plan(Net(fn).eval(), torch.randn(*X)).group("a:out")
    assert not group.prunable and "spatial axis" in (group.reason or ""), group


# --- 2: GroupNorm with one channel per group is an InstanceNorm ------------------------------------


@pytest.mark.parametrize("where", ["after", "before-relu"])
def test_group_norm_of_one_channel_per_group_plans_as_instance_norm(where: str) -> None:
    """Per-group statistics of one channel are per-channel ones: zero-invariant as InstanceNorm's,
    and surgery lowers ``num_groups`` with the channels."""
    fn: Fn = (lambda s, h: s.n(h)) if where == "after" else (lambda s, h: torch.relu(s.n(h * 2.0)))
    torch.manual_seed(0)
    instance, group = nn.InstanceNorm2d(C, affine=True), nn.GroupNorm(C, C)
    with torch.no_grad():
        for p in (*instance.parameters(), *group.parameters()):
            p.copy_(torch.rand_like(p) + 0.5)
    plain, model = _holds(Net(fn, n=instance)), Net(fn, n=group).eval()
    plan = _holds(model)
    assert _signature(plain) == _signature(plan) and plan.group("a:out").zero_invariant
    small = skg.prune(model, plan, ratio=0.5).model.eval()
    assert small.n.num_groups == small.n.num_channels == C // 2 and small(torch.randn(*X)).shape == (2, 4, 6, 6)


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (lambda: nn.GroupNorm(C, C, affine=False), "one channel per group of GroupNorm n"),
        (lambda: nn.GroupNorm(4, C), None),
    ],
    ids=["no-affine", "groups-of-three"],
)
def test_other_group_norms_plan_as_before(layer: Callable[[], nn.Module], reason: str | None) -> None:
    """Without a weight surgery cannot learn the new count: the pin stays. Groups of three keep
    their count (position ``k`` of every group is one channel), not zero-invariant."""
    model = Net(lambda s, h: s.n(h), n=layer())
    group = (skg.plan(model.eval(), torch.randn(*X)) if reason else _holds(model)).group("a:out")
    if reason:
        assert not group.prunable and reason in (group.reason or ""), group
    else:
        assert group.prunable and not group.zero_invariant and group.size == C // 4  # 3 positions of 4 groups


# --- 6: unflatten by a read length; view sizes computed from numel() -------------------------------

_RESHAPES = {
    "unflatten-read": (
        _by_view,
        lambda s, h: h.flatten(1).unflatten(-1, (h.size(1), -1)).view_as(h),
    ),
    "unflatten-function": (
        _by_view,
        lambda s, h: torch.unflatten(h.flatten(1), -1, (h.shape[1], -1)).view_as(h),
    ),
    "numel-last": (
        _by_view,
        lambda s, h: h.view(h.size(0), h.size(1), h.numel() // (h.size(0) * h.size(1))).view(h.shape),
    ),
    "numel-chained": (
        _by_view,
        lambda s, h: h.view(h.shape[0], h.shape[1], h.numel() // h.shape[0] // h.shape[1]).view(h.shape),
    ),
    "numel-first": (
        lambda s, h: h.view(-1, h.size(1), 36).view(h.shape),
        lambda s, h: h.view(h.numel() // (h.size(1) * 36), h.size(1), 36).view(h.shape),
    ),
}


@pytest.mark.parametrize("name", list(_RESHAPES))
def test_sizes_from_numel_and_unflatten_plan_as_view(name: str) -> None:
    plain, other = _RESHAPES[name]
    _same_plan(plain, other)


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, h: h.view(h.size(0), h.numel() // (h.size(0) * 36), 36).view(h.shape),
        lambda s, h: h.view(h.size(0), h.size(1), h.numel() // (h.size(1) // 2) // h.size(0) // 2).view(h.shape),
        lambda s, h: h.flatten(1).unflatten(-1, (C, -1)).view_as(h),
    ],
    ids=["channels-from-numel", "numel-over-half-a-length", "unflatten-literal"],
)
def test_sizes_that_would_not_follow_keep_their_pin(fn: Fn) -> None:
    """A channel count computed from ``numel()`` (not read), a divisor that is no length as read
    (``c // 2``), a literal count: none follows the pruned channels."""
    group = skg.plan(Net(fn).eval(), torch.randn(*X)).group("a:out")
    assert not group.prunable, group
