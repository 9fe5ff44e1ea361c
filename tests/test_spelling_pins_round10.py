"""Needless pins and refusals of round 10 on the torch.fx path (issue 7): each spelling plans as
its twin does.

1. ``nonzero``, ``masked_select``, ``unique``: the shape pass has no meta kernel for them (their
   shape depends on values), so the model goes to ``torch.export`` as other torch.fx failures
   do, instead of being refused.
2. ``.type("torch.DoubleTensor")``, ``.cpu()``, ``.to("cpu")`` (device moves) are ``.to(dtype)``:
   the shape pass keeps them on meta (``tensor_types``).
3. ``torch.zeros(1, self.conv.out_channels, 1, 1)`` is recorded with its size read from the
   layer attribute, as ``h.new_zeros`` is (``tensor_data``); a module's own int still pins.
4. GQA by ``k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)`` plans as the literal repeat
   (``computed_repeats``), under both ``gqa`` policies.
5. Split sizes in a tuple attribute (``self.splits = (3, 5)``) follow as a list's do, and a list
   split whose parts nothing else tells apart (``cat([b, a])``) is one group per segment
   (``channels.segments_counted``) instead of one group ``splits[0]`` counts unevenly. A nested
   list still pins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

C = 8


class Vec(nn.Module):
    """A conv stem pooled to (B, C), then ``spelling`` and a linear head."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.stem, self.head, self.spelling = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 4), spelling

    def forward(self, x: Tensor) -> Tensor:
        v = F.relu(self.stem(x)).mean((2, 3))
        s = self.spelling
        if s == "nonzero":
            return self.head(v) + v.flatten()[torch.nonzero(v.flatten() > 0.5)[:, 0]].sum()
        if s == "masked_select":
            return self.head(v) + torch.masked_select(v, v > 0.1).mean()
        if s == "unique":
            return self.head(v) * torch.unique((v > 0.2).long()).numel()
        if s == "dtype":
            return self.head(v.type(torch.float64).float())
        if s == "type_name":
            return self.head(v.type("torch.DoubleTensor").float())
        if s == "type_name_float":
            return self.head(v.type("torch.FloatTensor"))
        if s == "cpu":
            return self.head(v.cpu())
        if s == "to_cpu":
            return self.head(v.to("cpu", torch.float64).float())
        return self.head(v)


def _groups(plan: skg.Plan) -> list[tuple[str, int, bool]]:
    return sorted((g.name, g.size, g.zero_invariant) for g in plan.prunable)


def _reasons(plan: skg.Plan) -> str:
    return " ".join(g.reason or "" for g in plan.groups if not g.prunable)


@pytest.mark.parametrize("spelling", ["nonzero", "masked_select", "unique"])
def test_data_dependent_shapes_go_to_export_not_refused(spelling: str) -> None:
    x = torch.randn(2, 3, 6, 6)
    assert is_exported(trace_graph(Vec(spelling), x))
    plan = skg.plan(Vec(spelling), x)
    assert not plan.prunable  # the stem's channels reach an op with no rule: pinned, not refused
    assert "stem" in " ".join(m.param for g in plan.groups if not g.prunable for m in g.members)


@pytest.mark.parametrize("spelling", ["type_name", "type_name_float", "cpu", "to_cpu"])
def test_type_by_name_and_device_moves_plan_as_to_dtype(spelling: str, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 6, 6)
    assert not is_exported(trace_graph(Vec(spelling), x))  # torch.fx, as ``.type(torch.float64)``
    twin = _groups(skg.plan(Vec("dtype"), x))
    assert twin == [("stem:out", C, True)]
    result = check_oracle(Vec(spelling), x, tmp_path, min_drop=0.0)
    assert _groups(result.plan) == twin


