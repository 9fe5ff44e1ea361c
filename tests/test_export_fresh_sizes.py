"""Fresh tensors sized by the channel count, under torch.export as under torch.fx (issue 7).

torch.export writes ``torch.zeros(1, h.shape[1], 1, 1)`` as ``zeros([1, 8, 1, 1])``: the group
pinned ("fresh tensor") where torch.fx, whose graph holds the read, links the fresh axis to
``h``'s channels and prunes. The lengths the model's code reads are tracked while it is
exported; one that reaches a factory's size is written on the factory's node with the axis it
was read off (``graph/fresh_sizes.py``), and the rule links the two as on the torch.fx path.
Each spelling that now prunes has a twin that must still pin (a literal ``8``, a number
computed from the read, a user's own attribute that nothing rewrites).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

C = 8  # channels of group conv:out
Fn = Callable[["Net", Tensor], Tensor]


class Net(nn.Module):
    """conv (group ``conv:out``) -> ReLU -> ``fn`` -> b; ``if h.is_cuda`` sends it to
    torch.export (``export=False``: the same code under torch.fx)."""

    def __init__(self, fn: Fn, export: bool = True) -> None:
        super().__init__()
        self.fn, self.export, self.width = fn, export, C  # ``width``: a user's int nothing rewrites
        self.conv, self.b = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        if self.export and h.is_cuda:
            h = h.contiguous()
        return self.b(self.fn(self, h))


def _zeros_read(m: Net, h: Tensor) -> Tensor:
    c = h.shape[1]
    return h + torch.zeros(1, c, 1, 1)


def _zeros_attribute(m: Net, h: Tensor) -> Tensor:
    return h + torch.zeros(1, m.conv.out_channels, 1, 1)


def _new_zeros_attribute(m: Net, h: Tensor) -> Tensor:
    b = h.shape[0]
    return h + h.new_zeros(b, m.conv.out_channels)[:, :, None, None]


def _ones_lone_size(m: Net, h: Tensor) -> Tensor:
    return h * torch.ones(h.size(1))[:, None, None]


def _full(m: Net, h: Tensor) -> Tensor:
    c = h.shape[1]
    return h * torch.full((c,), 0.5)[:, None, None]


def _ones_whole_shape(m: Net, h: Tensor) -> Tensor:
    return h + torch.ones(h.shape)


def _unpacked_len(m: Net, h: Tensor) -> Tensor:
    _, c, _, _ = h.shape
    return h * torch.ones(c, 1, 1).add(1.0)


# The size follows the count and the fill is the same at any count: zero-invariant.
FOLLOWS: dict[str, Fn] = {
    "zeros_read": _zeros_read,
    "zeros_attribute": _zeros_attribute,
    "new_zeros_attribute": _new_zeros_attribute,
    "ones_lone_size": _ones_lone_size,
    "full": _full,
    "ones_whole_shape": _ones_whole_shape,
    "unpacked": _unpacked_len,
}
SAME_ON_FX = ("zeros_read", "new_zeros_attribute", "ones_lone_size", "full", "ones_whole_shape", "unpacked")
# torch.fx pins ``torch.zeros(1, m.conv.out_channels, 1, 1)``: a call with no traced input is run,
# not traced (a constant of the graph), so the attribute read is a use its graph does not hold.
SLOW = ("new_zeros_attribute", "ones_whole_shape", "unpacked")


def _ones_summed(m: Net, h: Tensor) -> Tensor:
    c = h.shape[1]
    return h * torch.ones(1, c, 1, 1).sum(1, keepdim=True)


def _ones_cumsum(m: Net, h: Tensor) -> Tensor:
    c = h.shape[1]
    return h + torch.ones(c).cumsum(0)[:, None, None]


def _arange(m: Net, h: Tensor) -> Tensor:
    c = h.shape[1]
    return h * torch.arange(c)[:, None, None]


# The count folded into the values: pruned and masked outputs differ, never zero-invariant.
VALUES: dict[str, Fn] = {"ones_summed": _ones_summed, "ones_cumsum": _ones_cumsum, "arange": _arange}


def _zeros_literal(m: Net, h: Tensor) -> Tensor:
    return h + torch.zeros(1, 8, 1, 1)


def _zeros_computed(m: Net, h: Tensor) -> Tensor:
    return h + torch.zeros(1, h.shape[1] // 2 * 2, 1, 1)


def _zeros_user_width(m: Net, h: Tensor) -> Tensor:
    return h + torch.zeros(1, m.width, 1, 1)


# Twins that must still pin: the size would not follow a pruned count.
PINS: dict[str, Fn] = {
    "literal": _zeros_literal,
    "computed": _zeros_computed,
    "user_width": _zeros_user_width,
}


def _x() -> Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 6, 6)


def _conv(fn: Fn, export: bool = True) -> tuple[Net, skg.Plan, skg.Group]:
    torch.manual_seed(0)
    model, x = Net(fn, export).eval(), _x()
    assert is_exported(trace_graph(model, x)) is export
    plan = skg.plan(model, x)
    return model, plan, plan.group("conv:out")


def _param(name: str) -> object:
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in FOLLOWS])
def test_a_fresh_tensor_sized_by_the_count_prunes_under_export(name: str, tmp_path: Path) -> None:
    """Prunable and zero-invariant; at 0.5 it prunes, reloads, and the pruned model equals the
    masked dense one (``check_oracle``); torch.fx plans the same group alike."""
    model, plan, group = _conv(FOLLOWS[name])
    assert group.prunable and group.zero_invariant, group
    result = check_oracle(model, _x(), tmp_path)
    assert result.model.conv.out_channels == C // 2
    if name in SAME_ON_FX:
        _, _, on_fx = _conv(FOLLOWS[name], export=False)
        assert (on_fx.prunable, on_fx.zero_invariant, on_fx.members) == (True, True, group.members)


@pytest.mark.parametrize("name", list(VALUES))
def test_the_count_folded_into_values_is_never_zero_invariant(name: str) -> None:
    """``ones(C).sum()``, ``cumsum``, ``arange(C)``: never claimed zero-invariant (arange pins, on
    both paths); where prunable, ``prune`` at 0.5 runs."""
    model, plan, group = _conv(VALUES[name])
    assert not group.zero_invariant, group
    if name != "arange":
        assert group.prunable, group
    _, _, on_fx = _conv(VALUES[name], export=False)
    assert (on_fx.prunable, on_fx.zero_invariant) == (group.prunable, group.zero_invariant)
    x = _x()
    pruned = skg.prune(model, plan, ratio=0.5).model.eval()
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


@pytest.mark.parametrize("name", list(PINS))
def test_a_size_that_would_not_follow_still_pins(name: str) -> None:
    _, _, group = _conv(PINS[name])
    assert not group.prunable and "fresh tensor" in (group.reason or ""), group
