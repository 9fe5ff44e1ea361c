"""What a picture shows, independent of the file format: boxes with text and colours, edges,
and a legend naming every group (pinned ones with their reason)."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

from .layers import LayerGraph
from .layout import CHAR_W, LINE_H, Box, box_size, layered_layout

__all__ = ["Item", "LegendRow", "Scene", "build_scene", "group_colour"]

_LEGEND_GAP = 40.0
_SWATCH = 12.0


def group_colour(i: int) -> str:
    """A pastel colour per group index (golden-angle hues, two lightness levels)."""
    r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.78 if i % 2 else 0.70, 0.55)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


@dataclass(frozen=True)
class Item:
    """A drawn layer: its box, text lines, fill, whether its output group is pinned, its groups."""

    key: str
    box: Box
    lines: tuple[str, ...]
    fill: str
    stripe: str | None  # colour of its input group, drawn on the left edge
    pinned: bool
    groups: tuple[int, ...]
    title: str


@dataclass(frozen=True)
class LegendRow:
    """One legend line: a swatch of the group's colour and its description."""

    group: int
    box: Box
    text: str
    colour: str
    pinned: bool


@dataclass(frozen=True)
class Scene:
    items: list[Item]
    edges: list[list[tuple[float, float]]]
    legend: list[LegendRow]
    width: float
    height: float


def build_scene(lg: LayerGraph) -> Scene:
    """Lay out ``lg`` and place the legend to its right."""
    groups = lg.plan.groups
    lines = {k: tuple(s for s in (layer.name, layer.kind) if s) for k, layer in lg.layers.items()}
    layout = layered_layout(list(lg.layers), lg.edges, {k: box_size(v) for k, v in lines.items()})
    items = []
    for key, layer in lg.layers.items():
        out = layer.out_groups[0] if layer.out_groups else None
        names = [f"out: {groups[g].name}" for g in layer.out_groups] + [f"in: {groups[g].name}" for g in layer.in_groups]
        items.append(
            Item(
                key=key,
                box=layout.boxes[key],
                lines=lines[key],
                fill=group_colour(out) if out is not None else "#ffffff",
                stripe=group_colour(layer.in_groups[0]) if layer.in_groups else None,
                pinned=out is not None and not groups[out].prunable,
                groups=tuple(lg.groups_of(key)),
                title="\n".join([layer.name, *names]),
            )
        )
    x0 = layout.width + _LEGEND_GAP
    legend = []
    for i, g in enumerate(groups):
        state = f"PINNED: {g.reason}" if not g.prunable else "prunable" + (", zero-invariant" if g.zero_invariant else "")
        text = f"{g.name} ({g.size}) {state}"
        box = Box(x0, i * (LINE_H + 4), _SWATCH + 6 + len(text) * CHAR_W, LINE_H)
        legend.append(LegendRow(i, box, text, group_colour(i), not g.prunable))
    width = max([layout.width, *(r.box.x + r.box.w for r in legend)])
    height = max([layout.height, *(r.box.y + r.box.h for r in legend)])
    return Scene(items, list(layout.routes.values()), legend, width + 10, height + 10)
