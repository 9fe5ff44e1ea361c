"""Draw a plan's channel groups: one cluster per group, its members inside (graphviz DOT)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from torch import nn

from .errors import SparseKitError
from .plan.planner import plan as make_plan
from .plan.schema import Plan

__all__ = ["plan_to_dot", "write_group_graph"]


def plan_to_dot(plan: Plan) -> str:
    """DOT text: a cluster per group (green prunable, grey pinned), a node per member."""
    lines = ["digraph plan {", "  rankdir=LR; node [shape=box, fontsize=10];"]
    for i, g in enumerate(plan.groups):
        colour = "palegreen" if g.prunable else "lightgrey"
        label = f"{g.name} ({g.size})" + ("" if g.prunable else f"\\n{g.reason}")
        lines.append(f'  subgraph cluster_{i} {{ style=filled; color={colour}; label="{_esc(label)}";')
        for j, m in enumerate(g.members):
            lines.append(f'    g{i}m{j} [label="{_esc(m.param)}[{m.axis}] {m.start}:{m.stop}"];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def _esc(s: str) -> str:
    return s.replace('"', '\\"')


def write_group_graph(model: nn.Module, example_inputs: Any, out: Path) -> None:
    """Plan ``model`` and write its groups as .dot, or .svg/.png through graphviz."""
    dot = plan_to_dot(make_plan(model, example_inputs))
    if out.suffix == ".dot":
        out.write_text(dot)
        return
    exe = shutil.which("dot")
    if exe is None:
        raise SparseKitError("graphviz 'dot' is not installed: write a .dot file instead, or install graphviz")
    subprocess.run([exe, f"-T{out.suffix.lstrip('.')}", "-o", str(out)], input=dot.encode(), check=True)
