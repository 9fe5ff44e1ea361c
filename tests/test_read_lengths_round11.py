"""A length read off one tensor that sizes another (round 11's adversary).

``F.layer_norm(y, (C,))`` with ``B, N, C = x.shape``, ``y.expand(x.shape)``, ``y.expand_as(x)``,
``g.expand(-1, -1, C)``: the result is as long as ``x``'s axis, whatever ``y`` loses. Before,
only the read axis pinned (``x``'s, a model input anyway) and ``y``'s channels stayed prunable:
every prune of them failed to run. Now the shaped axis pins too, or ``expand_as`` links it to
``other``'s; a view's sizes (``q.reshape(B * h, n, d)``) are still the factor rules' business.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

WIDTH = 32
SPELLINGS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "layer_norm_C": lambda y, x: F.layer_norm(y, (x.shape[-1],)),
    "layer_norm_shape_slice": lambda y, x: F.layer_norm(y, x.shape[-1:]),
    "rms_norm_C": lambda y, x: F.rms_norm(y, (x.size(-1),)),
    "expand_shape": lambda y, x: y.expand(x.shape),
    "expand_sizes": lambda y, x: y.expand(*x.size()),
    "broadcast_to": lambda y, x: torch.broadcast_to(y, x.shape),
    "expand_as": lambda y, x: y.expand_as(x),
    "gate_expand_C": lambda y, x: y * torch.sigmoid(y.mean(-1, keepdim=True)).expand(-1, -1, x.shape[-1]),
    "gate_broadcast_to": lambda y, x: y * torch.broadcast_to(torch.sigmoid(y.mean(-1, keepdim=True)), x.shape),
}


class Block(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.a, self.b = spelling, nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(SPELLINGS[self.spelling](F.gelu(self.a(x)), x))


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_a_length_read_off_another_tensor_pins_what_it_sizes(spelling: str, tmp_path: Path) -> None:
    model, x = Block(spelling).eval(), torch.randn(2, 5, WIDTH)
    plan = skg.plan(model, x)
    assert not any(g.name == "a:out" for g in plan.prunable), plan.prunable
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class PositionEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.pos = nn.Parameter(torch.randn(1, 5, WIDTH) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(F.gelu(self.a(x) + self.pos.expand_as(x)))


def test_a_position_embedding_expanded_as_the_input_holds_its_width(tmp_path: Path) -> None:
    model, x = PositionEmbedding().eval(), torch.randn(2, 5, WIDTH)
    assert not skg.plan(model, x).prunable
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class OwnWidth(nn.Module):
    """Read off the tensor itself: the length follows its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(WIDTH, 48), nn.Linear(48, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.a(x))
        h = F.layer_norm(h, (h.shape[-1],)) * torch.sigmoid(h.mean(-1, keepdim=True)).expand_as(h)
        return x + self.b(h)


def test_a_length_read_off_the_tensor_itself_still_prunes(tmp_path: Path) -> None:
    result = check_oracle(OwnWidth().eval(), torch.randn(2, 5, WIDTH), tmp_path, require=False)
    assert [g.name for g in result.plan.prunable] == ["a:out"]  # not zero-invariant: the norm's statistics


class WideNorm(nn.Module):
    """An MLP's hidden normalised by ``(4 * C,)``, ``C`` read off the input: a literal multiple."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(F.layer_norm(F.gelu(self.a(x)), (4 * x.shape[-1],)))


def test_a_literal_multiple_of_a_read_length_pins_too(tmp_path: Path) -> None:
    model, x = WideNorm().eval(), torch.randn(2, 5, WIDTH)
    assert not skg.plan(model, x).prunable
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
