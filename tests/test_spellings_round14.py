"""Adversary round 14: wrong plans round 13 left.

- A forward that branches on autograd (``torch.is_grad_enabled()``, inference mode,
  ``h.requires_grad``): every train/eval x autograd mode the code asks about is traced, so a
  layer used in one mode only is coupled and the pruned model runs in all of them.
- Values of the model's own tensors read as Python numbers while traced: not zero-invariant
  (a number), pinned (a branch).
- Parameters that are not contiguous (channels_last, stored transposed) bind and prune.
- A buffer registered on the first call is the constant it is.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from itertools import product

import pytest
import torch
from torch import Tensor, nn
from torch import is_grad_enabled as grad_on

import sparsekit_graph as skg
from sparsekit_graph.engine import soft_threshold_all
from sparsekit_graph.graph.forward_modes import Mode, autograd_mode, other_modes
from sparsekit_graph.graph.trace import trace_graph


def _helper_asks() -> bool:  # a module-level helper
    return not torch.is_grad_enabled()


_BRANCHES: dict[str, Callable[[], bool]] = {
    "no_grad_only": lambda: not torch.is_grad_enabled(),
    "grad_only": lambda: torch.is_grad_enabled(),
    "imported_name": lambda: not grad_on(),
    "helper": _helper_asks,
    "inference_mode": lambda: torch.is_inference_mode_enabled() or not torch.is_grad_enabled(),
}


class _Net(nn.Module):
    """``c`` adds to ``a``'s output in one grad mode only: pruning ``a`` must prune ``c``."""

    def __init__(self, extra: Callable[[], bool], data_read: bool) -> None:
        super().__init__()
        self.extra, self.data_read = extra, data_read
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(8, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.data_read:  # torch.fx refuses ``.item()``: torch.export traces (autograd off)
            h = h * (1 + 0 * h.abs().max().item())
        if self.extra():
            h = h + self.c(x)
        return self.b(torch.relu(h))


def _runs_in_both_modes(model: nn.Module, x: Tensor) -> None:
    out = model(x)
    with torch.no_grad():
        assert model(x).shape == out.shape


@pytest.mark.parametrize("data_read", [False, True], ids=["torch_fx", "torch_export"])
@pytest.mark.parametrize("branch", list(_BRANCHES))
def test_a_layer_used_in_one_grad_mode_is_coupled(branch: str, data_read: bool) -> None:
    torch.manual_seed(0)
    model, x = _Net(_BRANCHES[branch], data_read), torch.randn(2, 8)
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    assert group.prunable
    assert {m.param for m in group.members} >= {"a.weight", "c.weight", "c.bias", "b.weight"}
    small = skg.prune(model, plan, ratio=0.5).model
    assert small.c.out_features == small.a.out_features == 8
    _runs_in_both_modes(small, x)


@pytest.mark.parametrize("planning_grad", [True, False])
def test_planning_under_either_grad_mode_gives_one_plan(planning_grad: bool) -> None:
    model, x = _Net(_BRANCHES["no_grad_only"], False), torch.randn(2, 8)
    with torch.set_grad_enabled(planning_grad):
        plan = skg.plan(model, x)
        assert torch.is_grad_enabled() is planning_grad  # the caller's grad mode is left as it was
    reference = skg.plan(model, x)
    assert plan.model_dump() == reference.model_dump()


def test_only_a_forward_that_asks_gets_a_second_trace() -> None:
    x = torch.randn(2, 8)
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert other_modes(plain, [trace_graph(plain, x)]) == []
    asking = _Net(_helper_asks, False)
    assert torch.is_grad_enabled()
    assert other_modes(asking, [trace_graph(asking, x)]) == [Mode(False, "off")]
    assert Mode(True, "inference").prefix == "train+inference:"


# a user's utility module, imported as ``utils``: the query under another name
_utils = types.ModuleType("user_utils")
exec("from torch import is_grad_enabled as grad_on\ndef in_inference():\n    return not grad_on()", _utils.__dict__)


class _Checks:  # a plain class of static helpers
    ready = staticmethod(torch._C.is_grad_enabled)


class _Asks(nn.Module):
    """``c`` joins ``a``'s output only where ``asks(self, h)`` is true."""

    def __init__(self, asks: Callable[[nn.Module, Tensor], bool]) -> None:
        super().__init__()
        self.asks = asks
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(8, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.asks(self, h):
            h = h + self.c(x)
        return self.b(torch.relu(h))


_ASKS: dict[str, Callable[[nn.Module, Tensor], bool]] = {
    "module_helper": lambda m, h: _utils.in_inference(),
    "static_helper": lambda m, h: not _Checks.ready(),
    "checkpointing": lambda m, h: m.training and torch.is_grad_enabled(),  # only training with autograd
    "inference_mode": lambda m, h: torch.is_inference_mode_enabled(),
    "requires_grad": lambda m, h: h.requires_grad,  # torch.fx cannot branch on it: torch.export
    "grad_fn": lambda m, h: h.grad_fn is not None,
}


@pytest.mark.parametrize("planning", ["on", "off", "inference"])
@pytest.mark.parametrize("asks", list(_ASKS))
def test_every_autograd_mode_the_forward_asks_about_is_planned(asks: str, planning: str) -> None:
    model, x = _Asks(_ASKS[asks]), torch.randn(2, 8)
    with autograd_mode(planning):
        plan = skg.plan(model, x)
    assert {"c.weight", "c.bias"} <= {m.param for m in plan.group("a:out").members}
    small = skg.prune(model, plan, ratio=0.5).model
    for train, state in product((False, True), ("on", "off", "inference")):
        small.train(train)
        with autograd_mode(state):
            assert small(x).shape == (2, 4)


def test_torch_code_asking_grad_mode_does_not_count() -> None:
    """``nn.MultiheadAttention`` asks ``torch.is_grad_enabled()`` for its fast path: torch's
    question, about a leaf's own kernels, is not the model's."""
    mha = nn.MultiheadAttention(16, 4, batch_first=True)

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: Tensor) -> Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    x = torch.randn(2, 5, 16)
    model = Attend().eval()
    assert other_modes(model, [trace_graph(model, x)]) == []


# --- values of the model's own tensors read as Python numbers while torch.fx traces ---


class _Scaled(nn.Module):
    """``amax`` (a buffer) and ``g`` (a parameter) scale ``a``'s channels, and the forward also
    reads their values into a Python number: pruning ``a:out`` prunes them, and the number."""

    def __init__(self, number: Callable[[_Scaled], object]) -> None:
        super().__init__()
        self.number = number
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.register_buffer("amax", torch.linspace(0.5, 3.0, 16).flip(0))  # channel 0 holds the max
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, 16))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)) * self.amax * self.g * self.number(self))


