"""Grouped-query attention written by hand, with the repeat count computed from two attributes
(``self.num_heads // self.num_kv_heads``).

Before: such a count was matched to attributes by its value, so the plan depended on the
numbers: with 4 heads over 2 key/value heads the ratio 2 "was" ``num_kv_heads`` (``expand``
pinned every head under ``gqa="kv_groups"``; ``repeat_interleave`` followed under
``"query_heads"``), with 6 over 2 it was nothing (the reverse). And where the code counted no
axis by ``num_heads`` (``q.view(b, n, -1, d)``), surgery rewrote ``num_kv_heads`` only: the
recomputed count grew and the pruned model failed to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

SHAPES = {"4/2": (4, 2), "6/2": (6, 2), "8/2": (8, 2), "4/4": (4, 4)}


class Gqa(nn.Module):
    """``repeat``: how key/value heads meet the query heads; ``q_heads``: how q's view counts them."""

    def __init__(self, heads: int, kv_heads: int, repeat: str, q_heads: str = "attribute") -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, 8
        self.repeat, self.q_heads = repeat, q_heads
        d = heads * self.head_dim
        self.q, self.o = nn.Linear(d, d), nn.Linear(d, d)
        self.k, self.v = nn.Linear(d, kv_heads * self.head_dim), nn.Linear(d, kv_heads * self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads = self.num_heads if self.q_heads == "attribute" else -1
        q = self.q(x).view(b, n, heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        rep = self.num_heads // self.num_key_value_heads
        if self.repeat == "expand":
            shape = (b, self.num_key_value_heads, rep, n, self.head_dim)
            k = k[:, :, None].expand(*shape).reshape(b, heads, n, self.head_dim)
            v = v[:, :, None].expand(*shape).reshape(b, heads, n, self.head_dim)
        else:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def _heads(plan: skg.Plan) -> list[tuple[str, int]]:
    return [(g.name, g.size) for g in plan.prunable]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("repeat", ["expand", "repeat_interleave"])
def test_kv_groups_prune_whatever_the_ratio_equals(repeat: str, shape: str, tmp_path: Path) -> None:
    heads, kv = SHAPES[shape]
    model = Gqa(heads, kv, repeat).eval()
    result = check_oracle(model, torch.randn(2, 5, heads * 8), tmp_path, min_drop=0.0)
    assert _heads(result.plan) == [("q:out", kv)]
    assert result.model.num_heads // result.model.num_key_value_heads == heads // kv


@pytest.mark.parametrize("shape", list(SHAPES))
def test_query_heads_follow_a_ratio_of_attributes(shape: str, tmp_path: Path) -> None:
    """``repeat_interleave`` recomputes the ratio from the rewritten ``num_heads`` (6/2, 8/2
    used to pin: no attribute equals 3 or 4)."""
    heads, kv = SHAPES[shape]
    model = Gqa(heads, kv, "repeat_interleave").eval()
    result = check_oracle(model, torch.randn(2, 5, heads * 8), tmp_path, min_drop=0.0, gqa="query_heads")
    assert _heads(result.plan) == [("q:out", heads)]
    assert result.model.num_key_value_heads == kv
    assert result.model.num_heads < heads or heads == kv  # one query head per group keeps it


@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("repeat", ["expand", "repeat_interleave"])
def test_a_ratio_with_an_uncounted_attribute_pins(repeat: str, shape: str, gqa: str, tmp_path: Path) -> None:
    """``q.view(b, n, -1, d)`` (and ``reshape(b, -1, n, d)`` after ``expand``): nothing counts
    query heads by ``num_heads``, so surgery would leave it while ``num_kv_heads`` shrinks (the
    ratio 1 of 4/4 included). Before, every case under ``kv_groups`` failed to prune."""
    heads, kv = SHAPES[shape]
    model = Gqa(heads, kv, repeat, q_heads="inferred").eval()
    x = torch.randn(2, 5, heads * 8)
    plan = skg.plan(model, x, gqa=gqa)
    heads_group = next(g for g in plan.groups if g.name == "q:out")
    assert not heads_group.prunable, heads_group
    if gqa == "kv_groups" or repeat == "repeat_interleave":  # expand under query_heads pins anyway (a literal count)
        assert "which counts no axis" in (heads_group.reason or ""), heads_group.reason
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False, gqa=gqa)
