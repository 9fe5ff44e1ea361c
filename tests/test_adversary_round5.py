"""Wrong plans and needless pins adversary round 5 found (issue 7): fixed ones as plain tests,
the others as strict xfails naming the root cause.

Each test asserts the guarantee: a prunable group prunes with any mask to a model that runs, a
zero-invariance claim holds (pruned == dense with the removed channels zeroed), the model is
left as it was, and two spellings of one op give one plan. Harness and the full list of
findings: ``/tmp/adv5/REPORT.md`` (round 5).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_adversary_round4 import Net, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg


def _plans_alike(*fns: Callable[..., Tensor]) -> skg.Plan:
    plans = [_holds(Net(f)) for f in fns]
    sigs = [_signature(p) for p in plans]
    assert all(s == sigs[0] for s in sigs[1:])
    return plans[0]


# --- finding 1 (fixed): torch.where with its arguments named ----------------------------------------


def _leaky_positional(s: nn.Module, h: Tensor) -> Tensor:
    return torch.where(h - 0.5 > 0, h - 0.5, 0.1 * (h - 0.5))


def _leaky_keywords(s: nn.Module, h: Tensor) -> Tensor:
    return torch.where(condition=h > 0.5, input=h - 0.5, other=(h - 0.5) * 0.1)


def _leaky_keywords_reordered(s: nn.Module, h: Tensor) -> Tensor:
    return torch.where(other=(h - 0.5) * 0.1, condition=h > 0.5, input=h - 0.5)


def test_where_with_keywords_plans_like_positional() -> None:
    """``torch.where(condition=c, input=x, other=y)`` pinned ``a:out`` ('arguments of where could
    not be read') while the positional call prunes. Root cause: ``schema_args.bind_schema`` mapped
    the primary-tensor keyword (``input``) only onto the schema's first argument, and
    ``where.self(condition, self, other)`` has ``self`` second."""
    plan = _plans_alike(_leaky_positional, _leaky_keywords, _leaky_keywords_reordered)
    assert plan.group("a:out").prunable


# --- finding 2 (fixed): Tensor.new_tensor of a length ---------------------------------------------


def _mean_torch_tensor(s: nn.Module, h: Tensor) -> Tensor:
    return h - h.sum(1, keepdim=True) / torch.tensor(float(h.size(1)))


def _mean_new_tensor(s: nn.Module, h: Tensor) -> Tensor:
    return h - h.sum(1, keepdim=True) / h.new_tensor(h.shape[1])


def _mean_new_tensor_kw(s: nn.Module, h: Tensor) -> Tensor:
    return h - h.sum(1, keepdim=True) / h.new_tensor(data=h.shape[1], dtype=torch.float32)


def test_new_tensor_of_a_length_plans_like_torch_tensor() -> None:
    """``h.new_tensor(h.shape[1])`` pinned ``a:out`` ('arguments of new_tensor could not be read')
    while ``torch.tensor(float(h.size(1)))`` prunes (not zero-invariant: the divisor is the
    channel count). Root cause: ``Tensor.new_tensor`` is a builtin with neither a Python
    signature nor an operator schema, so ``normalize`` could not bind its data argument."""
    plan = _plans_alike(_mean_torch_tensor, _mean_new_tensor, _mean_new_tensor_kw)
    group = plan.group("a:out")
    assert group.prunable and not group.zero_invariant


# --- finding 3 (fixed): a head size computed from another layer's width (timm SwinV2-CR) ------------


class _WidthHeads(nn.Module):
    """timm ``swinv2_cr``'s attention: ``qkv(x).view(B, L, 3, heads, C // heads)`` with ``C`` read
    off the input ``x``, not off ``qkv``'s output (``"-1"``: the head size left to torch)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.emb, self.qkv, self.proj = nn.Linear(5, 16), nn.Linear(16, 48), nn.Linear(16, 16)
        self.heads, self.how = 2, how

    def forward(self, x: Tensor) -> Tensor:
        x = self.emb(x)
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads if self.how == "C" else -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("how", ["C", "-1"])
def test_head_size_read_off_another_width_pins(how: str) -> None:
    """``view(B, L, 3, heads, C // heads)`` with ``C`` the residual width: ``qkv:out`` (the head
    size) was planned prunable and prune refused every mask ('shape [2, 4, 3, 2, 8] is invalid').
    Root cause: ``length_uses._check`` pinned the read axis (``emb:out``: nothing links it to
    the view's head axis) but left the head axis, whose length that fixed number sets. Both
    pin now; with ``-1`` both stay prunable."""
    torch.manual_seed(0)
    model, x = _WidthHeads(how).eval(), torch.randn(2, 4, 5)
    plan = skg.plan(model, x)
    assert plan.group("qkv:out").prunable is (how == "-1")
    assert plan.group("emb:out").prunable is (how == "-1")
    for g in plan.prunable:
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[1:] = False
        skg.prune(model, plan, masks={g.name: mask}).model(x)
    skg.prune(model, plan, ratio=0.5).model(x)


@pytest.mark.slow
def test_swinv2_cr_heads_never_fail_to_prune() -> None:
    """timm ``swinv2_cr``: ``qkv(x).view(Bw, L, 3, self.num_heads, C // self.num_heads)``. The
    heads (``qkv:out``, 3 heads of 32, with ``logit_scale``) were planned prunable with
    ``num_heads`` following them, but ``C // num_heads`` then grew (96 // 2 = 48) while each
    head kept 32 channels: 'shape [32, 16, 3, 2, 48] is invalid'. A number computed from a size
    attribute (``graph/computed_sizes.py``) now pins the axes it counts, naming it; the plan
    prunes at 0.5."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "swinv2_cr_tiny_224", pretrained=False, num_classes=10, img_size=64, depths=(1, 1, 1, 1), window_size=4
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    plan = skg.plan(model, x)
    heads = plan.group("stages.0.blocks.0.attn.qkv:out")
    assert not heads.prunable and "num_heads" in (heads.reason or ""), heads
    skg.prune(model, plan, ratio=0.5).model(x)
