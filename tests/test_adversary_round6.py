"""Wrong plans an attack on round 5's mechanisms found (issue 7): fixed here, or strict xfails.

Each model is a conv ``a`` (group ``a:out``, 12 channels) -> BN -> ReLU -> the spelling -> a 1x1
conv head (``tests/test_adversary_round4.Net``). A prunable ``a:out`` must prune every mask and
match the masked dense model where zero-invariant (``_holds``); a spelling the code cannot follow
pins it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from test_adversary_round4 import C, Net, X, _holds
from test_layer_attribute_sizes import _Merge
from torch import Tensor, nn

import sparsekit_graph as skg


def _pinned(fn: Callable[..., Tensor], reason: str, **extra: object) -> None:
    model = Net(fn, **extra).eval()
    before = copy.deepcopy(model.state_dict())
    group = skg.plan(model, torch.randn(*X)).group("a:out")
    assert not group.prunable and reason in (group.reason or ""), group
    assert all(torch.equal(v, model.state_dict()[k]) and v.shape == model.state_dict()[k].shape for k, v in before.items())


# --- narrow over the whole axis by a number the code wrote -----------------------------------------


def test_narrow_by_a_literal_length_pins() -> None:
    """``h.narrow(1, 0, 12)`` was read as 'the whole axis' (an identity): prunable, prune failed."""
    _pinned(lambda s, h: h.narrow(1, 0, C), "selecting by position")
    _pinned(lambda s, h: h * (s.g * 2).narrow(0, 0, C).view(1, -1, 1, 1), "selecting by position", g=torch.rand(C))


def test_narrow_by_the_axis_length_prunes() -> None:
    assert _holds(Net(lambda s, h: h.narrow(1, 0, h.size(1)))).group("a:out").prunable


# --- a buffer written in forward ---------------------------------------------------------------------


@pytest.mark.parametrize("start", [C, 0], ids=["same-size", "empty"])
def test_a_buffer_written_with_out_pins(start: int) -> None:
    """``torch.mul(self.g, 2, out=self.tmp)``: tmp's values come from g by code no link explains
    (planned prunable with tmp sliced and g not; an empty tmp crashed the restore)."""

    def fn(s: nn.Module, h: Tensor) -> Tensor:
        torch.mul(s.g, 2, out=s.tmp)
        return h * s.tmp.view(1, -1, 1, 1)

    model = Net(fn, g=torch.rand(C) + 0.5, tmp=torch.zeros(start)).eval()
    model.tmp = torch.zeros(start)  # the dry run in Net's __init__ resized it
    group = skg.plan(model, torch.randn(*X)).group("a:out")
    # torch.fx runs the write at trace time (its graph reads tmp's old values: the eager check sends
    # the same-size model to torch.export, which records the ``out=`` write)
    reasons = ("buffer tmp written in forward", "writes its result into a given tensor (out=)")
    assert not group.prunable and any(r in (group.reason or "") for r in reasons), group.reason
    assert model.tmp.shape == (start,)


# --- a view of a buffer keeps the numbers it was written with ----------------------------------------


@pytest.mark.parametrize("op", ["view", "reshape"])
def test_a_buffer_viewed_by_a_literal_pins_and_by_minus_one_prunes(op: str) -> None:
    _pinned(lambda s, h: h * getattr(s.g, op)(1, C, 1, 1), "constant size", g=torch.rand(C))
    assert _holds(Net(lambda s, h: h * getattr(s.g, op)(1, -1, 1, 1), g=torch.rand(C))).group("a:out").prunable


@pytest.mark.parametrize("buffer", [lambda: torch.rand(C, 2)[:, 0], lambda: torch.rand(1).expand(C)], ids=["column", "expanded"])
def test_a_buffer_that_is_a_view_prunes(buffer: Callable[[], Tensor]) -> None:
    """A buffer registered as a view of a temporary traced to other nodes in the pruned copy."""
    assert _holds(Net(lambda s, h: h * s.g[None, :, None, None], g=buffer())).group("a:out").prunable


# --- numbers written beside reads in a size tuple ---------------------------------------------------


def test_expand_and_unflatten_by_a_literal_in_a_size_tuple_pin() -> None:
    _pinned(lambda s, h: h[:, :1].expand(h.shape[:1] + (C,) + h.shape[2:]) * h, "constant size")
    _pinned(lambda s, h: h.flatten(1).unflatten(1, (C,) + h.shape[2:]), "")


def test_unflatten_by_reads_alone_prunes() -> None:
    assert _holds(Net(lambda s, h: h.flatten(2).unflatten(2, h.shape[2:]))).group("a:out").prunable


# --- a layer's size attribute sizing another group --------------------------------------------------


def test_heads_merged_by_a_norm_width_never_fail_to_prune() -> None:
    """``c.view(c.size()[:-2] + self.ln.normalized_shape)``: the merge width was matched to the
    LayerNorm's attribute but not linked to its axis, so pruning heads or the residual refused.
    A layer's size attribute now links the axis it sizes to the layer's axis it counts
    (``graph/layer_counts.py``). Every prunable group is pruned at once (query and value share
    ``head_dim``: a count tie, one mask each would break it) and at 0.5."""
    model, x = _Merge("norm_tuple").eval(), torch.randn(2, 7, 5)  # heads merged with a LayerNorm of the residual's width
    plan = skg.plan(model, x)
    assert plan.prunable
    masks = {}
    for group in plan.prunable:
        mask = torch.ones(group.size, dtype=torch.bool)
        mask[-1] = False
        masks[group.name] = mask
    skg.prune(model, plan, masks=masks).model(x)
    skg.prune(model, plan, ratio=0.5).model(x)
