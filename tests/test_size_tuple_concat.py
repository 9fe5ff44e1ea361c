"""Sizes built by tuple arithmetic (issue 7): ``view(*(h.size()[:-2] + (self.all_head_size,)))``.

Hugging Face's MobileViT merges its heads with ``context.size()[:-2] + (self.all_head_size,)``.
torch.fx records the concatenation as a node, so the merged width reached ``view`` as
``getitem(add(...), 2)``, a computed size the planner let follow the heads: the heads were
prunable with no size reference, and every prune failed ('shape [2, 5, 16] is invalid'). The
number is the code's literal: it follows a size attribute (surgery rewrites it) or pins.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg

HEADS, HEAD_DIM = 2, 8
WIDTH = HEADS * HEAD_DIM


class Attention(nn.Module):
    """MobileViT's self-attention, heads merged by a size tuple; ``merge`` spells the merge."""

    def __init__(self, merge: str) -> None:
        super().__init__()
        self.merge = merge
        self.attention_head_size, self.all_head_size = HEAD_DIM, WIDTH
        self.query, self.key, self.value = (nn.Linear(WIDTH, WIDTH) for _ in range(3))

    def forward(self, h: Tensor) -> Tensor:
        shape = (*h.shape[:-1], -1, self.attention_head_size)
        q, k, v = (f(h).view(shape).transpose(1, 2) for f in (self.query, self.key, self.value))
        ctx = (torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, -1) @ v).permute(0, 2, 1, 3).contiguous()
        if self.merge == "attribute":
            return ctx.view(*(ctx.size()[:-2] + (self.all_head_size,)))
        if self.merge == "attribute-tuple":
            return ctx.view(ctx.size()[:-2] + (self.all_head_size,))
        return ctx.view(*(ctx.size()[:-2] + (16,)))  # "literal": a number no attribute explains


class Net(nn.Module):
    def __init__(self, merge: str) -> None:
        super().__init__()
        self.a, self.att, self.o = nn.Linear(WIDTH, WIDTH), Attention(merge), nn.Linear(WIDTH, 4)
        if merge == "literal":
            del self.att.all_head_size

    def forward(self, x: Tensor) -> Tensor:
        return self.o(self.att(self.a(x)))


def _heads(plan: skg.Plan) -> skg.Group:
    return plan.group("att.query:out")


@pytest.mark.parametrize("merge", ["attribute", "attribute-tuple"])
def test_a_merged_width_from_a_size_attribute_follows_the_heads(merge: str) -> None:
    torch.manual_seed(0)
    model, x = Net(merge).eval(), torch.randn(2, 5, WIDTH)
    before = copy.deepcopy(model.state_dict())
    plan = skg.plan(model, x)
    heads = _heads(plan)
    assert heads.prunable and heads.zero_invariant and heads.size == HEADS
    assert [(r.owner, r.attr) for r in heads.sizes] == [("att", "all_head_size")]
    mask = torch.tensor([True, False])
    small = skg.prune(model, plan, masks={heads.name: mask}).model.eval()
    assert small.att.all_head_size == HEAD_DIM
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[heads.name].apply_mask(mask)
    with torch.no_grad():
        torch.testing.assert_close(small(x), dense(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_merged_width_no_attribute_explains_pins_the_heads() -> None:
    plan = skg.plan(Net("literal").eval(), torch.randn(2, 5, WIDTH))
    assert not _heads(plan).prunable


def test_hugging_face_mobilevit_attention_prunes_a_head() -> None:
    mm = pytest.importorskip("transformers.models.mobilevit.modeling_mobilevit")
    config = pytest.importorskip("transformers").MobileViTConfig(num_attention_heads=HEADS)

    class HF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.att, self.o = nn.Linear(WIDTH, WIDTH), mm.MobileViTSelfAttention(config, WIDTH), nn.Linear(WIDTH, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.o(self.att(self.a(x)))

    torch.manual_seed(0)
    model, x = HF().eval(), torch.randn(2, 5, WIDTH)
    plan = skg.plan(model, x)
    heads = _heads(plan)
    assert heads.prunable and heads.size == HEADS
    mask = torch.tensor([False, True])
    small = skg.prune(model, plan, masks={heads.name: mask}).model.eval()
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[heads.name].apply_mask(mask)
    with torch.no_grad():
        torch.testing.assert_close(small(x), dense(x), rtol=1e-4, atol=1e-5)
