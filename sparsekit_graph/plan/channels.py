"""A connected component of the axis graph -> its channels, split by signature (which
parameter axes a channel touches, whether a parameter produces it, pinned or mixed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..graph.axes import AxisGraph, AxisId

__all__ = ["Channels", "channel_signatures"]


@dataclass
class Channels:
    """Channels that share one signature: which parameter axes they touch, and how often."""

    params: tuple[int, ...]  # parameter node index per occurrence, sorted
    produced: bool  # some parameter (or weight) produces these channels
    pin: str | None
    mix: str | None
    positions: list[list[int]] | None  # (channels, len(params)): positions matching ``params``; None: identity
    labels: list[int] | None = None  # the channels' labels in the component's index union (slot path)
    counts: dict[int, np.ndarray] | None = None  # node index -> its indices per channel, for sized axes
    at: dict[int, np.ndarray] | None = None  # node index -> its first index per channel, for repeat targets
    size: int = 0  # identity components (``positions`` None): channel i is index i of every member


def channel_signatures(graph: AxisGraph, nodes: list[AxisId], targets: dict[AxisId, np.ndarray] | None = None) -> list[Channels]:
    """The channels of one component (``nodes`` sorted), one entry per signature. A component
    joined by identity links only is one signature, every member owning its whole axis in order
    (no per-index work); others are resolved index by index (``_slot_channels``)."""
    attrs = graph.nodes
    params = [i for i, n in enumerate(nodes) if n[0] == "p"]
    pin = next((r for n in nodes for r in attrs[n]["pins"]), None)
    mix = next((r for n in nodes for r in attrs[n]["mixes"]), None)
    if graph.identity_only(nodes):
        size = attrs[nodes[params[0]]]["size"]  # identity links join equal sizes only
        produced = any(attrs[n].get("producer", False) for n in nodes)
        at = {i: np.arange(size) for i, n in enumerate(nodes) if targets and n in targets}
        return [Channels(tuple(params), produced, pin, mix, None, at=at, size=size)]
    return _slot_channels(graph, nodes, params, targets or {})


def _slot_channels(graph: AxisGraph, nodes: list[AxisId], params: list[int], targets: dict[AxisId, np.ndarray]) -> list[Channels]:
    """Union every index that moves together; a channel is one connected set of indices."""
    attrs = graph.nodes
    index = {n: i for i, n in enumerate(nodes)}
    sizes = np.array([attrs[n]["size"] for n in nodes], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(sizes)])
    rows, cols = [], []
    for u, v, d in graph.component_edges(nodes):
        a, b = (u, v) if d["a"] == u else (v, u)
        ia = np.arange(sizes[index[a]]) if d["ia"] is None else d["ia"]
        ib = np.arange(sizes[index[b]]) if d["ib"] is None else d["ib"]
        rows.append(offset[index[a]] + ia)
        cols.append(offset[index[b]] + ib)
    total = int(offset[-1])
    graph.slots_resolved += total
    r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, np.int64),) * 2
    adj = sp.coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    _, label = connected_components(adj, directed=False)

    def flag(key: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, n in enumerate(nodes):
            for reason in attrs[n][key][:1]:
                for lab in np.unique(label[offset[i] : offset[i + 1]]):
                    out.setdefault(int(lab), reason)
        return out

    pins, mixes = flag("pins"), flag("mixes")
    produced = {
        int(lab) for i, n in enumerate(nodes) if attrs[n].get("producer", False) for lab in label[offset[i] : offset[i + 1]]
    }
    lab = np.concatenate([label[offset[i] : offset[i + 1]] for i in params])
    nid = np.concatenate([np.full(sizes[i], i) for i in params])
    pos = np.concatenate([np.arange(sizes[i]) for i in params])
    order = np.lexsort((pos, nid, lab))
    lab, nid, pos = lab[order], nid[order], pos[order]
    cuts = (np.flatnonzero(np.diff(lab)) + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, len(lab)]
    nid_list, pos_list = nid.tolist(), pos.tolist()
    sized = {
        i: np.bincount(label[offset[i] : offset[i + 1]], minlength=int(label.max()) + 1)
        for i, n in enumerate(nodes)
        if n in graph.size_refs or n in graph.scales or n in graph.follows or n in graph.floors
    }
    counted = segments_counted(graph, nodes, sized)
    by_key: dict[tuple, Channels] = {}
    for channel, a, b in zip(lab[starts].tolist(), starts, ends):
        pin, mix = pins.get(channel), mixes.get(channel)
        # reasons do not split groups; the segments an attribute counts do
        key = (tuple(nid_list[a:b]), channel in produced, pin is None, mix is None, counted(channel))
        if key not in by_key:
            by_key[key] = Channels(key[0], key[1], pin, mix, [], [])
        by_key[key].positions.append(pos_list[a:b])
        by_key[key].labels.append(channel)  # type: ignore[union-attr]
    first = {}
    for i, n in enumerate(nodes):
        if n in targets:
            f = np.full(int(label.max()) + 1, -1, dtype=np.int64)
            f[label[offset[i] : offset[i + 1]][::-1]] = np.arange(sizes[i])[::-1]  # the lowest index wins
            first[i] = f
    for ch in by_key.values():
        ch.counts = {i: c[ch.labels] for i, c in sized.items()}
        ch.at = {i: f[ch.labels] for i, f in first.items()}
    return list(by_key.values())


def segments_counted(graph: AxisGraph, nodes: list[AxisId], sized: dict[int, np.ndarray]) -> Callable[[int], tuple[bool, ...]]:
    """Per channel: which axes sized by an attribute hold it. A list attribute's elements count
    the segments of one axis (``v.split(self.splits, 1)``, then ``cat([b, a])``): channels no
    parameter tells apart would be one group that ``splits[0]`` counts unevenly (pinned); split
    by what counts them, each segment is a group of its own, as it is where the segments run
    through layers of their own (MixNet). How many times a segment's channels are counted is
    left to the group's size references: uneven counts within one still pin."""
    refs = [i for i, n in enumerate(nodes) if n in graph.size_refs and i in sized]
    return lambda channel: tuple(bool(sized[i][channel]) for i in refs)
