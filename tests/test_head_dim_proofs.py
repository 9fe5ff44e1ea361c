"""What ``plan(head_dim=True)`` must prove before it rescales a query (round 11's adversary).

Pruning head_dim changes the default scale ``1/sqrt(d)``; surgery multiplies the query's
projection by ``sqrt(d'/d)`` (and rewrites a scale attribute). Before, each spelling below was a
prunable, zero-invariant head_dim group whose pruned model differed from the masked one by 2-60%:
a constant added to the query, the key summed or concatenated into it, the query's projection
also used as the key or called a second time, a scale attribute whose value another attribute
shares or that the code reads again. Each now leaves head_dim unpruned (heads still prune), and
the plain spellings still prune it exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel
from torch import Tensor, nn

import sparsekit_graph as skg

QUERY_CHANGES = {
    "plain": lambda q, k: q,
    "constant_right": lambda q, k: q + 0.5,
    "constant_left": lambda q, k: 0.5 + q,
    "minus_constant": lambda q, k: q - 1.0,
    "constant_minus": lambda q, k: 1.0 - q,
    "add_method": lambda q, k: q.add(1.0),
    "torch_add": lambda q, k: torch.add(q, 1.0),
    "alpha_sum": lambda q, k: torch.add(q, q, alpha=2.0),  # 3q: still linear in q
    "over_constant": lambda q, k: q / 2.0,
    "plus_key": lambda q, k: q + k,
}
EXACT = {"plain", "alpha_sum", "over_constant"}


class Attn(nn.Module):
    """Hand-written attention; ``how`` spells the query, the key or the scale."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.num_heads, self.head_dim = how, 4, 8
        if how == "equal_attributes":
            self.out_gain = self.head_dim**-0.5  # defined first, of the scale's value
        self.scale = self.head_dim**-0.5
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads = lambda t: t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        extra: Tensor | float = 0.0
        if self.how in QUERY_CHANGES:
            q = QUERY_CHANGES[self.how](q, k)
        elif self.how == "shared_key":
            k = q
        elif self.how == "projection_twice":
            extra = self.q(x * 2).sum(-1, keepdim=True)
        elif self.how == "key_in_query":  # queries for the tokens and for the keys, first n kept
            y = F.scaled_dot_product_attention(torch.cat([q, k], 2), k, v)[:, :, :n]
            return self.o(y.transpose(1, 2).reshape(b, n, -1))
        if self.how in ("equal_attributes", "scale_read_twice"):
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            gain = self.out_gain if self.how == "equal_attributes" else self.scale
            return self.o(y.transpose(1, 2).reshape(b, n, -1)) * (gain * 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1)) + extra


HOWS = [*QUERY_CHANGES, "shared_key", "projection_twice", "key_in_query", "equal_attributes", "scale_read_twice"]


@pytest.mark.parametrize("how", HOWS)
def test_head_dim_prunes_only_where_the_query_scales_exactly(how: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Attn(how).eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x, head_dim=True)
    found = [g for g in plan.prunable if g.name.endswith(":head_dim")]
    assert bool(found) == (how in EXACT), [(g.name, g.reason) for g in plan.groups]
    assert any(g.name == "q:out" for g in plan.prunable)  # heads prune whatever head_dim does
    for g in found:
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[[1, 5]] = False
        dense = copy.deepcopy(model)
        skg.bind(plan, dense)[g.name].apply_mask(mask)
        pruned = skg.prune(model, plan, masks={g.name: mask}).model.eval()
        with torch.no_grad():
            assert_close_rel(dense(x), pruned(x))
