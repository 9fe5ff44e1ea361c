"""A channel count used as a number (issue 7, over-pins and wrong claims in the size mechanisms).

``h / h.size(1)`` scales the channels by a number that changes with the kept count: the group
stays prunable but is not zero-invariant. Every other spelling of such a count-dependent number
must plan the same: a length or a layer's size attribute turned into a float
(``n ** -0.5``, ``n * 0.5``, ``math.sqrt(n)``), or into a tensor (``torch.tensor(C)``,
``torch.scalar_tensor(C)``). A number that decides Python control flow still pins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from math import sqrt as imported_sqrt
from pathlib import Path

import pytest
import torch
from helpers import Body, check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

X4 = (2, 3, 6, 6)
Fn = Callable[[nn.Module, Tensor], Tensor]


def _plain(s: nn.Module, h: Tensor) -> Tensor:
    return h / h.size(1)


def _size_scalar(s: nn.Module, h: Tensor) -> Tensor:
    c = h.size(1)
    return h / c


SPELLINGS: dict[str, Fn] = {
    "shape_reciprocal": lambda s, h: h * (1.0 / h.shape[1]),
    "size_scalar": _size_scalar,
    "shape_math_sqrt": lambda s, h: h / math.sqrt(h.shape[1]),
    "attr_div": lambda s, h: h / s.a.out_channels,
    "attr_times_float": lambda s, h: h * (s.a.out_channels * 0.5),
    "attr_pow": lambda s, h: h * s.a.out_channels**-0.5,
    "attr_math_sqrt": lambda s, h: h / math.sqrt(s.a.out_channels),  # was claimed zero-invariant
    "attr_math_sqrt_of_float": lambda s, h: h * math.sqrt(s.a.out_channels / 4),
    "tensor_of_length": lambda s, h: h * torch.tensor(h.shape[1]),
    "as_tensor_of_length": lambda s, h: h / torch.as_tensor(h.size(1)),
    "scalar_tensor_of_length": lambda s, h: h / torch.scalar_tensor(h.size(1)),
    "sqrt_tensor_of_length": lambda s, h: h / torch.sqrt(torch.tensor(h.shape[1], dtype=torch.float)),
    "tensor_list_of_length": lambda s, h: h * torch.tensor([h.shape[1], 2.0])[0],
    "tensor_of_attr": lambda s, h: h * torch.tensor(s.a.out_channels),
}


def _outcome(fn: Fn) -> tuple[bool, bool]:
    g = skg.plan(Body(fn).eval(), torch.randn(*X4)).group("a:out")
    return g.prunable, g.zero_invariant


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_a_count_used_as_a_number_plans_like_h_over_its_length(name: str, tmp_path: Path) -> None:
    """Prunable, not zero-invariant, as ``h / h.size(1)``; the pruned model runs."""
    torch.manual_seed(0)
    assert _outcome(_plain) == (True, False)
    assert _outcome(SPELLINGS[name]) == (True, False), name
    check_oracle(Body(SPELLINGS[name]), torch.randn(*X4), tmp_path, require=False)


def _decides(n: float, h: Tensor) -> Tensor:
    return h * 2 if n > 2.5 else h


DECIDING: dict[str, Fn] = {
    "math_sqrt_compared": lambda s, h: _decides(math.sqrt(s.a.out_channels), h),
    "pow_compared": lambda s, h: _decides(s.a.out_channels**0.5, h),
    "float_truth": lambda s, h: h * 2 if s.a.out_channels * 0.5 - 4 else h,
    "floor_of_float_as_size": lambda s, h: h[:, : math.floor(s.a.out_channels * 0.5)],
    "imported_sqrt": lambda s, h: h / imported_sqrt(s.a.out_channels),  # C code converts it: a pin, not a wrong claim
}


@pytest.mark.parametrize("name", list(DECIDING))
def test_a_count_number_that_decides_or_sizes_pins(name: str) -> None:
    """A float made from a count that decides control flow (or is converted where no hook follows
    it) pins the group, naming the attribute or the node."""
    g = skg.plan(Body(DECIDING[name]).eval(), torch.randn(*X4)).group("a:out")
    assert not g.prunable, g
    assert "a.out_channels" in (g.reason or "") or "node" in (g.reason or ""), g.reason


def test_a_float_on_the_left_of_a_count_plans_like_h_over_its_length() -> None:
    """float.__truediv__ reads an int subclass without a hook: ``flow_values`` follows the
    number from the read through the bytecode (``1.0 / n`` then ``h * ...``: a value)."""
    assert _outcome(lambda s, h: h * (1.0 / s.a.out_channels)) == _outcome(_plain)
    assert _outcome(lambda s, h: h * (0.5 * s.a.out_channels)) == _outcome(_plain)
