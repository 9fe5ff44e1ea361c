"""Issue 7: ops that need ``k`` channels along an axis (``topk``, ``kthvalue``, a variance with
a correction) give the group a ``min_keep``: planned on torch.fx and torch.export alike, kept through JSON, shown by the CLI,
honoured by every count ``prune`` chooses and enforced on masks and edited plans. Before, such a
group was planned prunable with no floor: ``prune(ratio=0.75)`` failed ("k not in range"), and
``h.var(1)`` pruned to one channel gave nan.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn
from typer.testing import CliRunner

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph
from sparsekit_graph.plan.edits import check_against
from sparsekit_graph.plan.schema import SCHEMA_VERSION

X = (2, 3, 6, 6)
C = 8


class Net(nn.Module):
    """conv (group ``a:out``, 8 channels) -> ``fn(self, h)`` -> 1x1 conv or Linear head; ``export``
    adds a device branch torch.fx cannot trace (planned through torch.export)."""

    def __init__(self, fn: Callable[[nn.Module, Tensor], Tensor], export: bool = False, relu: bool = True) -> None:
        super().__init__()
        self.a, self.k, self.fn, self.fused, self.relu = nn.Conv2d(3, C, 3, padding=1), 3, fn, export, relu
        with torch.no_grad():
            out = fn(self, self.a(torch.randn(*X)))
        self.b = nn.Conv2d(out.shape[1], 4, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        h = torch.relu(h) if self.relu else h
        if self.fused and h.is_cuda:
            h = h.contiguous()
        return self.b(self.fn(self, h))


# spelling -> (body, min_keep of a:out)
CASES: dict[str, tuple[Callable[[nn.Module, Tensor], Tensor], int]] = {
    "topk": (lambda s, h: h.topk(3, dim=1)[0], 3),
    "topk_attr_keyword": (lambda s, h: h.topk(k=s.k, dim=1).values, 3),
    "torch_topk_smallest": (lambda s, h: torch.topk(h, 3, 1, largest=False).values, 3),
    "kthvalue": (lambda s, h: h * torch.kthvalue(h, 3, dim=1, keepdim=True)[0], 3),
    "kthvalue_method": (lambda s, h: h + h.kthvalue(s.k, 1, keepdim=True).values, 3),
    "topk_last_axis": (lambda s, h: h.permute(0, 2, 3, 1).topk(3, dim=-1)[0].permute(0, 3, 1, 2), 3),
    "topk_flattened": (lambda s, h: h.flatten(1).topk(40, dim=1)[0], 2),  # 36 values per channel: 2 channels
    "topk_cat_twice": (lambda s, h: torch.cat([h, 2 * h], 1).topk(10, dim=1)[0], 5),  # 2 values per channel
    "var_channels": (lambda s, h: h * h.var(1, keepdim=True), 2),  # n - 1 = 0 with one channel: inf/nan
    "std_mean_correction3": (lambda s, h: h * torch.std_mean(h, 1, correction=3, keepdim=True)[0], 4),
}
QUICK = {
    ("topk", False),
    ("topk", True),
    ("kthvalue", False),
    ("kthvalue", True),
    ("topk_cat_twice", False),
    ("var_channels", False),
}


def _params() -> list:
    out = []
    for name in CASES:
        for export in (False, True):
            marks = () if (name, export) in QUICK else pytest.mark.slow
            out.append(pytest.param(name, export, marks=marks, id=f"{name}-{'export' if export else 'fx'}"))
    return out


def _mask(keep: int) -> Tensor:
    mask = torch.ones(C, dtype=torch.bool)
    mask[:keep] = False
    return mask


@pytest.mark.parametrize(("name", "export"), _params())
def test_min_keep_is_planned_and_honoured(name: str, export: bool) -> None:
    """Both tracers give the same min_keep, named after the node; ``ratio=0.9`` keeps exactly
    min_keep and runs; a mask keeping one fewer is refused naming the group and the field."""
    fn, need = CASES[name]
    model, x = Net(fn, export).eval(), torch.randn(*X)
    assert is_exported(trace_graph(model, x)) is export
    plan = skg.plan(model, x)
    g = plan.group("a:out")
    assert g.prunable and not g.zero_invariant, g
    assert g.min_keep == need and "node" in (g.min_keep_reason or ""), g
    result = skg.prune(model, plan, ratio=0.9)
    assert result.report.kept["a:out"] == need
    out = result.model(x)
    assert out.shape == model(x).shape and bool(torch.isfinite(out).all())
    with pytest.raises(skg.PlanError, match=r"'a:out' field min_keep: the mask keeps .* at least"):
        skg.prune(model, plan, masks={"a:out": _mask(need - 1)})
    assert skg.prune(model, plan, masks={"a:out": _mask(need)}).model(x).shape == model(x).shape


def test_groups_sharing_the_axis_keep_their_shares() -> None:
    """``cat([a, c]).topk(10)``: each 8-channel group keeps 5, together the 10 topk needs."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(3, C, 1), nn.Conv2d(10, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.cat([self.a(x), self.c(x)], 1).topk(10, dim=1).values)

    model, x = Two().eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    assert (plan.group("a:out").min_keep, plan.group("c:out").min_keep) == (5, 5)
    result = skg.prune(model, plan, ratio=0.9)
    assert (result.report.kept["a:out"], result.report.kept["c:out"]) == (5, 5)
    result.model(x)


