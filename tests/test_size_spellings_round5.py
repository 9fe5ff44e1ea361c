"""Spellings of one op that planned differently through the size reads (issue 7, adversary round 4,
"Found, left"): each spelling must give the plan of the others, whose prunable groups prune at
ratio 0.5 and, where zero-invariance is claimed, match the masked dense model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adversary_round4 import Net, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg

X = (2, 3, 6, 6)
Fn = Callable[[nn.Module, Tensor], Tensor]


def _plan_and_prune(fn: Fn, keep: int, **extra: object) -> skg.Plan:
    """The plan of ``Net(fn)``; every prunable group pruned to ``keep`` channels (ratio 0.5 here)
    runs, and matches the masked dense model where it claims zero-invariance (``_holds``)."""
    return _holds(Net(fn, **extra), keep=keep)


# --- 1. channel shuffle: a length read divided by a literal, and the closing view by that length -----


def _shuffle_module(s: nn.Module, h: Tensor) -> Tensor:
    return nn.functional.channel_shuffle(h, 3)


def _shuffle_shape(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, ww = h.shape
    return h.view(b, 3, c // 3, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)


def _shuffle_size(s: nn.Module, h: Tensor) -> Tensor:
    c = h.size(1)
    return h.view(h.size(0), 3, c // 3, h.size(2), h.size(3)).transpose(1, 2).contiguous().view(h.size(0), c, 6, 6)


def _shuffle_attribute(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, ww = h.shape
    return h.view(b, s.groups, c // s.groups, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)


def _shuffle_inferred_then_read(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, ww = h.shape
    return h.view(b, 3, -1, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)


def _shuffle_reshape(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, ww = h.size()
    return h.reshape(b, 3, -1, hh, ww).permute(0, 2, 1, 3, 4).reshape(b, -1, hh, ww)


def _shuffle_unflatten(s: nn.Module, h: Tensor) -> Tensor:
    return h.unflatten(1, (3, -1)).transpose(1, 2).flatten(1, 2)


def _shuffle_unflatten_read(s: nn.Module, h: Tensor) -> Tensor:
    return h.unflatten(1, (3, h.shape[1] // 3)).transpose(1, 2).reshape(h.shape)


SHUFFLES = [_shuffle_shape, _shuffle_size, _shuffle_attribute, _shuffle_inferred_then_read, _shuffle_reshape,
            _shuffle_unflatten, _shuffle_unflatten_read]  # fmt: skip


@pytest.fixture(scope="module")
def shuffle_plan() -> set[tuple]:
    plan = _plan_and_prune(_shuffle_module, keep=2)
    group = plan.group("a:out")
    assert group.size == 4 and group.prunable and group.zero_invariant  # blocks of 3 channels, one per shuffle group
    return _signature(plan)


@pytest.mark.parametrize("fn", SHUFFLES, ids=lambda f: f.__name__)
def test_channel_shuffle_spellings_plan_alike(fn: Fn, shuffle_plan: set[tuple]) -> None:
    """``view(b, g, c // g, H, W).transpose(1, 2).contiguous().view(b, c, H, W)`` with ``c`` read
    off ``h`` gave ``a:out`` one block of 12 channels (nothing to prune): the closing view's
    length read linked each channel to its shuffled copy as an identity, beside the reshape's
    own block links. The read no longer adds an identity where the reshape already carries
    the channels with their count (``size_args.counted_alike``)."""
    assert _signature(_plan_and_prune(fn, keep=2, groups=3)) == shuffle_plan


# --- 2. a length made a Python number: a value of tensor arithmetic, not control flow ---------------


def _scale_power(s: nn.Module, h: Tensor) -> Tensor:
    return h / h.shape[1] ** 0.5


def _scale_log_tensor(s: nn.Module, h: Tensor) -> Tensor:
    return h * torch.log(torch.tensor(float(h.shape[1])))


def _scale_float(s: nn.Module, h: Tensor) -> Tensor:
    return h / float(h.shape[1])


def _scale_float_local(s: nn.Module, h: Tensor) -> Tensor:
    n = float(h.size(1))
    h = h * 2
    return h / n


def _scale_float_math(s: nn.Module, h: Tensor) -> Tensor:
    return h / math.sqrt(float(h.size(1)))


def _scale_int(s: nn.Module, h: Tensor) -> Tensor:
    return h * int(h.size(1) ** 0.5)


def _scale_in_place(s: nn.Module, h: Tensor) -> Tensor:
    h = h + 1
    h /= float(h.shape[1])
    return h


@pytest.fixture(scope="module")
def scale_plan() -> set[tuple]:
    plan = _plan_and_prune(_scale_power, keep=6)
    group = plan.group("a:out")
    assert group.size == 12 and group.prunable and not group.zero_invariant
    return _signature(plan)


@pytest.mark.parametrize(
    "fn",
    [_scale_log_tensor, _scale_float, _scale_float_local, _scale_float_math, _scale_int, _scale_in_place],
    ids=lambda f: f.__name__,
)
def test_a_length_converted_to_a_number_plans_like_its_power(fn: Fn, scale_plan: set[tuple]) -> None:
    """``torch.log(torch.tensor(float(h.shape[1])))`` pinned ("python control flow on the
    length") where ``h.shape[1] ** 0.5`` only costs zero-invariance: Python's ``float``/``int``
    hid the number. ``flow_values`` follows it through the model's bytecode: only arithmetic,
    pure functions and a tensor op taking it as an operand, so it is a value."""
    assert _signature(_plan_and_prune(fn, keep=6)) == scale_plan


def _helper(t: Tensor) -> float:
    return float(t.shape[1])


def _times_batch(s: nn.Module, h: Tensor) -> Tensor:
    m = h.shape[0] * int(h.shape[1] / 3)  # a node of lengths holds the number: Python decides on it
    return h * 2 if m > 5 else h


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, h: h * 2 if float(h.shape[1]) > 8 else h,
        lambda s, h: h * (float(h.shape[1]) > 3),
        lambda s, h: h / _helper(h),  # returned: the caller's use is not followed
        lambda s, h: F.interpolate(h, scale_factor=float(h.shape[1]) / 6),
        lambda s, h: h * 2 if torch.tensor(float(h.shape[1])).item() > 3 else h,
        # ``int(h.size(1) / 3)`` alone as the size is ``h.size(1) // 3`` (round 9); a number made from it is not
        lambda s, h: h.view(h.size(0), 3, int(h.size(1) / 3) % 5, -1).view(h.shape),
        _times_batch,
    ],
    ids=["branch", "comparison", "returned", "scale_factor", "item", "view_size", "times_batch"],
)
def test_a_converted_length_that_decides_or_sizes_still_pins(fn: Fn) -> None:
    """The same conversions deciding a branch, sizing a result or leaving the frame pin."""
    group = skg.plan(Net(fn), torch.randn(*X)).group("a:out")
    assert not group.prunable and "python control flow" in (group.reason or ""), group


# --- 3. a float on the left of a layer's size attribute ---------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, h: h * (1.0 / s.a.out_channels),
        lambda s, h: h * (0.5 * s.a.out_channels),
        lambda s, h: h / (2.0 + s.bn.num_features) * 14.0,
    ],
    ids=["reciprocal", "times", "sum"],
)
def test_a_float_on_the_left_of_an_attribute_plans_like_its_power(fn: Fn, scale_plan: set[tuple]) -> None:
    """``1.0 / s.a.out_channels``: float's arithmetic reads the int subclass without a hook, so
    nothing saw the use and the attribute pinned. The read's number is followed like a
    converted length's (``flow_values``): an operand of tensor arithmetic, a value."""
    assert _signature(_plan_and_prune(fn, keep=6)) == scale_plan


def test_a_float_on_the_left_of_an_attribute_that_decides_still_pins() -> None:
    group = skg.plan(Net(lambda s, h: h * 2 if 1.0 / s.a.out_channels > 0.05 else h), torch.randn(*X)).group("a:out")
    assert not group.prunable and "a.out_channels" in (group.reason or ""), group
