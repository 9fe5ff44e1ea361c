"""Plans: JSON round trip, hostile files, checks against the wrong model, bad inputs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

import sparsekit_graph as skg


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )


@pytest.fixture
def planned(tmp_path: Path) -> tuple[nn.Module, skg.Plan, Path]:
    model = _net()
    plan = skg.plan(model, torch.randn(1, 3, 6, 6))
    path = tmp_path / "plan.json"
    plan.save(path)
    return model, plan, path


def test_round_trip_and_readable_names(planned) -> None:
    model, plan, path = planned
    assert skg.Plan.load(path) == plan
    assert [g.name for g in plan.groups] == ["0:in", "0:out", "3:out", "5:out"]
    assert plan.group("0:out").zero_invariant and plan.group("5:out").reason == "model output"
    assert json.loads(path.read_text())["groups"][1]["members"][0]["param"] == "0.weight"


def _edit(path: Path, fn) -> Path:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


HOSTILE = {
    "truncated": (lambda p: p.write_text(p.read_text()[:100]) or p, "invalid plan"),
    "wrong-type": (lambda p: _edit(p, lambda d: d["groups"][1].update(size="many")), r"groups\.1\.size"),
    "unknown-field": (lambda p: _edit(p, lambda d: d["groups"][1].update(colour="red")), r"groups\.1\.colour"),
    "schema-version": (lambda p: _edit(p, lambda d: d.update(schema_version=99)), "schema_version 99"),
    "negative": (lambda p: _edit(p, lambda d: d["groups"][1]["members"][0].update(start=-1)), r"members\.0\.start"),
    "huge": (lambda p: _edit(p, lambda d: d["groups"][1]["members"][0].update(stop=10**15)), r"members\.0\.stop"),
    "size-mismatch": (lambda p: _edit(p, lambda d: d["groups"][1].update(size=5)), "has 8 channels, group size is 5"),
    "duplicate-name": (lambda p: _edit(p, lambda d: d["groups"][2].update(name="0:out")), "duplicate group name"),
    "order-not-permutation": (
        lambda p: _edit(p, lambda d: d["groups"][1]["members"][0].update(order=[0, 0, 1, 2])),
        "not a permutation",
    ),
    "indices-not-distinct": (
        lambda p: _edit(p, lambda d: d["groups"][1]["members"][0].update(indices=[0, 0, 1, 2, 3, 4, 5, 6])),
        "indices must be distinct",
    ),
    "pinned-without-reason": (lambda p: _edit(p, lambda d: d["groups"][1].update(prunable=False)), "needs a reason"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_plan_files_raise_plan_error(planned, case: str) -> None:
    _, _, path = planned
    corrupt, match = HOSTILE[case]
    corrupt(path)
    with pytest.raises(skg.PlanError, match=match):
        skg.Plan.load(path)


CHECKS = {
    "missing-param": (
        lambda d: d["groups"][1]["members"][0].update(param="nope.weight"),
        "no parameter or buffer 'nope.weight'",
    ),
    "axis-out-of-range": (
        lambda d: d["groups"][1]["members"][1].update(axis=3, order=[1, 0, 2, 3]),
        "axis out of range",
    ),
    "slice-beyond-axis": (lambda d: d["groups"][1]["members"][0].update(start=4, stop=12), "exceeds axis size 8"),
    "overlap": (lambda d: d["groups"][2]["members"].append(dict(d["groups"][1]["members"][0])), "overlaps"),
}


@pytest.mark.parametrize("case", list(CHECKS))
def test_check_names_the_first_bad_member(planned, case: str) -> None:
    model, _, path = planned
    edit, match = CHECKS[case]
    if case == "overlap":
        _edit(path, lambda d: d["groups"][2].update(size=8))
    _edit(path, edit)
    if case == "overlap":  # 3:out has 4 channels; give it a member of 8 to collide instead
        _edit(path, lambda d: d["groups"][2].update(size=4, members=[dict(d["groups"][1]["members"][0], start=0, stop=4)]))
    plan = skg.Plan.load(path)
    with pytest.raises(skg.PlanError, match=match):
        plan.check(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(skg.PlanError):
        skg.prune(model, plan, ratio=0.5, inplace=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_plan_for_another_model_fails_check(planned) -> None:
    _, plan, _ = planned
    other = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(skg.PlanError, match="group '0:out' member 0.weight axis 0"):
        plan.check(other)


def test_inputs_that_do_not_fit_name_the_layer() -> None:
    with pytest.raises(skg.TraceError, match="layer 0"):
        skg.plan(_net(), torch.randn(1, 5, 6, 6))
    with pytest.raises(skg.TraceError, match="layer 5"):
        skg.plan(_net(), torch.randn(1, 3, 9, 9))


def test_untraceable_model_raises_trace_error() -> None:
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(skg.TraceError, match="could not trace DataDependent"):
        skg.plan(DataDependent(), torch.randn(2))


def test_meta_model_is_planned_without_weights() -> None:
    with torch.device("meta"):
        model = _net()
    plan = skg.plan(model, torch.randn(1, 3, 6, 6, device="meta"))
    assert plan.group("0:out").size == 8


def test_prune_options_and_report(planned) -> None:
    model, plan, _ = planned
    r = skg.prune(model, plan, ratio=0.5, round_to=3)
    assert r.report.kept["0:out"] == 6 and r.report.kept["3:out"] == 3
    assert r.report.params_after == sum(p.numel() for p in r.model.parameters())
    assert r.report.macs_after < r.report.macs_before
    g = skg.prune(model, plan, ratio=0.5, global_ranking=True)
    assert sum(g.report.kept[n] for n in ("0:out", "3:out")) == 12 - 6
    custom = plan.model_copy(
        update={"groups": [grp.model_copy(update={"keep": 2}) if grp.name == "0:out" else grp for grp in plan.groups]}
    )
    assert skg.prune(model, custom, ratio=0.5).report.kept["0:out"] == 2
    for importance in ("l1", "random"):
        assert skg.prune(model, plan, ratio=0.25, importance=importance).report.kept["0:out"] == 6
    with pytest.raises(skg.PlanError, match="importance"):
        skg.prune(model, plan, ratio=0.5, importance="taylor")
    with pytest.raises(skg.PlanError, match="ratio"):
        skg.prune(model, plan, ratio=1.5)


def test_inplace_prune_changes_the_model_only_on_success(planned) -> None:
    model, plan, _ = planned
    with pytest.raises(skg.PlanError, match="every channel"):
        skg.prune(model, plan, masks={"0:out": torch.ones(8, dtype=torch.bool)}, inplace=True)
    assert model[0].out_channels == 8
    r = skg.prune(model, plan, ratio=0.5, inplace=True)
    assert r.model is model and model[0].out_channels == 4 and model[1].num_features == 4


def test_save_and_load_pruned(planned, tmp_path: Path) -> None:
    model, plan, _ = planned
    x = torch.randn(1, 3, 6, 6)
    r = skg.prune(model.eval(), plan, ratio=0.5)
    skg.save_pruned(r, tmp_path / "out")
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tmp_path / "out").iterdir())
    loaded = skg.load_pruned(_net(), tmp_path / "out").eval()
    torch.testing.assert_close(loaded(x), r.model.eval()(x))


def test_bind_channel_index_matches_masks(planned) -> None:
    model, plan, _ = planned
    couplings = skg.bind(plan, model)
    c = couplings["0:out"]
    assert c.numblk() == 8 and c.grid_shape[0] == 8
    mask = torch.zeros(8, dtype=torch.bool)
    mask[3] = True
    c.apply_mask(mask)
    assert model[0].weight[3].eq(0).all() and model[1].weight[3] == 0 and model[3].weight[:, 3].eq(0).all()


def test_failed_surgery_leaves_the_model_unchanged(planned, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-edited plan that forgets the BatchNorm: ``prune`` plans again and refuses it; let
    through as the planner's own, the pruned model cannot run. Nothing changes either way."""
    model, plan, _ = planned
    group = plan.group("0:out")
    edited = plan.model_copy(
        update={
            "groups": [
                g.model_copy(update={"members": [m for m in g.members if not m.param.startswith("1.")]}) if g is group else g
                for g in plan.groups
            ]
        }
    )
    edited.check(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(skg.PlanError, match="group '0:out' field members: differs from the planner's"):
        skg.prune(model, edited, ratio=0.5, inplace=True)
    monkeypatch.setattr(importlib.import_module("sparsekit_graph.prune.api"), "check_planned", lambda *a: None)  # behind it
    with pytest.raises(skg.SparseKitError, match="does not run.*layer 1"):
        skg.prune(model, edited, ratio=0.5, inplace=True)
    assert model[0].out_channels == 8 and model[1].num_features == 8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_planner_members_equal_pydantic_construction() -> None:
    """The planner's fast construction gives what ``model_construct`` gives: equal objects, the
    same fields set, a JSON round trip that validates, and frozen instances."""
    from sparsekit_graph.plan.schema import Group, Member, constructed

    plan = skg.plan(torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32))
    for g in plan.groups:
        assert Group.model_construct(**g.__dict__) == g
        for m in g.members:
            ref = Member.model_construct(**m.__dict__)
            assert ref == m and ref.model_fields_set == m.model_fields_set and ref.model_dump() == m.model_dump()
    assert skg.Plan.model_validate_json(plan.model_dump_json()) == plan
    member = plan.groups[0].members[0]
    with pytest.raises(ValidationError):
        member.start = 1  # type: ignore[misc]
    partial = constructed(Member, param="w", axis=0, start=0, stop=2)  # fields left out: model_construct's defaults
    assert partial == Member.model_construct(param="w", axis=0, start=0, stop=2)