class Fresh(nn.Module):
    """``h + z``: ``z`` a fresh tensor sized by ``spelling``, then a 1x1 conv."""

    width = C  # a class attribute: a module's own int, which surgery does not rewrite

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.conv, self.head, self.spelling = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1), spelling

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        conv = self.conv  # its out_channels read only by the spelling that uses it
        z = {
            "length": lambda: torch.zeros(1, h.shape[1], 1, 1),
            "new_zeros": lambda: h.new_zeros(1, conv.out_channels, 1, 1),
            "zeros": lambda: torch.zeros(1, conv.out_channels, 1, 1),
            "ones": lambda: torch.ones(conv.out_channels)[None, :, None, None] * 0.5,
            "full": lambda: torch.full((1, conv.out_channels, 1, 1), 0.5),
            "head_in": lambda: torch.zeros(1, self.head.in_channels, 1, 1),
            "half": lambda: torch.zeros(1, conv.out_channels // 2, 1, 1).repeat(1, 2, 1, 1),
            "own": lambda: torch.zeros(1, self.width, 1, 1),
            "literal": lambda: torch.zeros(1, C, 1, 1),
        }[self.spelling]()
        return self.head(h + z)


@pytest.mark.parametrize("spelling", ["zeros", "ones", "full", "head_in"])
def test_fresh_tensor_sized_by_a_layer_attribute_follows_under_fx(spelling: str, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 6, 6)
    assert not is_exported(trace_graph(Fresh(spelling), x))
    twin = _groups(skg.plan(Fresh("length"), x))
    assert twin == _groups(skg.plan(Fresh("new_zeros"), x)) == [("conv:out", C, True)]
    result = check_oracle(Fresh(spelling), x, tmp_path)
    assert _groups(result.plan) == twin
    assert result.model.conv.out_channels < C


@pytest.mark.parametrize("spelling", ["half", "own", "literal"])
def test_fresh_tensor_not_following_the_count_still_pins(spelling: str) -> None:
    plan = skg.plan(Fresh(spelling), torch.randn(2, 3, 6, 6))
    assert not plan.prunable
    assert "conv" in " ".join(m.param for g in plan.groups if not g.prunable for m in g.members)


class Gqa(nn.Module):
    """Grouped-query attention written by hand: ``repeats`` spells the number of query heads
    per key/value head."""

    def __init__(self, repeats: str) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.repeats = 4, 2, 4, repeats
        self.q, self.o = nn.Linear(16, 16), nn.Linear(16, 16)
        self.k, self.v = nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (f(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2) for f in (self.k, self.v))
        r = {
            "literal": lambda: 2,
            "attributes": lambda: self.num_heads // self.num_kv_heads,
            "shape": lambda: q.shape[1] // k.shape[1],
            "size": lambda: q.size(1) // k.size(1),
            "other": lambda: q.shape[-1] // k.shape[1],  # head size over heads: 4 // 2, not the heads ratio
            "half": lambda: q.shape[1] // 2,  # one read length: not a ratio the rule follows
        }[self.repeats]()
        k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1)) + x


@pytest.mark.parametrize("repeats", ["shape", "size"])
def test_gqa_repeats_computed_from_head_counts_plan_as_the_literal(repeats: str, tmp_path: Path) -> None:
    x = torch.randn(2, 5, 16)
    twin = _groups(skg.plan(Gqa("attributes"), x))
    assert twin == [("q:out", 2, True)]
    result = check_oracle(Gqa(repeats), x, tmp_path, min_drop=0.0)
    assert _groups(result.plan) == twin
    assert (result.model.num_heads, result.model.num_kv_heads) == (2, 1)


def test_gqa_computed_repeats_follow_query_heads_pruning(tmp_path: Path) -> None:
    """``gqa="query_heads"``: the ratio changes and the computed repeats follow it."""
    x = torch.randn(2, 5, 16)
    twin = _groups(skg.plan(Gqa("attributes"), x, gqa="query_heads"))
    result = check_oracle(Gqa("shape"), x, tmp_path, min_drop=0.0, gqa="query_heads")
    assert _groups(result.plan) == twin == [("q:out", 4, True)]
    assert result.model.num_kv_heads == 2 and result.model.num_heads < 4


