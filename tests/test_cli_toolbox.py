"""CLI habits and declarative edits: --json, --quiet, one-line errors (exit 2, --debug),
--help with examples, check / schema / diff, prune --plan honouring per-group edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torchvision")
from sparsekit_graph.cli import app  # noqa: E402
from sparsekit_graph.errors import PlanError  # noqa: E402
from sparsekit_graph.plan.edits import check_against, check_edits, pin_ignored  # noqa: E402
from sparsekit_graph.plan.schema import Plan  # noqa: E402

runner = CliRunner()
SPEC = "torchvision:resnet18"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    r = runner.invoke(app, ["plan", SPEC, "-o", str(path), "--quiet"])
    assert r.exit_code == 0 and r.output == "", r.output
    return path


def _edited(plan: Plan, name: str, **update: object) -> Plan:
    groups = [g.model_copy(update=update) if g.name == name else g for g in plan.groups]
    return plan.model_copy(update={"groups": groups})


def test_every_command_has_an_example_in_help() -> None:
    for cmd in ("plan", "show", "prune", "graph", "view", "check", "schema", "diff"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output and "sparsekit-graph" in r.output, cmd
    r = runner.invoke(app, ["prune", "--help"])
    for opt in ("--importance", "--uniform", "--gqa", "--global", "--round-to", "--ignore", "--json", "--quiet", "--debug"):
        assert opt in r.output, opt


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"groups": [{"name": 3}]}')
    r = runner.invoke(app, ["show", str(bad)])
    assert r.exit_code == 2 and r.output.startswith("error: invalid plan") and r.output.count("\n") == 1
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["show", str(bad), "--debug"])
    assert isinstance(r.exception, PlanError)  # --debug lets the exception (and its traceback) through
    r = runner.invoke(app, ["graph", SPEC, "-o", str(tmp_path / "g.bmp")])
    assert r.exit_code == 2 and "unknown picture format" in r.output


def test_show_and_prune_json(planned: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["show", str(planned), "--json"])
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and {g["name"] for g in data["groups"]} >= {"layer1.0.conv1:out", "fc:out"}
    plan = Plan.load(planned)
    edited = _edited(plan, "layer1.0.conv1:out", keep=10)
    edited = _edited(edited, "layer2.0.conv1:out", prunable=False, reason="kept whole by the user")
    edited = _edited(edited, "layer3.0.conv1:out", ratio=0.25)
    path = tmp_path / "edited.json"
    edited.save(path)
    args = ["prune", SPEC, "--plan", str(path), "--ratio", "0.5", "--round-to", "2", "--importance", "l1"]
    args += ["-o", str(tmp_path / "out")]
    r = runner.invoke(app, [*args, "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["kept"]["layer1.0.conv1:out"] == 10
    assert report["kept"]["layer2.0.conv1:out"] == 128
    assert report["kept"]["layer3.0.conv1:out"] == 192
    assert report["kept"]["layer4.0.conv1:out"] == 256
    assert report["params_after"] < report["params_before"]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_check_rejects_edits_naming_group_and_field(planned: Path, tmp_path: Path) -> None:
    plan = Plan.load(planned)
    cases = {
        "unpin": (_edited(plan, "fc:out", prunable=True), r"group 'fc:out' field prunable: the planner pinned"),
        "keep on pinned": (_edited(plan, "fc:out", keep=10), r"group 'fc:out' field keep: the group is pinned"),
        "disagree": (_edited(plan, "conv1:out", ratio=0.5, keep=10), r"group 'conv1:out' fields ratio and keep"),
    }
    for what, (edited, match) in cases.items():
        with pytest.raises(PlanError, match=match):
            check_edits(edited)
        path = tmp_path / f"{what}.json"
        edited.save(path)
        r = runner.invoke(app, ["check", str(path), SPEC])
        assert r.exit_code == 2 and "error: group" in r.output, (what, r.output)
    sneaky = _edited(plan, "fc:out", prunable=True, reason=None)  # reason removed too: only a fresh plan tells
    check_edits(sneaky)
    with pytest.raises(PlanError, match=r"group 'fc:out' field prunable"):
        check_against(sneaky, plan)
    with pytest.raises(PlanError, match=r"group 'conv1:out' field size"):
        check_against(
            _edited(
                plan, "conv1:out", size=32, members=[m.model_copy(update={"stop": 32}) for m in plan.group("conv1:out").members]
            ),
            plan,
        )  # noqa: E501
    good = tmp_path / "good.json"
    _edited(plan, "layer1.0.conv1:out", keep=8).save(good)
    r = runner.invoke(app, ["check", str(good), SPEC])
    assert r.exit_code == 0 and "1 edits" in r.output and "keep: None -> 8" in r.output


def test_ignore_on_a_loaded_plan(planned: Path) -> None:
    plan = pin_ignored(Plan.load(planned), ["layer1.0.conv1"])
    assert not plan.group("layer1.0.conv1:out").prunable and plan.group("layer1.0.conv1:out").reason == "ignored: layer1.0.conv1"
    with pytest.raises(PlanError, match="ignore: no parameter"):
        pin_ignored(plan, ["nope"])


def test_schema_and_diff(planned: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["schema"])
    schema = json.loads(r.stdout)
    assert r.exit_code == 0 and "groups" in schema["properties"] and "Group" in schema["$defs"]
    plan = Plan.load(planned)
    other = tmp_path / "other.json"
    _edited(plan, "layer1.0.conv1:out", keep=8).save(other)
    r = runner.invoke(app, ["diff", str(planned), str(other), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == [{"group": "layer1.0.conv1:out", "field": "keep", "old": None, "new": 8}]
    r = runner.invoke(app, ["diff", str(planned), str(planned)])
    assert r.exit_code == 0 and "no differences" in r.output


def test_view_writes_a_self_contained_page(planned: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    r = runner.invoke(app, ["view", str(planned), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert "layer1.0.conv1:out" in html and "<script src" not in html and "http://" not in html.replace("http://www.w3.org", "")


def test_no_pickle_in_the_package() -> None:
    import sparsekit_graph

    root = Path(sparsekit_graph.__file__).parent
    import re

    banned = re.compile(r"^\s*(import|from) (pickle|dill|cloudpickle)\b|\bpickle\.(dumps?|loads?)\(|\btorch\.(save|load)\(", re.M)
    hits = [(p.name, m.group(0)) for p in root.rglob("*.py") for m in banned.finditer(p.read_text())]
    assert hits == []
