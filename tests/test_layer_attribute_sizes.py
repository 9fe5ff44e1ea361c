"""Sizes read from a layer's attributes, or computed from a size attribute (issue 7).

A literal the code read from a torch.nn layer (``self.ln.normalized_shape``, ``self.fc.out_features``,
``self.attn.num_heads``) follows that layer's axis it counts (``graph/layer_counts.py``), or pins
both sides where no axis of the layer is known to follow it (``attn.embed_dim``). A number the code
computed from a size attribute (``C // self.num_heads``, ``self.a.out_channels // 2``) pins the
axes the attribute counts (``graph/computed_sizes.py``); arithmetic that keeps the value whatever
the count (``self.width * 1``, ``self.width + 0``) is the read itself. Each model: plan equality
across spellings that must agree, every prunable group pruned (alone, and all at 0.5), exact where
zero-invariant, the user's model untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from test_adversary_round4 import C, Net, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg

SEQ = (2, 7, 5)


def _alike(*models: nn.Module, x: Tensor | None = None, tmp_path: Path | None = None) -> skg.Plan:
    """Every model passes the oracle (``_holds``; a sequence model: ``_prunes``), and all plan
    alike (size, prunable, zero_invariant, members)."""
    if x is None:
        plans = [_holds(m) for m in models]
    else:
        assert tmp_path is not None
        plans = [_prunes(m.eval(), x, tmp_path) for m in models]
    sigs = [_signature(p) for p in plans]
    assert all(s == sigs[0] for s in sigs[1:])
    return plans[0]


def _prunes(model: nn.Module, x: Tensor, tmp_path: Path) -> skg.Plan:
    """Plan (saved and reloaded alike), prune every prunable group at 0.5 (query and value
    groups that share ``head_dim`` are a count tie: one mask each would break it), run the
    pruned model, and leave the user's model untouched."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = skg.plan(model, x)
    plan.save(tmp_path / "plan.json")
    assert skg.Plan.load(tmp_path / "plan.json") == plan
    result = skg.prune(model, plan, ratio=0.5)
    assert result.model(x).shape == model(x).shape
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    return plan


# --- heads merged by a width read off a layer ------------------------------------------------------