def test_gqa_literal_repeats_pin_under_query_heads(tmp_path: Path) -> None:
    """``gqa="query_heads"`` changes the number of query heads per key/value head, which the
    literal ``2`` cannot follow: the heads pin there (before, the plan was prunable and its prune
    refused), and plan as the other spellings do under ``"kv_groups"``."""
    x = torch.randn(2, 5, 16)
    assert "literal 2" in _reasons(skg.plan(Gqa("literal"), x, gqa="query_heads"))
    result = check_oracle(Gqa("literal"), x, tmp_path, min_drop=0.0, require=False, gqa="query_heads")
    assert not any(g.prunable and g.name == "q:out" for g in result.plan.groups)
    assert _groups(skg.plan(Gqa("literal"), x)) == [("q:out", 2, True)]


class GqaExpand(Gqa):
    """Key/value heads repeated by ``expand`` with a literal count per group, then merged."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (f(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2) for f in (self.k, self.v))
        k, v = (t[:, :, None].expand(-1, -1, 2, -1, -1).flatten(1, 2) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1)) + x


def test_gqa_literal_expand_pins_under_query_heads(tmp_path: Path) -> None:
    """The same literal count, spelled as ``expand``: prunable under ``"kv_groups"``, pinned
    under ``"query_heads"`` (before, its prune refused: "the pruned model does not run")."""
    x = torch.randn(2, 5, 16)
    assert ("q:out", 2, True) in _groups(check_oracle(GqaExpand("literal"), x, tmp_path, min_drop=0.0).plan)
    (tmp_path / "qh").mkdir()
    plan = check_oracle(GqaExpand("literal"), x, tmp_path / "qh", min_drop=0.0, require=False, gqa="query_heads").plan
    assert not any(g.prunable for g in plan.groups) and "literal number of query heads" in _reasons(plan)


def test_gqa_repeats_of_unrelated_lengths_still_pin(tmp_path: Path) -> None:
    x = torch.randn(2, 5, 16)
    assert "computed repeats" in _reasons(skg.plan(Gqa("half"), x))
    result = check_oracle(Gqa("other"), x, tmp_path, min_drop=0.0, require=False)  # the head size tied to the heads
    assert not result.plan.prunable


class Split(nn.Module):
    """A stem's pooled channels split by an attribute, joined again by ``cat``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.stem, self.head, self.spelling = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 4), spelling
        self.splits = {"tuple": (3, 5), "nested": [[3, 5]]}.get(spelling, [3, 5])

    def forward(self, x: Tensor) -> Tensor:
        v = F.relu(self.stem(x)).mean((2, 3))
        a, b = v.split(self.splits[0] if self.spelling == "nested" else self.splits, 1)
        if self.spelling == "literal":
            a, b = v.split([3, 5], 1)
        return self.head(torch.cat([b, a] if self.spelling in ("swapped", "tuple", "literal") else [a, b], 1))


@pytest.mark.parametrize("spelling", ["in_order", "swapped", "tuple"])
def test_split_by_a_list_or_tuple_attribute_prunes_each_segment(spelling: str, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 6, 6)
    result = check_oracle(Split(spelling), x, tmp_path)
    assert _groups(result.plan) == [("stem:out", 3, True), ("stem:out#2", 5, True)]
    kept = result.model.splits
    assert type(kept) is type(Split(spelling).splits) and sum(kept) == result.model.stem.out_channels < C
    a = next(g for g in result.plan.prunable if g.size == 3)
    assert [r.attr for r in a.sizes] == ["splits[0]"]


@pytest.mark.parametrize("spelling", ["nested", "literal"])
def test_split_by_a_nested_list_or_literals_still_pins(spelling: str) -> None:
    plan = skg.plan(Split(spelling), torch.randn(2, 3, 6, 6))
    assert not plan.prunable and "split with fixed sizes" in _reasons(plan)
