"""The axis graph: which indices of which tensor axes move together.

Nodes are tensor axes: ``("v", value, axis)`` for an activation (``value`` is a node name,
or ``"name.i"`` for element ``i`` of a tuple-valued node) and ``("p", qualified_name, axis)``
for a parameter or buffer. Node attributes: ``size``, ``pins`` (reasons the axis may not be
pruned) and ``mixes`` (reasons zeroing a channel is not the same as removing it).
A multigraph edge ``(a, b)`` carries an index map: ``a`` (which end ``ia`` indexes), ``ia``/``ib`` (index arrays of equal length,
``None`` meaning ``arange(size)``) and ``kind`` (``identity``, ``offset``, ``tie``, ``block``);
index ``ia[k]`` of ``a`` moves with index ``ib[k]`` of ``b``.

The graph is stored as plain dicts (a rule adds hundreds of axes and links per model, and
networkx's bookkeeping cost as much as the rules themselves); ``AxisGraph.g`` is the same
graph as a ``networkx.MultiGraph``, kept in step on access, for analyses and inspection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import networkx as nx
import numpy as np
from torch import Tensor

__all__ = ["AxisGraph", "AxisId", "param_axis", "value_axis"]

AxisId = tuple[str, str, int]


def value_axis(value: str, axis: int) -> AxisId:
    return ("v", value, axis)


def param_axis(name: str, axis: int) -> AxisId:
    return ("p", name, axis)


@dataclass
class AxisGraph:
    """A multigraph of tensor axes plus the bookkeeping the planner needs."""

    nodes: dict[AxisId, dict[str, Any]] = field(default_factory=dict)  # axis -> size, pins, mixes (, producer)
    adj: dict[AxisId, dict[AxisId, list[dict[str, Any]]]] = field(default_factory=dict)  # axis -> neighbour -> edges
    order: dict[str, int] = field(default_factory=dict)  # parameter name -> first use in graph order
    ndim: dict[str, int] = field(default_factory=dict)  # parameter name -> number of dims
    canonical: dict[int, str] = field(default_factory=dict)  # id(tensor) -> its first name (tied weights)
    slots_resolved: int = 0  # indices resolved one by one (work counter)
    rule_applications: int = 0

    sizes: dict[AxisId, int] = field(default_factory=dict)  # every axis and its size
    size_refs: dict[AxisId, set[Any]] = field(default_factory=dict)  # axis -> SizeSources of its literal sizes
    size_values: dict[Any, int] = field(default_factory=dict)  # SizeSource -> the value it matched
    numbers: list[tuple[int, Any]] = field(default_factory=list)  # (whole number, fx node) scaling a tensor
    values: dict[str, list[AxisId]] = field(default_factory=dict)  # activation name -> its axes
    divert_repeats: bool = False  # gqa="query_heads": repeat links are recorded, not made
    repeats: list[tuple[AxisId, AxisId, np.ndarray, np.ndarray]] = field(default_factory=list)  # (src, dst, ia, ib)
    diverted: set[AxisId] = field(default_factory=set)  # targets of diverted repeat links
    repeat_factors: dict[AxisId, list[AxisId]] = field(default_factory=dict)  # dst -> broadcast factor axes
    domains: dict[str, AxisId] = field(default_factory=dict)  # integer activation -> the axis its values index
    domain_reads: set[str] = field(default_factory=set)  # nodes whose rule linked the positions they index by
    gathered: dict[str, AxisId] = field(default_factory=dict)  # parameter gathered on axis 0 by indices of that axis
    head_dim: bool = False  # plan(head_dim=True): inner reshape factors are recorded (factors), not pinned
    factors: list[tuple[AxisId, AxisId, np.ndarray, np.ndarray]] = field(default_factory=list)  # (whole, factor, iw, if)
    head_dims: list[AxisId] = field(default_factory=list)  # head-size carriers (head_dim=True)
    scales: dict[AxisId, list[Any]] = field(default_factory=dict)  # query head_dim axis -> AttentionScale sites
    follows: dict[AxisId, str] = field(default_factory=dict)  # axis whose literal size must follow -> "node:axis"
    bounds: set[Any] = field(default_factory=set)  # SizeSources a slice's bounds are made of: the code reads them
    exported: bool = False  # built from a torch.export graph: literal sizes matched by value, not by reads
    merged: dict[AxisId, tuple[tuple[int, ...], int]] = field(default_factory=dict)  # (B*H) axis -> (B, H), carrier
    modelled_lengths: set[tuple[Any, Any]] = field(default_factory=set)  # (fx node, length node its rule follows)
    floors: dict[AxisId, tuple[int, str]] = field(default_factory=dict)  # axis -> (fewest indices an op needs, why)

    def __post_init__(self) -> None:
        self._edges: list[tuple[AxisId, AxisId, dict[str, Any]]] = []  # in insertion order
        self._nx: nx.MultiGraph | None = None
        self._synced = (0, 0)  # nodes, edges already in ``_nx``
        self._params: dict[tuple[str, tuple[int, ...] | None], list[AxisId]] = {}  # add_param's answers
        self._sliced: set[AxisId] = set()  # ends of links that map indices (not identities)

    def add_axis(self, axis: AxisId, size: int) -> AxisId:
        if axis not in self.sizes:
            self.sizes[axis] = int(size)
            self.nodes[axis] = {"size": int(size), "pins": [], "mixes": []}
            self.adj[axis] = {}
        return axis

    def add_value(self, value: str, t: Tensor) -> list[AxisId]:
        """Axes of an activation (created on first use)."""
        axes = self.values.get(value)
        if axes is None:
            axes = self.values[value] = [self.add_axis(value_axis(value, i), n) for i, n in enumerate(t.shape)]
        return list(axes)

    def add_param(self, name: str, t: Tensor, axes: tuple[int, ...] | None = None) -> list[AxisId]:
        """Axes of a parameter or buffer; ``axes`` limits which dims can carry channels."""
        key = (name, None if axes is None else tuple(axes))
        known = self._params.get(key)
        if known is not None:  # rules ask for a layer's weight axes at every use
            return list(known)
        self.order.setdefault(name, len(self.order))
        self.ndim[name] = t.ndim
        dims = range(t.ndim) if axes is None else axes
        out = self._params[key] = [self.add_axis(param_axis(name, i), t.shape[i]) for i in dims]
        return list(out)

    def size(self, axis: AxisId) -> int:
        return self.sizes[axis]

    def link(self, a: AxisId, b: AxisId, ia: Any = None, ib: Any = None, kind: str = "identity") -> None:
        """Index ``ia[k]`` of ``a`` moves with ``ib[k]`` of ``b`` (``None``: every index).
        A ``repeat`` link (``b[i]`` copies ``a[ia[i]]``: GQA's key/value heads) is only recorded
        when ``divert_repeats`` is set; the planner then keeps ``a`` and ties ``b``'s copies."""
        if ia is None and ib is None:  # the common case: an identity
            if a == b:
                return
            if self.sizes[a] != self.sizes[b]:
                raise ValueError(f"identity link between axes of size {self.size(a)} and {self.size(b)}: {a} {b}")
            self._add_edge(a, b, {"a": a, "ia": None, "ib": None, "kind": "identity"})
            return
        ia, ib = _arr(ia), _arr(ib)
        if kind == "repeat" and self.divert_repeats and ia is not None and ib is not None:
            self.repeats.append((a, b, ia, ib))
            self.diverted.add(b)
            return
        if ia is not None and ib is not None and _is_range(ia, self.size(a)) and _is_range(ib, self.size(b)):
            ia = ib = None  # an explicit identity
        if a == b and ia is None and ib is None:
            return
        if ia is None and ib is None and self.size(a) != self.size(b):
            raise ValueError(f"identity link between axes of size {self.size(a)} and {self.size(b)}: {a} {b}")
        self._add_edge(a, b, {"a": a, "ia": ia, "ib": ib, "kind": kind if ia is not None else "identity"})

    def _add_edge(self, a: AxisId, b: AxisId, d: dict[str, Any]) -> None:
        if a not in self.nodes or b not in self.nodes:
            raise KeyError(f"link between axes not in the graph: {a} {b}")
        self.adj[a].setdefault(b, []).append(d)
        if a != b:
            self.adj[b].setdefault(a, []).append(d)
        self._edges.append((a, b, d))
        if d["ia"] is not None or d["ib"] is not None:
            self._sliced.update((a, b))

    def links(self, start: int = 0, stop: int | None = None) -> list[tuple[AxisId, AxisId, str]]:
        """``(end, end, kind)`` of the links made ``start``-th to ``stop``-th, in the order made."""
        return [(a, b, d["kind"]) for a, b, d in self._edges[start:stop]]

    def degree(self, axis: AxisId) -> int:
        """Number of links at ``axis`` (a link to itself counts twice, as in networkx)."""
        return sum(len(ds) * (2 if b == axis else 1) for b, ds in self.adj[axis].items())

    def edges(self, axis: AxisId) -> list[tuple[AxisId, dict[str, Any]]]:
        """``(other end, edge data)`` for every link at ``axis``."""
        return [(b, d) for b, ds in self.adj[axis].items() for d in ds]

    def component_edges(self, nodes: list[AxisId]) -> list[tuple[AxisId, AxisId, dict[str, Any]]]:
        """Every link of a connected component, once (as ``nx.MultiGraph.edges(nodes)``)."""
        seen: set[AxisId] = set()
        out = []
        for u in nodes:
            for v, ds in self.adj[u].items():
                if v not in seen:
                    out += [(u, v, d) for d in ds]
            seen.add(u)
        return out

    def identity_only(self, nodes: list[AxisId]) -> bool:
        """Is every link at ``nodes`` an identity (``ia`` and ``ib`` None)? One set check,
        instead of listing ``component_edges``."""
        return self._sliced.isdisjoint(nodes)

    def components(self) -> list[set[AxisId]]:
        """Connected components, in the order of their first axis (as ``nx.connected_components``)."""
        seen: set[AxisId] = set()
        out = []
        for start in self.nodes:
            if start in seen:
                continue
            component, todo = {start}, [start]
            while todo:
                for b in self.adj[todo.pop()]:
                    if b not in component:
                        component.add(b)
                        todo.append(b)
            seen |= component
            out.append(component)
        return out

    def produce(self, axis: AxisId) -> None:
        """Mark ``axis`` as producing its channels (a parameter, or a weight passed in)."""
        self.nodes[axis]["producer"] = True
        if self._nx is not None and axis in self._nx:
            self._nx.nodes[axis]["producer"] = True

    def pin(self, axis: AxisId, reason: str) -> None:
        pins = self.nodes[axis]["pins"]
        if reason not in pins:
            pins.append(reason)

    def pinned(self, axis: AxisId) -> bool:
        """Is this axis, or one identity-linked to it so far, pinned?"""
        return any(self.nodes[a]["pins"] for a in self.identity_linked(axis))

    def identity_linked(self, axis: AxisId) -> Iterator[AxisId]:
        """``axis`` and every axis identity-linked to it so far (one axis in all but name)."""
        seen, todo = {axis}, [axis]
        while todo:
            a = todo.pop()
            yield a
            for b, ds in self.adj[a].items():
                if b not in seen and any(d["ia"] is None for d in ds):
                    seen.add(b)
                    todo.append(b)

    def mix(self, axis: AxisId, reason: str) -> None:
        mixes = self.nodes[axis]["mixes"]
        if reason not in mixes:
            mixes.append(reason)

    def at_least(self, axis: AxisId, n: int, reason: str) -> None:
        """An op needs ``n`` indices of ``axis`` (``topk(n)`` along it); the highest need wins."""
        if n > self.floors.get(axis, (1, ""))[0]:
            self.floors[axis] = (n, reason)

    @property
    def g(self) -> nx.MultiGraph:
        """The axis graph as a ``networkx.MultiGraph``: node attributes ``size``, ``pins`` and
        ``mixes`` (the same lists), ``producer``; edge attributes ``a``, ``ia``, ``ib``, ``kind``.
        Axes and links added since the last access are added to it here; read-only by contract
        (change the graph through ``AxisGraph``'s methods)."""
        if self._nx is None:
            self._nx = nx.MultiGraph()
        n_nodes, n_edges = self._synced
        if n_nodes < len(self.nodes):
            self._nx.add_nodes_from(islice(self.nodes.items(), n_nodes, None))
        if n_edges < len(self._edges):
            self._nx.add_edges_from((a, b, d) for a, b, d in self._edges[n_edges:])
        self._synced = (len(self.nodes), len(self._edges))
        return self._nx


def _arr(x: Any) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.int64)


def _is_range(x: np.ndarray, n: int) -> bool:
    return len(x) == n and bool((x == np.arange(n)).all())