_NUMBERS: dict[str, Callable[[_Scaled], object]] = {
    "item": lambda m: m.amax.max().item(),
    "float": lambda m: float(m.amax.max()),
    "tolist": lambda m: max(m.amax.tolist()),
    "format": lambda m: float(f"{m.amax.sum():.4f}"),
    "numpy": lambda m: float(m.amax.numpy().max()),
    "parameters_dict": lambda m: float(m._parameters["g"].min()),
    "named_parameters": lambda m: dict(m.named_parameters())["g"].min(),  # a 0-d constant in the graph
    "state_dict": lambda m: m.state_dict()["g"].min(),
}


@pytest.mark.parametrize("spelling", list(_NUMBERS))
def test_a_number_read_from_pruned_channels_is_not_zero_invariant(spelling: str) -> None:
    torch.manual_seed(0)
    model, x = _Scaled(_NUMBERS[spelling]).eval(), torch.randn(3, 8)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and not group.zero_invariant
    plan = skg.plan(model, x)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 5, 15]] = True  # the max of ``amax`` (0) and of ``g`` (15): pruned, the number changes
    dense = _masked(model, plan, mask)
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    with torch.no_grad():
        assert not torch.allclose(dense(x), pruned(x), rtol=1e-4)  # so claiming zero-invariance was wrong


def _masked(model: nn.Module, plan: skg.Plan, mask: Tensor) -> nn.Module:
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    return dense


