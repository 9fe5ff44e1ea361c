"""The command line on a small real model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torchvision")
from sparsekit_graph.cli import app  # noqa: E402

runner = CliRunner()


def test_plan_show_prune(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "torchvision:resnet18", "-o", str(plan)])
    assert r.exit_code == 0, r.output
    assert plan.exists() and "prunable" in r.output
    r = runner.invoke(app, ["show", str(plan)])
    assert r.exit_code == 0 and "layer1.0.conv1:out" in r.output
    r = runner.invoke(app, ["prune", "torchvision:resnet18", "--ratio", "0.5", "--plan", str(plan), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "parameters" in r.output and (tmp_path / "out" / "model.safetensors").exists()


def test_bad_spec_is_a_clean_error() -> None:
    r = runner.invoke(app, ["plan", "torchvision:nonexistent_net"])
    assert r.exit_code == 2 and "no model" in r.output
    r = runner.invoke(app, ["show", "/nonexistent/plan.json"])
    assert r.exit_code == 2 and "cannot read plan" in r.output
