"""Per-expert width groups: a stacked expert tensor ``(E, 2I, H)`` prunes each expert's own
intermediate channels.

The planner sees one width axis shared by every expert (``gate_up_proj[expert_ids]`` gathers
whole slabs). Each token-expert row only reads its own expert's slab, so a width channel of
expert ``e`` can go without touching the others: the group splits into ``E`` groups whose
members hold axis 0 at ``e`` (``Member.fix``). The tensor stays rectangular only if every
expert keeps the same number, which a count tie records.
"""

from __future__ import annotations

from ..graph.axes import AxisGraph
from .schema import Group, Tie, TiePart

__all__ = ["split_experts"]

_REASON = "experts stacked in one tensor keep equal widths"


def split_experts(graph: AxisGraph, groups: list[Group]) -> tuple[list[Group], list[Tie]]:
    """Split every prunable group whose members all live in tensors gathered on axis 0 by one
    routing (and never on that axis) into one group per expert, tied to equal counts."""
    out: list[Group] = []
    ties: list[Tie] = []
    for g in groups:
        domains = {graph.gathered.get(m.param) for m in g.members}
        if not g.prunable or None in domains or len(domains) != 1 or any(m.axis == 0 for m in g.members):
            out.append(g)
            continue
        experts = graph.size(domains.pop())  # type: ignore[arg-type]
        parts = [
            g.model_copy(update={"name": f"{g.name}@{e}", "members": [m.model_copy(update={"fix": [(0, e)]}) for m in g.members]})
            for e in range(experts)
        ]
        out += parts
        ties.append(Tie(parts=[TiePart(group=p.name) for p in parts], reason=_REASON))
    return out, ties
