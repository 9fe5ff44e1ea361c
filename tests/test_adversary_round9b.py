"""Adversary round 9b (issue 7): guards on the mechanisms that unpin under torch.export and in
products with computed weights. No wrong plan was found; these pin down the plans that were
checked exact, so a later change that makes them wrong fails here.

Harness and the full list of models tried: /tmp/adv9b/REPORT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg
from tests.helpers import check_oracle

_C = 8


class _Stem(nn.Module):
    """A conv stem pooled to (batch, channels), ``tail`` of it, a head; with ``export`` the
    device test makes the fx trace fail, so the model is planned under torch.export."""

    def __init__(self, tail: Callable[[nn.Module, Tensor], Tensor], export: bool = True) -> None:
        super().__init__()
        self.export = export
        self.stem = nn.Conv2d(3, _C, 3, padding=1)
        self.w = nn.Parameter(torch.randn(_C, _C) * 0.3)
        self.head = nn.Linear(_C, 4)
        self.tail = tail

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        if self.export and h.device.type != "cpu":
            h = h * 1
        return self.head(self.tail(self, h))


def _group(plan: skg.Plan, name: str) -> skg.Group:
    return next(g for g in plan.groups if g.name == name)


def test_len_of_a_tensor_as_a_scale_is_a_count_not_zero_invariant(tmp_path: Path) -> None:
    """``v * len(h[0])`` under export: the count scales the output, so pruning changes it."""
    model = _Stem(lambda m, h: h.mean((2, 3)) * len(h[0]))
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    stem = _group(plan, "stem:out")
    assert stem.prunable and not stem.zero_invariant
    check_oracle(model, x, tmp_path, require=False)  # no zero-invariant group to mask


@pytest.mark.parametrize("axis", [0, 1])
def test_cumsum_of_a_weight_in_a_product_is_exact(axis: int, tmp_path: Path) -> None:
    """``v @ w.cumsum(axis).T``: a removed row of ``w`` drops out of every later row's sum
    in the dense model as in the pruned one, so its group is zero-invariant and exact."""
    model = _Stem(lambda m, h: h.mean((2, 3)) @ m.w.cumsum(axis).T)
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert _group(plan, "w:0").zero_invariant
    check_oracle(model, x, tmp_path)


class _WeightNormed(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, _C, 3, padding=1)
        lin = nn.Linear(_C, _C)
        if spelling == "old":
            lin = nn.utils.weight_norm(lin, dim=-1)
        else:
            lin = nn.utils.parametrizations.weight_norm(lin, dim=-1)
        self.lin = lin
        self.head = nn.Linear(_C, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.lin(F.relu(self.stem(x)).mean((2, 3)))))


@pytest.mark.parametrize("spelling", ["old", "parametrizations"])
def test_weight_norm_over_the_whole_tensor_is_exact(spelling: str, tmp_path: Path) -> None:
    """``dim=-1``: one norm over the whole weight (not per column); both spellings prune exactly."""
    check_oracle(_WeightNormed(spelling), torch.randn(2, 3, 6, 6), tmp_path)


# --- a random tensor sized by the count: prunable, but its kept channels draw other values ---------

_RANDOM: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "rand_generator": lambda m, h: h.mean((2, 3)) * torch.rand(h.shape[1], generator=torch.Generator().manual_seed(0)),
    "randn_seeded": lambda m, h: _seeded(lambda: h.mean((2, 3)) + torch.randn(h.shape[1])),
    "randn_like_seeded": lambda m, h: _seeded(lambda: h.mean((2, 3)) + torch.randn_like(h.mean((2, 3)))),
}


def _seeded(f: Callable[[], Tensor]) -> Tensor:
    torch.manual_seed(1)
    return f()


@pytest.mark.parametrize("name", list(_RANDOM))
def test_random_values_sized_by_the_count_are_not_zero_invariant(name: str, tmp_path: Path) -> None:
    """Was a wrong plan: ``torch.rand(C, generator=g)`` (fx) / ``torch.randn(C)`` after a seed
    (export) planned ``stem:out`` zero-invariant, but the pruned model draws 4 values where
    the masked dense one keeps 4 of 8 others (mismatch up to 0.5)."""
    model = _Stem(_RANDOM[name], export=name != "rand_generator")  # torch.export refuses a generator
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert not _group(plan, "stem:out").zero_invariant
    if _group(plan, "stem:out").prunable:
        check_oracle(model, x, tmp_path, require=False)


_RANDOM_FILLS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "normal_": lambda m, h: _seeded(lambda: h.mean((2, 3)) + torch.empty(h.shape[1]).normal_()),
    "uniform_": lambda m, h: _seeded(lambda: h.mean((2, 3)) + torch.zeros(h.shape[1]).uniform_()),
    "bernoulli_": lambda m, h: _seeded(lambda: h.mean((2, 3)) * torch.ones(h.shape[1]).bernoulli_(0.5)),
    "bernoulli": lambda m, h: _seeded(lambda: h.mean((2, 3)) * torch.bernoulli(torch.full((h.shape[1],), 0.5))),
    "empty_like_normal_": lambda m, h: _seeded(lambda: (v := h.mean((2, 3))) + torch.empty_like(v).normal_()),
    "dropout_training": lambda m, h: _seeded(lambda: F.dropout(h.mean((2, 3)), 0.5, training=True)),
}


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("name", list(_RANDOM_FILLS))
def test_random_fills_sized_by_the_count_are_not_zero_invariant(name: str, export: bool, tmp_path: Path) -> None:
    """Was a wrong plan: random fills planned like elementwise ops, zero-invariant; the pruned
    model draws 4 values where the masked dense one keeps 4 of 8 others. Any op ATen tags
    ``nondeterministic_seeded`` now costs the axes it writes their zero-invariance
    (``graph/random_draws.py``); they stay prunable where they were."""
    model, x = _Stem(_RANDOM_FILLS[name], export=export), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert not _group(plan, "stem:out").zero_invariant
    if _group(plan, "stem:out").prunable:
        check_oracle(model, x, tmp_path, require=False)


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_dropout_told_not_to_train_stays_zero_invariant(export: bool) -> None:
    """Twin: ``F.dropout(v, 0.5, training=False)`` draws nothing, so the group keeps its claim."""
    model = _Stem(lambda m, h: F.dropout(h.mean((2, 3)), 0.5, training=False), export=export)
    assert _group(skg.plan(model, torch.randn(2, 3, 6, 6)), "stem:out").zero_invariant
