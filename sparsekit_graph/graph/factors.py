"""Factored axes: the head_dim inside a projection's ``heads x head_dim`` rows.

A reshape that splits one axis into ``(heads, head_dim)`` (or merges them back) carries the
heads as the channels of the whole axis (a block map). With ``plan(head_dim=True)`` the inner
factor is not pinned there: the reshape records it (``record_factor``), and once the graph is
complete ``add_factor_shadows`` gives every parameter axis identity-linked to the whole axis a
*shadow* node ``(*axis, 1)`` whose index ``r`` moves with head_dim index ``digit(r)``. The
shadow's members are ``Member(factor=1)``: they overlap the heads' members of the same rows,
and surgery removes the union (kept rows are kept heads x kept head_dim indices).

A factor is released only where an attention rule proved what head_dim pruning needs (the
attention scale compensated: ``AxisGraph.scales``); anywhere else it pins as before.

Where the head count is no attribute the planner follows (``view(B, L, self.n_local_heads,
self.head_dim)``: the count is a constant of the call and pins), the head size itself carries
the reshape's channels. An axis a head_dim attribute (``sizes.UNIT_ATTRIBUTES``) sizes is a head
size wherever it carries: it pins unless ``head_dim=True`` (``unit_carrier``), and then it is
released only where an attention vouched for it, as a factor is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .axes import AxisGraph, AxisId
from .sizes import UNIT_ATTRIBUTES, running_unit

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["FACTOR", "add_factor_shadows", "record_factor", "unit_carrier"]

FACTOR = 1  # the last element of a shadow node: ``(kind, name, axis, FACTOR)``

Run = tuple[list[int], int, list[int]]  # (dims of the run, carrier dim, dims longer than 1)


def record_factor(ctx: RuleContext, src: list[AxisId], out: list[AxisId], a: Run, b: Run) -> bool:
    """One run of a reshape that splits an axis into ``(carrier, factor)`` or merges them: with
    ``head_dim`` on, record ``(whole axis, factor axis, whole index, factor index)`` and return
    True (the factor is not pinned); False for any other run (the caller pins as before)."""
    graph = ctx.graph
    (ga, ca, big_a), (gb, cb, big_b) = a, b
    if not graph.head_dim:
        return False
    shape_a = [graph.size(src[d]) for d in ga]
    shape_b = [graph.size(out[d]) for d in gb]
    if len(big_a) == 1 and len(big_b) == 2 and big_b[0] == cb:  # split: (.., H*D) -> (.., H, D)
        whole, factor = src[ca], out[big_b[1]]
        iw, ifac = _digits(shape_b, gb.index(big_b[1]))
        ctx.fresh([factor])
    elif len(big_b) == 1 and len(big_a) == 2 and big_a[0] == ca:  # merge: (.., H, D) -> (.., H*D)
        whole, factor = out[cb], src[big_a[1]]
        iw, ifac = _digits(shape_a, ga.index(big_a[1]))
    else:
        return False
    graph.factors.append((whole, factor, iw, ifac))
    return True


def unit_carrier(ctx: RuleContext, axis: AxisId, split: bool = False) -> None:
    """A reshape's channels are carried by ``axis``: if a head_dim attribute sized it, or it is
    the innermost part of a ``split`` of one axis, sized by no attribute (``-1``) and as long as
    the running layer's head size (``view(B, N, self.nh, -1)``), pin it (``head_dim=False``) or
    record it for ``add_factor_shadows`` to release or pin."""
    refs = ctx.graph.size_refs.get(axis, set())
    attrs = {getattr(s, "attr", None) for s in refs}
    units = sorted(attrs) if attrs and attrs <= set(UNIT_ATTRIBUTES) else []  # 4 heads of 4 by value: not only units
    if not refs and split and ctx.graph.size(axis) == running_unit(ctx.node, ctx.modules):
        units = ["the running layer's head size"]
    if not units:
        return
    if ctx.graph.head_dim:
        ctx.graph.head_dims.append(axis)
    else:
        reason = f"head_dim at {ctx.where()}: sized by {units[0]}, it carries the channels (plan(head_dim=True) to prune it)"
        ctx.pin([axis], reason)


def _digits(shape: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat index over ``shape`` and its digit ``k`` (the factor's index)."""
    flat = np.arange(math.prod(shape), dtype=np.int64)
    return flat, flat // math.prod(shape[k + 1 :]) % shape[k]


