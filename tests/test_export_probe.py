"""The export probe (plan/probe.py): under torch.export, Python that reads a channel count
(``if h.shape[-1] == 16``, ``assert ... % 8 == 0``, ``range(h.size(-1) // 4)``) or a literal that
only equals it (``view(..., self.cfg.width)``) leaves no mark in the graph; the plan pins the group
with the reason instead of calling it prunable, and everything it calls prunable prunes."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_close_rel, assert_untouched, check_oracle, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

W = 16  # channels of group fc:out
X = (2, 4, 6)  # (B, L, 6)


@dataclasses.dataclass
class Cfg:
    """A user's own config (nothing rewrites it)."""

    width: int = W


def _eq(m: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if h.shape[-1] == W else h


def _threshold(m: nn.Module, h: Tensor) -> Tensor:
    return h + 1 if h.size(-1) > W // 2 else h - 1


def _at_least(m: nn.Module, h: Tensor) -> Tensor:
    return torch.tanh(h) if h.shape[2] >= 4 else h


def _assert_multiple(m: nn.Module, h: Tensor) -> Tensor:
    assert h.size(-1) % 8 == 0, "width must be a multiple of 8"
    return h


def _loop(m: nn.Module, h: Tensor) -> Tensor:
    for _ in range(h.shape[-1] // 4):
        h = h * 0.9
    return h


def _membership(m: nn.Module, h: Tensor) -> Tensor:
    return h.sigmoid() if h.shape[-1] in (W, 2 * W) else h


def _view_unsqueezed(m: nn.Module, h: Tensor) -> Tensor:
    return h.view(*h.shape[:-1], 1, m.cfg.width).flatten(2)


def _reshape(m: nn.Module, h: Tensor) -> Tensor:
    return h.reshape(h.shape[0], h.shape[1], m.cfg.width)


def _view_flat(m: nn.Module, h: Tensor) -> Tensor:
    return h.view(-1, m.cfg.width).view(h.shape)


def _attribute_width(m: nn.Module, h: Tensor) -> Tensor:
    return h.view(*h.shape[:-1], m.width)


BRANCHES: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "if_equal": _eq,
    "if_greater": _threshold,
    "if_at_least": _at_least,
    "assert_multiple_of_8": _assert_multiple,
    "for_range": _loop,
    "membership": _membership,
}
LITERALS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "view_unsqueezed_cfg": _view_unsqueezed,
    "reshape_cfg": _reshape,
    "view_flat_cfg": _view_flat,
    "view_int_attribute": _attribute_width,
}


class Net(nn.Module):
    """fc (group ``fc:out``) -> ReLU -> ``fn`` -> mid (group ``mid:out``) -> ReLU -> head, on
    (B, L, 6); ``if h.is_cuda`` is a device check torch.fx cannot trace (torch.export runs)."""

    def __init__(self, fn: Callable[[nn.Module, Tensor], Tensor] | None) -> None:
        super().__init__()
        self.cfg, self.width, self.fn = Cfg(), W, fn
        self.fc, self.mid, self.head = nn.Linear(6, W), nn.Linear(W, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, W)
        if h.is_cuda:
            h = h.contiguous()
        if self.fn is not None:
            h = self.fn(self, h)
        return self.head(torch.relu(self.mid(h)))


def _pinned(model: nn.Module, tmp_path: Path, *, by_probe: bool = True) -> skg.Plan:
    x = torch.randn(*X)
    assert is_exported(trace_graph(model, x))
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    fc = plan.group("fc:out")
    assert not fc.prunable and fc.reason, fc
    assert "torch.export" in fc.reason or not by_probe, fc.reason
    assert plan.group("mid:out").prunable  # only what the code reads is pinned
    _prunes_like_the_masked_model(model, x, plan)
    return plan


def _prunes_like_the_masked_model(model: nn.Module, x: Tensor, plan: skg.Plan) -> None:
    """``prune(ratio=0.5)`` succeeds, leaves ``model`` untouched, and the pruned model equals
    the dense one with the same masks applied (every prunable group here is zero-invariant)."""
    before = fingerprint(model)
    result = skg.prune(model, plan, ratio=0.5)
    assert_untouched(model, before, "prune")
    assert result.report.params_after < result.report.params_before
    dense = copy.deepcopy(model).eval()
    couplings = skg.bind(plan, dense)
    for g in plan.prunable:
        assert g.zero_invariant, g
        couplings[g.name].apply_mask(result.masks[g.name])
    with torch.no_grad():
        assert_close_rel(dense(x), result.model.eval()(x))


@pytest.mark.parametrize("name", list(BRANCHES))
def test_a_branch_on_a_channel_count_pins_under_export(name: str, tmp_path: Path) -> None:
    _pinned(Net(BRANCHES[name]), tmp_path)


@pytest.mark.parametrize("name", list(LITERALS))
def test_a_literal_equal_to_a_channel_count_pins_under_export(name: str, tmp_path: Path) -> None:
    """``view_unsqueezed_cfg`` is pinned by the reshape rule already; the others by the probe."""
    plan = _pinned(Net(LITERALS[name]), tmp_path, by_probe=name != "view_unsqueezed_cfg")
    assert "keeping 3 of 16" in (plan.group("fc:out").reason or "") or name == "view_unsqueezed_cfg"