@pytest.mark.parametrize(
    "branch", [lambda m: 2.0 if bool((m.amax > 1.0).all()) else 1.0, lambda m: 2.0 if 3.0 in m.amax else 1.0]
)
def test_a_branch_on_values_of_pruned_channels_pins_them(branch: Callable[[_Scaled], object]) -> None:
    model, x = _Scaled(branch).eval(), torch.randn(3, 8)
    group = skg.plan(model, x).group("a:out")
    assert not group.prunable
    assert "reads the values of amax (python control flow)" in (group.reason or "")


def test_values_of_tensors_no_group_prunes_cost_nothing() -> None:
    """A scalar buffer (a step counter) and a table read by value leave the channels prunable
    and zero-invariant."""

    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
            self.register_buffer("steps", torch.tensor(3))
            self.register_buffer("table", torch.arange(5.0))

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.relu(self.a(x)) * (1 + int(self.steps) + self.table.max().item()))

    model, x = Counted().eval(), torch.randn(3, 8)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and group.zero_invariant
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[2, 7]] = True
    plan = skg.plan(model, x)
    with torch.no_grad():
        torch.testing.assert_close(_masked(model, plan, mask)(x), skg.prune(model, plan, masks={"a:out": mask}).model(x))


# --- parameters that are not contiguous: a channels_last model, a transposed weight ---


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(6, 4, 1),
    ).eval()  # fmt: skip


def test_a_channels_last_model_binds_thresholds_and_prunes_as_a_contiguous_one() -> None:
    x = torch.randn(2, 3, 8, 8)
    plain = _conv_net()
    last = _conv_net().to(memory_format=torch.channels_last)
    assert not last[0].weight.is_contiguous()
    plan = skg.plan(plain, x)
    assert skg.plan(last, x).model_dump() == plan.model_dump()
    norms = []
    for model in (plain, last):
        couplings = [skg.bind(plan, model)[g.name] for g in plan.prunable]
        norms.append([c.norms() for c in couplings])
        with torch.no_grad():
            soft_threshold_all(couplings, [torch.full_like(n, float(n.median())) for n in norms[-1]])
    for a, b in zip(*norms):
        torch.testing.assert_close(a.reshape(-1), b.reshape(-1))  # the grid may hold a unit axis more
    for a, b in zip(plain.parameters(), last.parameters()):
        torch.testing.assert_close(a, b)  # the same elements thresholded, in either memory order
    small = skg.prune(last, plan, ratio=0.5)
    ref = skg.prune(plain, plan, ratio=0.5)
    assert small.report.params_after == ref.report.params_after
    with torch.no_grad():
        torch.testing.assert_close(small.model(x), ref.model(x))


def test_a_weight_held_transposed_binds() -> None:
    """``self.w`` stored as ``(in, out).t()``: not contiguous, its channel axis strided."""

    class Held(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 16).t())  # (16, 8), strides (1, 16)
            self.b = nn.Linear(16, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.relu(x @ self.w.t()))

    model, x = Held(), torch.randn(3, 8)
    plan = skg.plan(model, x)
    bound = skg.bind(plan, model)
    expected = (model.w.detach() ** 2).sum(1) + (model.b.weight.detach() ** 2).sum(0)
    torch.testing.assert_close(bound["w:0"].norms().reshape(-1) ** 2, expected)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[3, 4, 11]] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["w:0"].apply_mask(mask)
    assert dense.w.detach()[[3, 4, 11]].abs().sum() == 0 and dense.w.detach()[[0, 5]].abs().sum() > 0
    pruned = skg.prune(model, plan, masks={"w:0": mask}).model
    with torch.no_grad():
        torch.testing.assert_close(dense(x), pruned(x))


# --- a buffer the forward registers on its first call ---


class _Lazy(nn.Module):
    def __init__(self, make: Callable[[_Lazy, Tensor], Tensor]) -> None:
        super().__init__()
        self.make = make
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if not hasattr(self, "scale"):
            self.register_buffer("scale", self.make(self, h))
        return self.b(h * self.scale)