def add_factor_shadows(graph: AxisGraph) -> None:
    """Release the recorded factors an attention vouched for: shadow every node identity-linked
    to the whole axis and link the shadow to the factor. A factor of a released whole axis
    (``o.flatten(2) * self.scale.flatten()``, ``scale`` of shape (heads, head_dim)) is that
    head_dim too: linked to its shadow; and one that this links to a vouched head_dim (heads
    merged, split and merged again) is released in turn. Pin the rest with the reason."""
    if not graph.factors and not graph.head_dims:
        return
    component, vouched = _vouched(graph)
    for axis in graph.head_dims:
        if component.get(axis) not in vouched:
            graph.pin(axis, f"head_dim: {axis[1]} axis {axis[2]} (head_dim=True: no attention proved its scale here)")
            graph.mix(axis, "head_dim")
    carriers = {w for w, *_ in graph.factors}
    shadows: dict[AxisId, AxisId] = {}  # node of a released whole axis -> its shadow
    pending = list(graph.factors)
    while pending:
        waiting = []
        for whole, factor, iw, ifac in pending:
            if component.get(factor) in vouched:
                _release(graph, whole, factor, iw, ifac, carriers, shadows)
            elif whole in shadows:
                graph.link(shadows[whole], factor, iw, ifac, kind="block")
            else:
                waiting.append((whole, factor, iw, ifac))
        if len(waiting) == len(pending):
            break
        pending = waiting
        component, vouched = _vouched(graph)
    for _, factor, _, _ in pending:
        graph.pin(factor, f"reshape factor at {factor[1]} (head_dim=True: no attention proved its scale here)")
        graph.mix(factor, "reshape factor")


def _vouched(graph: AxisGraph) -> tuple[dict[AxisId, int], set[int]]:
    """Each node's component, and the components an attention's scale is in."""
    component = {n: i for i, c in enumerate(graph.components()) for n in c}
    return component, {component[a] for a in graph.scales if a in component}


def _release(
    graph: AxisGraph,
    whole: AxisId,
    factor: AxisId,
    iw: np.ndarray,
    ifac: np.ndarray,
    carriers: set[AxisId],
    shadows: dict[AxisId, AxisId],
) -> None:
    """Shadow each node identity-linked to ``whole`` and link it to ``factor`` (or pin the
    factor where the whole axis is also sliced or tiled)."""
    closure, odd = _identity_closure(graph, whole, carriers)
    if odd is not None:
        graph.pin(factor, f"head_dim: axis {odd[2]} of {odd[1]} is also sliced or tiled, not only split into heads")
        graph.mix(factor, "head_dim")
        return
    for node in closure:
        shadow = graph.add_axis((*node, FACTOR), graph.size(node))  # type: ignore[arg-type]
        attrs, own = graph.nodes[shadow], graph.nodes[node]
        attrs["pins"][:] = own["pins"]
        attrs["mixes"][:] = own["mixes"]
        if own.get("producer"):
            graph.produce(shadow)
        graph.link(shadow, factor, iw, ifac, kind="block")
        shadows[node] = shadow


def _identity_closure(graph: AxisGraph, whole: AxisId, carriers: set[AxisId]) -> tuple[list[AxisId], AxisId | None]:
    """Nodes identity-linked to ``whole``, and the first of them with another index map than a
    heads carrier's block map (None if none): its rows would not factor as ``heads x head_dim``."""
    seen, todo = {whole}, [whole]
    odd = None
    while todo:
        a = todo.pop()
        for b, d in graph.edges(a):
            if d["ia"] is None:
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
            elif d["kind"] != "block" or not ({a, b} & carriers):
                odd = odd or a
    return sorted(seen), odd
