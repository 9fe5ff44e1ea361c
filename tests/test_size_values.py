"""Channel counts that become values by routes the planner did not see (adversary round 2, issue 7):

- an axis length put in a tensor (``torch.tensor(h.size(-1))``, ``torch.as_tensor``, the tutorial
  attention's ``scores / torch.sqrt(torch.tensor(d_k))``) is traced by torch.fx as a node
  (``graph/tensor_data.py``) and judged like ``torch.full((), C)``: never zero-invariant; under
  torch.export the probe compares lifted constants (``prune/checks.changed_numbers``);
- a parameter's size read through ``next(m.parameters())``, ``named_parameters()``,
  ``state_dict()``, ``numel()`` (``graph/param_reads.py``), or a layer attribute read through
  ``vars(m)`` / ``m.__dict__`` (``size_reads``), turned into a number: never zero-invariant;
- ``prune(importance="taylor")`` with nothing prunable is a no-op; a forward that freezes a
  parameter gets a ``SparseKitError`` naming it.

Every planned model also passes the oracle: each prunable group prunes and runs, and each
zero-invariant group's pruned output equals the masked dense one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import assert_untouched, fingerprint
from test_derived_sizes import FreezesHead
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

X = (2, 3, 6, 6)


class Conv(nn.Module):
    """conv -> relu -> ``fn(self, h)`` -> 1x1 conv; ``export`` forces the torch.export path."""

    def __init__(self, fn: Callable[[Any, Tensor], Tensor], export: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fn, self.export = fn, export
        self.a, self.m, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.export and x.is_cuda:  # torch.fx cannot answer a device test: torch.export traces it
            x = x * 2
        return self.b(self.fn(self, torch.relu(self.m(torch.relu(self.a(x))))))


class TutorialAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        d_k = h.size(-1)
        scores = h @ h.transpose(1, 2) / torch.sqrt(torch.tensor(d_k, dtype=torch.float32))
        return self.head(torch.softmax(scores, -1) @ h)


def oracle(model: nn.Module, x: Tensor) -> skg.Plan:
    """Plan, then prune each prunable group alone: it runs with the output's shape, and a
    zero-invariant group's pruned output equals the masked dense one. The model stays untouched."""
    model.eval()
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    with torch.no_grad():
        ref = model(x)
    for g in plan.prunable:
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[1::2] = True
        small = skg.prune(model, plan, masks={g.name: mask}).model.eval()
        with torch.no_grad():
            out = small(x)
        assert out.shape == ref.shape, g.name
        if g.zero_invariant:
            dense = copy.deepcopy(model)
            skg.bind(plan, dense)[g.name].apply_mask(mask)
            with torch.no_grad():
                want = dense(x)
            err = (want - out).abs().max().item()
            assert err <= 1e-5 + 1e-4 * want.abs().max().item(), f"{g.name} claimed zero-invariant, error {err:.3g}"
    assert_untouched(model, before, "prune")
    return plan


def group(plan: skg.Plan, name: str) -> skg.Group:
    return next(g for g in plan.groups if g.name == name)


# -- F1: a length put in a tensor --------------------------------------------------------------

TENSOR_OF_SIZE: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "tensor": lambda s, h: h / torch.tensor(h.shape[1]),
    "as_tensor": lambda s, h: h / torch.as_tensor(h.shape[1]),
    "asarray": lambda s, h: h / torch.asarray(h.size(1)),
    "log_tensor_float": lambda s, h: h * torch.log(torch.tensor(h.shape[1], dtype=torch.float32)),
    "rsqrt_tensor_of_float": lambda s, h: h * torch.rsqrt(torch.tensor(h.size(1) * 1.0)),
    "tensor_of_shape_prod": lambda s, h: h / torch.tensor(h.shape[1:]).prod(),
    "tensor_in_list": lambda s, h: h / torch.tensor([h.shape[1]]),
    "full": lambda s, h: h / torch.full((), h.shape[1]),
}


@pytest.mark.parametrize("spelling", sorted(TENSOR_OF_SIZE))
def test_length_in_a_tensor_is_traced_and_not_zero_invariant(spelling: str) -> None:
    model, x = Conv(TENSOR_OF_SIZE[spelling]), torch.randn(X)
    assert not is_exported(trace_graph(model, x, shapes=False))  # a node of the torch.fx graph
    plan = oracle(model, x)
    assert not group(plan, "m:out").zero_invariant
    assert group(plan, "a:out").zero_invariant  # the length read is m's output channels only


