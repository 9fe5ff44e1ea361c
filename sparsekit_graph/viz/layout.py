"""A layered (Sugiyama-style) layout computed with networkx: ranks by longest path, long edges
through virtual points, nodes placed at their parents' barycentre and pushed apart so that no
two boxes (and so no two labels) overlap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

__all__ = ["CHAR_W", "LINE_H", "Box", "Layout", "box_size", "layered_layout"]

CHAR_W = 7.0  # px per character of an 11 px monospace font (0.6 em, with a margin for wider fonts)
LINE_H = 14.0  # px per text line
_PAD_X, _PAD_Y, _GAP_X, _GAP_Y, _VIRTUAL_W = 8.0, 5.0, 18.0, 26.0, 6.0


@dataclass(frozen=True)
class Box:
    """A node's rectangle: top-left ``(x, y)``, width, height."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    def overlaps(self, other: Box) -> bool:
        apart_x = self.x + self.w <= other.x or other.x + other.w <= self.x
        return not apart_x and self.y < other.y + other.h and other.y < self.y + self.h


@dataclass(frozen=True)
class Layout:
    """Node boxes, each edge as a polyline of points (source bottom to target top), the size."""

    boxes: dict[str, Box]
    routes: dict[tuple[str, str], list[tuple[float, float]]]
    width: float
    height: float


def box_size(lines: Sequence[str]) -> tuple[float, float]:
    """Width and height of a box that holds ``lines`` of monospace text."""
    return max(len(s) for s in lines) * CHAR_W + 2 * _PAD_X, len(lines) * LINE_H + 2 * _PAD_Y


def layered_layout(nodes: Sequence[str], edges: Sequence[tuple[str, str]], sizes: dict[str, tuple[float, float]]) -> Layout:
    """Lay ``nodes`` (in execution order) out top to bottom along ``edges`` (a DAG)."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    index = {n: i for i, n in enumerate(nodes)}
    rank: dict[str, int] = {}
    for n in nx.lexicographical_topological_sort(g, key=index.__getitem__):
        rank[n] = max((rank[p] + 1 for p in g.predecessors(n)), default=0)
    # Long edges pass through one virtual point per rank they cross.
    chains: dict[tuple[str, str], list[str]] = {}
    flow = nx.DiGraph()
    flow.add_nodes_from(nodes)
    for s, t in edges:
        path = [s] + [f"\0{s}\0{t}\0{r}" for r in range(rank[s] + 1, rank[t])] + [t]
        for r, v in enumerate(path[1:-1], start=rank[s] + 1):
            rank[v] = r
            index[v] = index[t]
        nx.add_path(flow, path)
        chains[(s, t)] = path
    rows: dict[int, list[str]] = {}
    for v in sorted(flow.nodes, key=lambda v: (index[v], v)):
        rows.setdefault(rank[v], []).append(v)
    width = {v: sizes[v][0] if v in sizes else _VIRTUAL_W for v in flow.nodes}
    height = max((h for _, h in sizes.values()), default=LINE_H)
    cx: dict[str, float] = {}
    for r in sorted(rows):
        _place_row(rows[r], flow, width, index, cx)
    left = min(cx[v] - width[v] / 2 for v in cx)
    boxes = {n: Box(cx[n] - width[n] / 2 - left, rank[n] * (height + _GAP_Y), width[n], sizes[n][1]) for n in nodes}
    routes = {}
    for (s, t), path in chains.items():
        points = [(boxes[s].cx, boxes[s].y + boxes[s].h)]
        points += [(cx[v] - left, rank[v] * (height + _GAP_Y) + height / 2) for v in path[1:-1]]
        points.append((boxes[t].cx, boxes[t].y))
        routes[(s, t)] = points
    total_w = max((b.x + b.w for b in boxes.values()), default=0.0)
    total_h = max((b.y + b.h for b in boxes.values()), default=0.0)
    return Layout(boxes, routes, total_w, total_h)


def _place_row(row: list[str], flow: nx.DiGraph, width: dict[str, float], index: dict[str, int], cx: dict[str, float]) -> None:
    """Centre each node of a rank under its parents, then push neighbours apart left to right."""
    want = {}
    for i, v in enumerate(row):
        parents = [cx[p] for p in flow.predecessors(v) if p in cx]
        want[v] = sum(parents) / len(parents) if parents else float(i) * 200.0
    ordered = sorted(row, key=lambda v: (want[v], v.startswith("\0"), index[v]))
    placed: list[float] = []
    for v in ordered:
        x = want[v]
        if placed:
            prev = ordered[len(placed) - 1]
            x = max(x, placed[-1] + width[prev] / 2 + _GAP_X + width[v] / 2)
        placed.append(x)
    shift = sum(want[v] - x for v, x in zip(ordered, placed)) / len(ordered)
    for v, x in zip(ordered, placed):
        cx[v] = x + shift