class _Merge(nn.Module):
    """Heads (3 of 4) merged by ``spelling``; ``ln`` normalises the residual (12), which ``inp``
    produces: ``ln.normalized_shape`` and ``inp.out_features`` are the residual's width, equal by
    value to the merged width."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.heads, self.head_dim = spelling, 3, 4
        self.query, self.key, self.value = (nn.Linear(12, 12) for _ in range(3))
        self.out, self.ln, self.inp, self.head = nn.Linear(12, 12), nn.LayerNorm(12), nn.Linear(5, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(torch.relu(self.inp(x)))
        q, k, v = (
            f(h).view(h.size()[:-1] + (self.heads, self.head_dim)).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        c = ((q @ k.transpose(-1, -2) / math.sqrt(4)).softmax(-1) @ v).transpose(1, 2).contiguous()
        b, n = c.shape[:2]
        size = {
            "norm_tuple": lambda: c.size()[:-2] + self.ln.normalized_shape,
            "norm_element": lambda: (b, n, self.ln.normalized_shape[0]),
            "residual_features": lambda: (b, n, self.inp.out_features),
        }[self.spelling]()
        return self.head(self.out(c.view(size)) + h)


def test_a_merge_by_the_residual_norm_width_follows_the_residual(tmp_path: Path) -> None:
    """``view(... + self.ln.normalized_shape)`` (12, the residual's width) was matched to the
    residual by value but not linked to it: heads and residual were pruned apart and prune
    refused. Now it is linked to ``ln.weight``, as ``self.inp.out_features`` always was."""
    x = torch.randn(*SEQ)
    plan = _alike(*(_Merge(s) for s in ("norm_tuple", "norm_element", "residual_features")), x=x, tmp_path=tmp_path)
    assert plan.prunable


# --- a head size computed from a head count ----------------------------------------------------------


class _Quotient(nn.Module):
    """timm ``swinv2_cr``'s ``qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads)``, C read
    off the input: pruning heads would make ``C // num_heads`` grow while each head keeps 4."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.num_heads = spelling, 3
        self.inp, self.qkv, self.proj, self.head = nn.Linear(5, 12), nn.Linear(12, 36), nn.Linear(12, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.inp(x))
        b, n, c = x.shape
        head = {"quotient": lambda: c // self.num_heads, "literal": lambda: 4}[self.spelling]()
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, head).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.head(self.proj(a) + x)


def test_a_head_size_computed_from_the_head_count_pins_the_heads(tmp_path: Path) -> None:
    result = check_oracle(_Quotient("quotient"), torch.randn(*SEQ), tmp_path, min_drop=0.0, require=False)
    heads = result.plan.group("qkv:out")
    assert not heads.prunable and "num_heads" in (heads.reason or "") and "computed" in (heads.reason or ""), heads


# --- torch.nn.MultiheadAttention's attributes --------------------------------------------------------


class _Mha(nn.Module):
    """A gate ``g`` viewed per head of ``attn`` (``self.attn.num_heads``) or by its width."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.inp, self.g, self.head = nn.Linear(5, 12), nn.Linear(12, 12), nn.Linear(12, 3)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inp(x))
        b, n = h.shape[:2]
        g = self.g(h)
        if self.spelling == "num_heads":
            g = g.view(b, n, self.attn.num_heads, -1).softmax(-1).reshape(b, n, -1)
        else:
            g = g.view(b, n, self.attn.embed_dim).relu()
        return self.head(self.attn(h, h, h, need_weights=False)[0] + g)


def test_a_view_by_the_attention_head_count_follows_its_heads(tmp_path: Path) -> None:
    """Linked to the layer's heads: pruning a head drops the gate's slice of it too (it was
    planned apart, and every prune refused: 'attn.num_heads did not size it')."""
    result = check_oracle(_Mha("num_heads"), torch.randn(*SEQ), tmp_path, min_drop=0.0, require=False)
    heads = next(g for g in result.plan.groups if any(m.param == "attn.in_proj_weight" and m.axis == 0 for m in g.members))
    assert heads.prunable and any(m.param == "g.weight" for m in heads.members), heads
    assert result.model.attn.num_heads < 3


def test_a_view_by_the_attention_width_pins_both_sides(tmp_path: Path) -> None:
    """``embed_dim`` counts both the input and the output of the layer: which one the code means
    is unknown, so the gate's group and the layer's output pin."""
    result = check_oracle(_Mha("embed_dim"), torch.randn(*SEQ), tmp_path, min_drop=0.0, require=False)
    gate = next(g for g in result.plan.groups if any(m.param == "g.weight" and m.axis == 0 for m in g.members))
    assert not gate.prunable and "attn.embed_dim" in (gate.reason or ""), gate


# --- conv and norm attributes in a CNN ---------------------------------------------------------------


def _view_by(size: Callable[[nn.Module, Tensor], int]) -> Callable[[nn.Module, Tensor], Tensor]:
    return lambda s, h: h.view(h.shape[0], size(s, h), -1).relu().view(h.shape)


def _inferred(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.shape[0], -1, h.shape[2] * h.shape[3]).relu().view(h.shape)


@pytest.mark.parametrize(
    "size",
    [
        lambda s, h: s.a.out_channels,
        lambda s, h: s.bn.num_features,
        lambda s, h: s.a.out_channels // 1,
    ],
    ids=["out_channels", "num_features", "floordiv_one"],
)
def test_a_view_by_a_layer_count_plans_as_an_inferred_one(size: Callable[[nn.Module, Tensor], int]) -> None:
    plan = _alike(Net(_view_by(size)), Net(_inferred))
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant


def _gated(s: nn.Module, h: Tensor) -> Tensor:
    """``h`` viewed by ``fc``'s width, scaled by a sum over ``fc``'s outputs (its own group)."""
    gate = torch.sigmoid(s.fc(h.mean((2, 3)))).sum(1).view(-1, 1, 1, 1)
    return _view_by(lambda s, h: s.fc.out_features)(s, h) * gate


def test_a_view_by_another_layers_count_prunes_that_layer_too() -> None:
    """Surgery rewrites ``fc.out_features`` when ``fc`` loses rows, so the viewed axis (``a``'s
    channels) and ``fc``'s rows are one group; they were pruned apart."""
    group = _holds(Net(_gated, fc=nn.Linear(C, C))).group("a:out")
    assert group.prunable and any(m.param == "fc.weight" and m.axis == 0 for m in group.members), group


def test_a_split_by_half_a_layer_count_plans_as_chunk() -> None:
    """``self.a.out_channels // 2`` halves as ``a`` loses channels two at a time, one of each
    half (round 22: the halves are tied, as ``chunk(2)`` ties them), so it plans as ``chunk(2)``;
    the literal 6 does not follow and pins."""
    computed = _alike(
        Net(lambda s, h: torch.cat(torch.split(h, s.a.out_channels // 2, 1)[::-1], 1)),
        Net(lambda s, h: torch.cat(h.chunk(2, 1)[::-1], 1)),
    )
    literal = _holds(Net(lambda s, h: torch.cat(torch.split(h, 6, 1)[::-1], 1)))
    assert computed.group("a:out").prunable and computed.group("a:out").size == C // 2
    assert not literal.group("a:out").prunable


def test_a_branch_on_a_layer_count_pins() -> None:
    group = _holds(Net(lambda s, h: h * 2 if s.a.out_channels == C else h)).group("a:out")
    assert not group.prunable and "a.out_channels" in (group.reason or ""), group


# --- a module's own split width through arithmetic that keeps it -------------------------------------


class _Res2(nn.Module):
    """timm Res2Net's core: ``torch.split(out, <width>, 1)`` in 3 chunks of ``self.width``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.width, self.scale = spelling, 4, 3
        self.conv1, self.bn1 = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))
        self.conv3 = nn.Conv2d(12, 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        width = {"width": lambda: self.width, "times_one": lambda: self.width * 1, "plus_zero": lambda: self.width + 0}
        spx = torch.split(out, width[self.spelling](), 1)
        sp = torch.relu(self.convs[0](spx[0]))
        outs = [sp]
        sp = torch.relu(self.convs[1](sp + spx[1]))
        return self.conv3(torch.cat([*outs, sp, spx[2]], 1))


def test_a_split_width_through_an_identity_plans_as_the_width() -> None:
    plan = _alike(*(_Res2(s) for s in ("width", "times_one", "plus_zero")))
    group = plan.group("conv1:out")
    assert group.prunable and group.zero_invariant and [(r.owner, r.attr) for r in group.sizes] == [("", "width")]