def test_code_that_follows_the_channels_stays_prunable(tmp_path: Path) -> None:
    """The device check alone, and sizes read off the tensor (the spellings above with
    ``h.shape[-1]`` for ``cfg.width``; a branch on the batch size): nothing pinned."""

    def reshaped(m: nn.Module, h: Tensor) -> Tensor:
        return h.reshape(h.shape[0], h.shape[1], h.shape[-1]) if h.shape[0] > 1 else h  # a branch on the batch

    def viewed(m: nn.Module, h: Tensor) -> Tensor:
        return h.view(*h.shape[:-1], h.size(2))

    for fn in (None, reshaped, viewed):
        model, x = Net(fn), torch.randn(*X)
        plan = skg.plan(model, x)
        assert plan.group("fc:out").prunable and plan.group("mid:out").prunable, plan
        _prunes_like_the_masked_model(model, x, plan)


def test_probe_only_prunes_a_copy(tmp_path: Path) -> None:
    """Planning a model the probe pins leaves it bitwise untouched, its config included."""
    model = Net(_view_unsqueezed)
    before, cfg = fingerprint(model), dataclasses.asdict(model.cfg)
    skg.plan(model, torch.randn(*X))
    assert_untouched(model, before, "plan")
    assert dataclasses.asdict(model.cfg) == cfg and model.width == W and model.fc.out_features == W


def test_plan_round_trips_with_probe_reasons(tmp_path: Path) -> None:
    plan = skg.plan(Net(_eq), torch.randn(*X))
    plan.save(tmp_path / "p.json")
    again = skg.Plan.load(tmp_path / "p.json")
    saved = {g["name"]: g for g in json.loads((tmp_path / "p.json").read_text())["groups"]}
    assert again == plan and "torch.export" in saved["fc:out"]["reason"]


NUMBERS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "inverse_sqrt_of_width": lambda m, h: h * h.shape[-1] ** -0.5,
    "float_of_width": lambda m, h: h * (1.0 / float(h.size(-1))),
    "mean_by_hand": lambda m, h: h - h.sum(-1, keepdim=True) / h.shape[-1],
}


@pytest.mark.parametrize("name", list(NUMBERS))
def test_a_number_made_of_a_channel_count_costs_zero_invariance_under_export(name: str, tmp_path: Path) -> None:
    """The pruned model computes with its own width (same code, other constants): prunable,
    but not zero-invariant; the oracle then checks only that it prunes."""
    model, x = Net(NUMBERS[name]), torch.randn(*X)
    assert is_exported(trace_graph(model, x))
    fc = skg.plan(model, x).group("fc:out")
    assert fc.prunable and not fc.zero_invariant, fc
    check_oracle(model, x, tmp_path, min_drop=0.0)


class EitherWide(nn.Module):
    """Two widths (groups ``a:out``, ``b:out``) and a branch that changes only when both
    shrink; ``c:out`` is read by nothing. The branch reads strides (``h.stride(1)`` is the
    width here), which no length read tracks: only the probe's retrace sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, W), nn.Linear(6, W), nn.Linear(6, W)
        self.head_a, self.head_b, self.head_c = nn.Linear(W, 3), nn.Linear(W, 3), nn.Linear(W, 3)

    def forward(self, x: Tensor) -> Tensor:
        h1, h2, h3 = torch.relu(self.a(x)), torch.relu(self.b(x)), torch.relu(self.c(x))
        if h1.is_cuda:
            h1 = h1.contiguous()
        y = self.head_a(h1) + self.head_b(h2) + self.head_c(h3)
        return y * 2 if h1.stride(1) > 8 or h2.stride(1) > 8 else y


def test_groups_that_break_only_together_are_both_pinned(tmp_path: Path) -> None:
    """Bisection finds no group that fails alone: the probe pins them together, saying so."""
    model, x = EitherWide(), torch.randn(*X)
    plan = skg.plan(model, x)
    for name in ("a:out", "b:out"):
        g = plan.group(name)
        assert not g.prunable and "pruned together with" in (g.reason or ""), g
    assert plan.group("c:out").prunable
    check_oracle(model, x, tmp_path, min_drop=0.0)


@pytest.mark.slow
def test_a_branch_in_one_hugging_face_layer_pins_that_layer_only(tmp_path: Path) -> None:
    """LLaMA (torch.export) with layer 0's MLP branching on its width: that MLP group is pinned
    by the probe; every other group is planned as without the branch, and the rest prunes."""
    transformers = pytest.importorskip("transformers")
    from sparsekit_graph.zoo import hf_model

    class BranchyMLP(transformers.models.llama.modeling_llama.LlamaMLP):
        def forward(self, x: Tensor) -> Tensor:
            h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
            return self.down_proj(h * 0.5 if h.shape[-1] > 64 else h)

    torch.manual_seed(0)
    model, x = hf_model("llama")
    clean = skg.plan(model, x)
    model.model.layers[0].mlp.__class__ = BranchyMLP
    plan = skg.plan(model, x)
    changed = [(a.name, b.reason) for a, b in zip(clean.groups, plan.groups) if a != b]
    assert len(changed) == 1 and "layers.0.mlp" in changed[0][0] and "torch.export" in changed[0][1], changed
    check_oracle(model, x, tmp_path, min_drop=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "qwen3", "vit", "swin", "t5", "gemma"])
def test_hugging_face_plans_are_what_they_were_without_the_probe(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right plans do not change: the probe pins nothing on these families (small configs)."""
    pytest.importorskip("transformers")
    from sparsekit_graph.plan import planner
    from sparsekit_graph.zoo import hf_model

    torch.manual_seed(0)
    model, x = hf_model(name)
    before = fingerprint(model)
    probed = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    monkeypatch.setattr(planner, "probe_plan", lambda plan, *_: plan)
    assert skg.plan(model, x).model_dump_json() == probed.model_dump_json()