def test_tutorial_attention_scale_is_not_zero_invariant() -> None:
    model, x = TutorialAttention(), torch.randn(2, 5, 6)
    plan = oracle(model, x)
    assert not group(plan, "fc:out").zero_invariant


def test_constant_tensor_keeps_zero_invariance() -> None:
    plan = oracle(Conv(lambda s, h: h / torch.tensor(2.0)), torch.randn(X))
    assert group(plan, "m:out").zero_invariant and group(plan, "a:out").zero_invariant


@pytest.mark.parametrize("spelling", ["tensor", "tensor_float", "constant"])
def test_length_in_a_tensor_under_export(spelling: str) -> None:
    """torch.export lifts ``torch.tensor(C)`` to a constant: the probe compares its value."""
    fn = {
        "tensor": lambda s, h: h / torch.tensor(h.shape[1]),
        "tensor_float": lambda s, h: h / torch.sqrt(torch.tensor(h.shape[1], dtype=torch.float32)),
        "constant": lambda s, h: h / torch.tensor(2.0),
    }[spelling]
    model, x = Conv(fn, export=True), torch.randn(X)
    assert is_exported(trace_graph(model, x, shapes=False))
    plan = oracle(model, x)
    assert group(plan, "m:out").zero_invariant == (spelling == "constant")


# -- F2: a parameter's size or a layer attribute read by another route ------------------------

PARAM_READS: dict[str, Callable[[Any], int]] = {
    "next_parameters": lambda s: next(s.m.parameters()).shape[0],
    "named_parameters": lambda s: dict(s.m.named_parameters())["weight"].shape[0],
    "state_dict": lambda s: s.m.state_dict()["weight"].shape[0],
    "size_method": lambda s: s.m._parameters["weight"].size(0),
    "vars": lambda s: vars(s.m)["out_channels"],
    "dunder_dict": lambda s: s.m.__dict__["out_channels"],
    "numel_sum": lambda s: sum(p.numel() for p in s.m.parameters()),
}


@pytest.mark.parametrize("route", sorted(PARAM_READS))
def test_parameter_size_made_a_number_is_not_zero_invariant(route: str) -> None:
    read = PARAM_READS[route]
    plan = oracle(Conv(lambda s, h: h * (1.0 / read(s))), torch.randn(X))
    assert not group(plan, "m:out").zero_invariant


def test_parameter_dtype_and_device_reads_change_nothing() -> None:
    """The common ``next(self.parameters())`` idiom reads no size: every group stays zero-invariant."""
    fn = lambda s, h: h.to(next(s.m.parameters()).dtype) * (2.0 if next(s.parameters()).is_floating_point() else 1.0)  # noqa: E731
    plan = oracle(Conv(fn), torch.randn(X))
    assert group(plan, "a:out").zero_invariant and group(plan, "m:out").zero_invariant


def test_parameter_size_deciding_a_branch_pins() -> None:
    fn = lambda s, h: h * (2.0 if next(s.m.parameters()).shape[0] > 4 else 1.0)  # noqa: E731
    plan = oracle(Conv(fn), torch.randn(X))
    assert not group(plan, "m:out").prunable and "m.weight.shape[0]" in (group(plan, "m:out").reason or "")
    assert group(plan, "a:out").zero_invariant


# -- F8: taylor importance --------------------------------------------------------------------


def _loss(out: Tensor, target: Tensor) -> Tensor:
    return ((out - target) ** 2).mean()


def test_taylor_with_nothing_prunable_is_a_no_op() -> None:
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval(), torch.randn(X)
    plan = skg.plan(model, x)
    assert not plan.prunable
    res = skg.prune(model, plan, ratio=0.5, importance="taylor", calibration=[(x, torch.zeros(2, 4, 6, 6))], loss_fn=_loss)
    assert res.model is not model and res.report.params_after == res.report.params_before


def test_taylor_refuses_a_forward_that_freezes_a_parameter() -> None:
    model, x = FreezesHead().eval(), torch.randn(X)
    plan = skg.plan(model, x)
    for p in model.parameters():
        p.requires_grad_(True)
    before = fingerprint(model)
    with pytest.raises(skg.SparseKitError, match=r"requires_grad of parameter d\.weight"):
        skg.prune(model, plan, ratio=0.5, importance="taylor", calibration=[(x, torch.zeros(2, 4, 6, 6))], loss_fn=_loss)
    assert_untouched(model, before, "prune")