def test_topk_of_every_channel_pins() -> None:
    """``topk(8)`` of 8 channels: nothing can go, so the group is pinned with the reason."""
    model, x = Net(lambda s, h: h.topk(C, dim=1).values).eval(), torch.randn(*X)
    g = skg.plan(model, x).group("a:out")
    assert not g.prunable and g.min_keep is None and "needs all 8 channels" in (g.reason or ""), g


@pytest.mark.parametrize("export", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fx", "export"])
def test_topk_count_computed_in_forward_pins(export: bool) -> None:
    """``topk(h.shape[0] + 1)``: a count the plan cannot know pins the axis, naming the node."""
    model = Net(lambda s, h: h.topk(h.shape[0] + 1, dim=1).values, export).eval()
    g = skg.plan(model, torch.randn(*X)).group("a:out")
    assert not g.prunable and "k computed in forward at topk (node topk)" in (g.reason or ""), g


def test_counts_chosen_by_prune_respect_min_keep() -> None:
    """A group's own ratio 0.9, global ranking and uniform snapping never go below min_keep;
    std over channels and space (36 values per channel) needs no floor."""
    model, x = Net(CASES["topk"][0]).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    groups = [g.model_copy(update={"ratio": 0.9}) if g.name == "a:out" else g for g in plan.groups]
    edited = plan.model_copy(update={"groups": groups})
    assert skg.prune(model, edited, ratio=0.0).report.kept["a:out"] == 3
    assert skg.prune(model, plan, ratio=0.9, global_ranking=True).report.kept["a:out"] >= 3
    assert skg.prune(model, plan, ratio=0.9, uniform=True).report.kept["a:out"] == 3
    spatial = Net(lambda s, h: h * h.std((1, 2, 3), keepdim=True)).eval()
    assert skg.plan(spatial, x).group("a:out").min_keep is None


def test_min_keep_round_trips_and_old_plans_load(tmp_path: Path) -> None:
    """JSON keeps min_keep and its reason; a schema-4 plan (no such fields) still loads."""
    model, x = Net(CASES["kthvalue"][0]).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    plan.save(tmp_path / "p.json")
    assert skg.Plan.load(tmp_path / "p.json") == plan and plan.schema_version == SCHEMA_VERSION
    data = json.loads((tmp_path / "p.json").read_text())
    assert next(g for g in data["groups"] if g["name"] == "a:out")["min_keep"] == 3
    data["schema_version"] = 4
    for g in data["groups"]:
        del g["min_keep"], g["min_keep_reason"]
    old = skg.Plan.from_json(json.dumps(data))
    assert old.schema_version == 4 and old.group("a:out").min_keep is None


EDITS: dict[str, tuple[dict, str]] = {  # a:out edit -> what the refusal names
    "keep-below": ({"keep": 2}, r"a:out: keep 2 is below min_keep 3"),
    "above-size": ({"min_keep": 9}, r"a:out: min_keep 9 exceeds size 8"),
    "zero": ({"min_keep": 0}, r"min_keep"),
    "no-reason": ({"min_keep_reason": None}, r"a:out: min_keep needs a min_keep_reason"),
    "reason-only": ({"min_keep": None}, r"a:out: min_keep_reason without min_keep"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_hand_edited_min_keep_is_refused(edit: str, tmp_path: Path) -> None:
    model, x = Net(CASES["topk"][0]).eval(), torch.randn(*X)
    skg.plan(model, x).save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    change, match = EDITS[edit]
    next(g for g in data["groups"] if g["name"] == "a:out").update(change)
    (tmp_path / "e.json").write_text(json.dumps(data))
    with pytest.raises(skg.PlanError, match=match):
        skg.Plan.load(tmp_path / "e.json")


def test_keep_below_min_keep_set_in_python_is_refused() -> None:
    """``model_copy`` skips validation; ``prune`` (through ``Plan.check``) still refuses."""
    model, x = Net(CASES["topk"][0]).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    groups = [g.model_copy(update={"keep": 2}) if g.name == "a:out" else g for g in plan.groups]
    with pytest.raises(skg.PlanError, match=r"'a:out' field keep: 2 is below min_keep 3"):
        skg.prune(model, plan.model_copy(update={"groups": groups}), ratio=0.5)


def test_lowered_min_keep_differs_from_the_planner() -> None:
    """A plan whose min_keep was lowered by hand loads (it is consistent) but ``check_against``
    the planner's plan refuses it, naming the field."""
    model, x = Net(CASES["topk"][0]).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    low = [g.model_copy(update={"min_keep": 2}) if g.name == "a:out" else g for g in plan.groups]
    with pytest.raises(skg.PlanError, match=r"'a:out' field min_keep"):
        check_against(plan.model_copy(update={"groups": low}), plan)


def test_topk_over_channels_is_not_zero_invariant(tmp_path: Path) -> None:
    """Without a ReLU, a zeroed channel (0) is picked by topk over negative values where the
    removed channel is not: masked dense and pruned differ, so the plan must not claim
    zero-invariance; the oracle holds for the groups it does claim."""
    model, x = Net(lambda s, h: h.topk(3, dim=1).values, relu=False).eval(), torch.randn(*X)
    plan = skg.plan(model, x)
    g = plan.group("a:out")
    assert g.prunable and not g.zero_invariant and g.min_keep == 3, g
    with torch.no_grad():  # every channel negative everywhere but channel 7, which is removed
        model.a.weight.zero_()
        model.a.bias.copy_(-torch.arange(1.0, C + 1))
        model.a.bias[7] = 5.0
    mask = torch.zeros(C, dtype=torch.bool)
    mask[7] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    with torch.no_grad():
        masked_out, pruned_out = dense(x), pruned(x)
    assert not torch.allclose(masked_out, pruned_out, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the zero is picked: the masked model sees top-3 (0, -1, -2), pruned (-1, -2, -3)
        assert (dense.a(x).topk(3, dim=1).values[:, 0] == 0).all()
        assert (pruned.a(x).topk(3, dim=1).values[:, 0] == -1).all()
    stem = Stem().eval()  # the oracle: exact where zero-invariance is claimed (the stem), topk at 0.5 runs
    result = check_oracle(stem, x, tmp_path, min_drop=0.0)
    assert result.plan.group("a:out").min_keep == 3 and result.report.kept["a:out"] == 4


class Stem(nn.Module):
    """conv-ReLU stem (group ``s:out``, zero-invariant) -> conv ``a`` -> ``topk(3)`` over its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.s, self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, C, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(torch.relu(self.s(x))).topk(3, dim=1).values)


_FACTORY = """
import torch
from torch import nn


class TopK(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).topk(3, dim=1).values)


def make():
    return TopK().eval(), torch.randn(1, 3, 6, 6)
"""


def test_cli_shows_and_honours_min_keep(tmp_path: Path) -> None:
    """``show`` prints the min-keep column and the op that needs it; ``prune --ratio 0.9`` runs."""
    from sparsekit_graph.cli import app

    (tmp_path / "topk_net.py").write_text(_FACTORY)
    spec, plan, runner = f"{tmp_path / 'topk_net.py'}:make", tmp_path / "plan.json", CliRunner()
    r = runner.invoke(app, ["plan", spec, "-o", str(plan)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["show", str(plan)], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "min-keep" in r.output and "top-k selection (k=3)" in r.output, r.output
    r = runner.invoke(app, ["show", str(plan), "--json"])
    row = next(g for g in json.loads(r.output)["groups"] if g["name"] == "a:out")
    assert row["min_keep"] == 3 and "topk" in row["min_keep_reason"]
    r = runner.invoke(app, ["prune", spec, "--ratio", "0.9", "--plan", str(plan), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
