"""Planning work grows linearly with depth (counted, not timed)."""

from __future__ import annotations

from helpers import deep_cnn

import sparsekit_graph as skg
from sparsekit_graph.plan.planner import build_axis_graph, resolve_groups


def _work(layers: int) -> dict[str, int]:
    model, x = deep_cnn(layers)
    graph = build_axis_graph(model, x)
    groups = resolve_groups(graph)
    return {
        "nodes": graph.g.number_of_nodes(),
        "edges": graph.g.number_of_edges(),
        "rules": graph.rule_applications,
        "slots": graph.slots_resolved,
        "members": sum(len(g.members) for g in groups),
    }


def test_planning_work_is_linear_in_depth() -> None:
    small, big = _work(32), _work(128)
    for key, value in small.items():
        per_layer_small, per_layer_big = value / 32, big[key] / 128
        assert per_layer_big <= 1.25 * per_layer_small + 1, f"{key}: {small[key]} -> {big[key]} for 4x the layers"
    assert big["slots"] > 0  # the concat/chunk components are resolved index by index


def test_deep_net_plans_and_prunes() -> None:
    model, x = deep_cnn(24)
    result = skg.prune(model, skg.plan(model, x), ratio=0.5)
    assert result.report.params_after < result.report.params_before
    assert result.model(x).shape == (1, 10)
