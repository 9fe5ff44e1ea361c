"""Wrong plans adversary round 8 found in hand-written models (issue 7), fixed at their root.

Harness and the full list of models tried: /tmp/adv8/REPORT.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph
from sparsekit_graph.prune.checks import changed_numbers

# --- complex parameters: importance norms of complex blocks -----------------------------------------


class _ComplexMLP(nn.Module):
    """Two complex ``Linear`` layers (``dtype=torch.cfloat``), the output read as magnitudes."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8, dtype=dtype)
        self.l2 = nn.Linear(8, 4, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.l1(x) * 0.5).abs()


@pytest.mark.parametrize("dtype", [torch.cfloat, torch.cdouble])
@pytest.mark.parametrize("importance", ["l2", "l1"])
def test_complex_layers_prune_by_ratio(dtype: torch.dtype, importance: str) -> None:
    """``prune(ratio=0.5)`` raised torch's RuntimeError ("linalg.vector_norm: dtype should be complex
    for complex inputs"): the block norms cast complex weights to float32. The norm of a complex
    block is the norm of its moduli; the kept channels are the largest ones."""
    torch.manual_seed(0)
    model = _ComplexMLP(dtype).eval()
    x = torch.randn(3, 6, dtype=dtype)
    plan = skg.plan(model, x)
    group = plan.group("l1:out")
    assert group.prunable
    result = skg.prune(model, plan, ratio=0.5, importance=importance)
    assert result.model.l1.out_features == 4
    assert result.model(x).shape == (3, 4)
    p = 2 if importance == "l2" else 1
    rows = torch.cat([model.l1.weight, model.l1.bias[:, None]], 1).abs().norm(p=p, dim=1)
    rows = rows.pow(p) + model.l2.weight.abs().pow(p).sum(0)
    removed = result.masks["l1:out"]
    assert rows[~removed].min() >= rows[removed].max()
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["l1:out"].apply_mask(removed)
    torch.testing.assert_close(result.model(x), dense(x), rtol=1e-4, atol=1e-5)


# --- torch.export: the channel count used as a value is a literal in the exported graph --------------


def _count_spellings() -> dict[str, Callable[[Tensor], Tensor]]:
    """``h.sum(1)`` divided by (or combined with) the channel count, made into a tensor's contents."""
    return {
        "new_full": lambda h: h.sum(1) / h.new_full((), h.shape[1]),
        "full": lambda h: h.sum(1) / torch.full((1,), h.shape[1]),
        "scalar_tensor": lambda h: h.sum(1) / torch.scalar_tensor(h.size(dim=1)),
        "fill_": lambda h: h.sum(1) / torch.empty(1).fill_(h.shape[1]),
        "where": lambda h: torch.where(h.sum(1) > 0, h.sum(1), h.shape[1]),
        "addcmul value": lambda h: torch.addcmul(h.sum(1), h.sum(1), h.sum(1), value=h.shape[1]),
        "ones(shape).sum": lambda h: h.sum(1) / torch.ones(h.shape).sum(1),
        "new_ones(shape).sum": lambda h: h.sum(1) / h.new_ones(h.shape).sum(1),
        "(zeros + 1).sum": lambda h: h.sum(1) / (torch.zeros(h.shape) + 1).sum(1),
        "arange(C)[-1]": lambda h: h.sum(1) / (torch.arange(h.shape[1])[-1] + 1),
        "linspace(1, C)": lambda h: h.sum(1) / torch.linspace(1, h.shape[1], 2)[-1],
        "rand(C) counted": lambda h: h.sum(1) / (torch.rand(h.shape[1]) * 0 + 1).sum(),
        "ones.expand(C).sum": lambda h: h.sum(1) / torch.ones(1, 1).expand(1, h.shape[1]).sum(),
        "ones.repeat(C).sum": lambda h: h.sum(1) / torch.ones(1).repeat(h.shape[1]).sum(),
        "eye(C).trace": lambda h: h.sum(1) / torch.eye(h.shape[1]).trace(),
    }


class _CountUnderExport(nn.Module):
    """A conv's channel sum combined with the channel count, behind a device check that
    symbolic_trace cannot follow (so the planner takes the torch.export path)."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.head = nn.Conv2d(1, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if h.is_cuda:
            h = h.contiguous()
        return self.head(_count_spellings()[self.spelling](h).unsqueeze(1))


@pytest.mark.parametrize("spelling", list(_count_spellings()))
def test_channel_count_as_value_under_export_is_not_zero_invariant(spelling: str) -> None:
    """Under torch.export ``h.shape[1]`` is the literal 8; only a literal scaling (``h * 8``) was
    noted as a possible length, so a count made into a tensor (fill values, fresh tensors' sizes,
    arange ends, any literal of a constant: ``expand``, ``repeat``, ``eye``) or taken as an operand
    (``where``, ``addcmul(value=)``) left ``a:out`` claimed zero-invariant: masked and pruned
    outputs differed by ~1 at 11b1ada. The export probe's number check (``prune/checks``) now
    also compares ints at ``Scalar`` arguments and finds tensors made from no input that fold a
    pruned extent into their values. It is prunable, not
    zero-invariant, and prunes to a model that runs."""
    torch.manual_seed(0)
    model = _CountUnderExport(spelling).eval()
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    assert group.prunable and not group.zero_invariant, group
    mask = torch.zeros(8, dtype=torch.bool)
    mask[4:] = True
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model.eval()
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    with torch.no_grad():
        assert pruned(x).shape == dense(x).shape
        assert not torch.allclose(pruned(x), dense(x), rtol=1e-4, atol=1e-5)  # the claim would be false


class _Fresh(nn.Module):
    """``x`` combined with a tensor made from no input, of ``c`` channels, under torch.export."""

    def __init__(self, c: int, fold: bool) -> None:
        super().__init__()
        self.c, self.fold = c, fold

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            x = x.contiguous()
        fresh = torch.ones(1, self.c, 1, 1)
        return x * fresh.sum(1, keepdim=True) if self.fold else x[:, : self.c] * fresh


@pytest.mark.parametrize("fold", [True, False])
def test_only_a_fresh_tensor_that_folds_the_count_into_values_is_a_changed_number(fold: bool) -> None:
    """The converse of the above: ``ones(1, C, 1, 1)`` whose shape follows the count (T5's
    ``zeros(1, n_heads, q, k)`` position bias) computes the same numbers; its sum over ``C`` does not."""
    x = torch.randn(2, 8, 3, 3)
    before, after = (trace_graph(_Fresh(c, fold), x, dynamic=False) for c in (8, 3))
    assert is_exported(before)
    assert bool(changed_numbers(before, after)) is fold