@pytest.mark.parametrize(
    ("make", "follows"),
    [
        (lambda m, h: torch.full((16,), 2.0), False),  # a literal: the pruned model makes 16 again
        (lambda m, h: torch.full((h.shape[1],), 2.0), True),  # the width it meets
        (lambda m, h: torch.full((m.a.out_features,), 2.0), True),  # the layer's width, which surgery rewrites
    ],
    ids=["literal", "traced_width", "layer_width"],
)
@pytest.mark.parametrize("called_first", [False, True])
def test_a_buffer_made_on_the_first_call(make: Callable[[_Lazy, Tensor], Tensor], follows: bool, called_first: bool) -> None:
    model, x = _Lazy(make), torch.randn(3, 8)
    if called_first:
        model(x)
    plan = skg.plan(model, x)
    assert hasattr(model, "scale") == called_first  # planning registers nothing
    group = plan.group("a:out")
    if not called_first and not follows:
        assert not group.prunable and "constant tensor scale" in (group.reason or "")
        return
    assert group.prunable
    assert ("scale" in {m.param for m in group.members}) == called_first
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 2, 8]] = True
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x))
    assert pruned.scale.shape == (13,)


def test_an_expanded_parameter_is_refused_by_bind_with_its_name() -> None:
    """``nn.Parameter(torch.ones(1).expand(16))``: its 16 entries are one float, so no channel's
    block is its own to zero (torch refuses the in-place write, as an optimizer's would be)."""

    class Expanded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
            self.scale = nn.Parameter(torch.full((1,), 2.0).expand(16))

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.relu(self.a(x)) * self.scale)

    model, x = Expanded(), torch.randn(3, 8)
    plan = skg.plan(model, x)
    assert "scale" in {m.param for m in plan.group("a:out").members}
    with pytest.raises(skg.CouplingError, match="member scale: an expanded tensor"):
        skg.bind(plan, model)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:4] = True
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    assert pruned.scale.shape == (12,) and pruned(x).shape == (3, 4)


@pytest.mark.parametrize(
    "read",
    [
        lambda m: 2.0 if torch.equal(m.amax, m.amax.sort(descending=True).values) else 1.0,
        lambda m: 2.0 if torch.allclose(m.amax, m.amax.flip(0).flip(0)) and m.amax[0] > 2 else 1.0,
        lambda m: 2.0 if torch.is_nonzero(m.amax.max() > 2.9) else 1.0,
    ],
    ids=["equal", "allclose", "is_nonzero"],
)
def test_torch_functions_that_answer_a_bool_read_values(read: Callable[[_Scaled], object]) -> None:
    group = skg.plan(_Scaled(read).eval(), torch.randn(3, 8)).group("a:out")
    assert not group.prunable and "values of amax (python control flow)" in (group.reason or "")


@pytest.mark.parametrize(
    "count",
    [
        lambda m: 1.0 + (m.amax > 1.0).nonzero().shape[0] / 10,
        lambda m: 1.0 + m.amax[m.amax > 2.0].numel() / 10,
        lambda m: 1.0 + torch.argwhere(m.amax > 2).size(0) / 10,
        lambda m: 1.0 + len(torch.masked_select(m.amax, m.amax > 1.0)) / 10,
    ],
    ids=["nonzero", "mask_index", "argwhere", "masked_select"],
)
def test_a_length_the_values_decide_is_a_number_read_from_them(count: Callable[[_Scaled], object]) -> None:
    model, x = _Scaled(count).eval(), torch.randn(3, 8)
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    assert group.prunable and not group.zero_invariant
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 1, 2]] = True  # the largest entries of ``amax``: pruned, the count drops
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    with torch.no_grad():
        assert not torch.allclose(_masked(model, plan, mask)(x), pruned(x), rtol=1e-4)


def test_a_no_grad_block_in_a_forward_exported_with_autograd_on() -> None:
    """torch.export keeps ``with torch.no_grad():`` as a subgraph when it traces with autograd on
    (the other mode of a forward that asks): inlined as an autocast block is."""

    class Blocked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(8, 16)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            h = h * (1 + 0 * h.abs().max().item())  # torch.export
            with torch.no_grad():
                s = self.c(x)
            return self.b(torch.relu(h + s if torch.is_grad_enabled() else h))

    model, x = Blocked(), torch.randn(2, 8)
    plan = skg.plan(model, x)
    assert {"c.weight", "c.bias"} <= {m.param for m in plan.group("a:out").members}
    small = skg.prune(model, plan, ratio=0.5).model
    _runs_in_both_modes(small, x)
