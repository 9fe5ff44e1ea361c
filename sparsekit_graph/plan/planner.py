"""From a model to a Plan: trace, build the axis graph, resolve channel groups."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch.fx as fx
from torch import nn

from ..errors import PlanError, TraceError, UnreadParameters
from ..graph.axes import AxisGraph, AxisId
from ..graph.build import add_traced_graph
from ..graph.factors import FACTOR, add_factor_shadows
from ..graph.forward_modes import Mode, one_code_scan, traced_modes
from ..graph.head_dim import drop_partial_scales
from ..graph.meta import HIDDEN_SOURCES
from ..graph.sizes import SizeSource, module_stack
from ..graph.trace import Inputs, is_exported, trace_graph
from ..graph.untraced_hooks import pin_model_hooks
from ..model_state import kept
from .channels import Channels, channel_signatures
from .edits import check_against
from .experts import split_experts
from .head_dim import head_dim_parts, tie_shared_scales
from .ignored import ignored_names, pin_ignored
from .inputs import input_specs, input_values
from .layout import strided_layout, view_order
from .min_keep import min_keep
from .probe import probe_plan
from .schema import Given, Group, Member, Plan, PlanOptions, SizeRef, Tie, TiePart, constructed
from .shared_sizes import pin_shared_sizes, pin_untied_sizes
from .ties import shared_size_ties
from .unread import warn_unread

__all__ = ["GQA_POLICIES", "build_axis_graph", "check_planned", "plan", "resolve", "resolve_groups"]

GQA_POLICIES = ("kv_groups", "query_heads")


@one_code_scan()  # its traces and the copies it prunes share one scan of the code
def plan(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    ignore: Iterable[str] = (),
    train_graph: bool = True,
    gqa: str = "kv_groups",
    head_dim: bool = False,
) -> Plan:
    """Infer every coupling group of ``model``.

    Where torch.fx cannot trace it and ``torch.export`` does, a copy of the model is pruned
    and traced again before the plan is returned (``plan/probe.py``): a group whose pruning
    changes the code (a Python branch on its channel count, a literal that only equals it)
    is pinned with the reason.

    Args:
        model: Any ``nn.Module`` (real or meta weights); it is not modified.
        example_inputs: A tensor, tuple or dict of tensors (real or meta) for ``forward``.
        ignore: Module or parameter names whose axes must never be pruned (one name, or several).
        train_graph: Also trace the training-mode forward (e.g. auxiliary heads), and the
            forward under the other grad mode where the code asks ``torch.is_grad_enabled()``,
            and couple what they use.
        gqa: How grouped-query attention is pruned: ``"kv_groups"`` (a key/value head with its
            query heads is one channel) or ``"query_heads"`` (key/value heads stay; a channel
            is one query head, and a tie makes every key/value group lose as many).
        head_dim: Also prune the head size where that is exact: rotary embeddings pair channel
            ``i`` with ``i + d/2``, query/key (and value, when as long) share it, and the
            attention scale ``1/sqrt(head_dim)`` is compensated by scaling the query
            projection. Where the graph cannot prove this, head_dim stays pinned with the reason.

    Warns:
        UnreadParameters: Some parameters are read on no path the example inputs take (a route
            of an ``nn.ModuleDict``); the plan holds none of them.

    Raises:
        TraceError: The model cannot be traced with these inputs.
        PlanError: ``model`` is not an ``nn.Module``, a name in ``ignore`` is not in the model
            (or not a name), ``gqa`` is not a policy, or ``head_dim`` or ``train_graph`` is not a bool.
    """
    if not isinstance(model, nn.Module):
        raise PlanError(f"model must be an nn.Module, got {type(model).__name__}")
    if gqa not in GQA_POLICIES:
        raise PlanError(f"gqa={gqa!r}: expected one of {', '.join(map(repr, GQA_POLICIES))}")
    for name, flag in (("head_dim", head_dim), ("train_graph", train_graph)):
        if not isinstance(flag, bool):
            raise PlanError(f"{name}={flag!r}: expected True or False")
    inputs = input_specs(example_inputs)
    options = PlanOptions(ignore=ignored_names(ignore), train_graph=train_graph, gqa=gqa, head_dim=head_dim)
    with kept(model, values=False):  # a forward that freezes a layer or registers a hook
        graph, traced = _axis_graph(model, example_inputs, train_graph=train_graph, gqa=gqa, head_dim=head_dim)
        pin_ignored(graph, model, options.ignore, traced)
        groups, ties = resolve(graph)
        found = Plan(model=type(model).__name__, inputs=inputs, options=options, groups=groups, ties=ties)
        if is_exported(traced):  # export hides branches
            found = probe_plan(found, model, example_inputs, traced)
    found._given = Given(input_values(example_inputs))  # ``prune`` plans again on them (``check_planned``)
    warn_unread(model, found)
    return found


def check_planned(given: Plan, model: nn.Module) -> None:
    """Raise ``PlanError`` unless ``given`` is the planner's plan of ``model`` as it is now, or
    that plan with edits that apply (``edits.check_against``): the model is planned again with
    the plan's options and inputs. A plan loaded, edited, made for another model, or made
    before the forward changed (a flag, a config, a global, ``.half()``) is refused where its
    structure or claims differ."""
    o = given.options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadParameters)  # ``plan`` said so already
        base = plan(
            model, given.example_inputs(model), ignore=o.ignore, train_graph=o.train_graph, gqa=o.gqa, head_dim=o.head_dim
        )
    try:
        check_against(given, base)
    except PlanError as e:
        raise PlanError(f"{e}; the plan is not the planner's plan of this model as it is now") from e


def build_axis_graph(
    model: nn.Module, example_inputs: Inputs, *, train_graph: bool = True, gqa: str = "kv_groups", head_dim: bool = False
) -> AxisGraph:
    """The axis graph of the eval forward, plus the train forward and the other grad mode's
    where they differ (graphs from ``torch.export`` trace the eval forward only)."""
    return _axis_graph(model, example_inputs, train_graph=train_graph, gqa=gqa, head_dim=head_dim)[0]


def _axis_graph(
    model: nn.Module, example_inputs: Inputs, *, train_graph: bool, gqa: str, head_dim: bool
) -> tuple[AxisGraph, fx.Graph]:
    """``build_axis_graph``'s graph and the eval trace it was built from."""
    graph = AxisGraph(divert_repeats=gqa == "query_heads", head_dim=head_dim)
    try:
        gm = trace_graph(model, example_inputs, train=False, verify=True)  # the graph computes the forward's output
    except TraceError as e:
        if model._forward_pre_hooks:
            raise TraceError(f"{e} (forward pre-hooks of the model itself do not run while it is traced)") from e
        raise
    add_traced_graph(graph, gm, model)

    def structure(mode: Mode) -> fx.Graph:  # the ops alone: shapes only where they differ from the first's
        return trace_graph(model, example_inputs, train=mode.train, shapes=False, autograd=mode.autograd)

    for mode, other in traced_modes(model, gm, structure) if train_graph else ():
        if _calls(other) != _calls(gm):
            other = trace_graph(model, example_inputs, train=mode.train, autograd=mode.autograd)
            add_traced_graph(graph, other, model, prefix=mode.prefix)
    pin_model_hooks(graph, model)
    drop_partial_scales(graph)
    add_factor_shadows(graph)
    return graph, gm


def _calls(graph: fx.Graph) -> list[tuple[str, str, str]]:
    """The ops, what the graph returns (``if self.training: return y, g``: a feature more) and
    the model tensors it wrote into others past the graph (an EMA update in training only; a
    batch norm's own counter is no such write)."""
    return [(n.op, str(n.target), str((n.args, n.meta.get(HIDDEN_SOURCES))) if n.op == "output" else "") for n in graph.nodes]


def resolve_groups(graph: AxisGraph) -> list[Group]:
    """Connected components of the axis graph -> channel groups, one per signature."""
    return resolve(graph)[0]


def resolve(graph: AxisGraph) -> tuple[list[Group], list[Tie]]:
    """Connected components of the axis graph -> channel groups, one per signature, and the
    count ties between them (query heads per key/value group, experts of a stacked tensor)."""
    targets = _divert_repeats(graph)
    found: list[tuple[tuple[int, int], Group, list[list[int]]]] = []
    ungrouped: dict[tuple[str, str], str] = {}  # attributes sizing an axis no group shrinks -> that axis
    for component in graph.components():
        nodes = sorted(component)
        if not any(n[0] == "p" for n in nodes) or all(graph.size(n) <= 1 for n in nodes):
            for n in nodes:
                for src in graph.size_refs.get(n, ()):
                    if src.attr:
                        ungrouped.setdefault((src.owner, src.attr), f"axis {n[2]} of node {n[1]}")
            continue
        for ch in channel_signatures(graph, nodes, targets):
            found.append(_tied_group(graph, nodes, ch, targets))
    found.sort(key=lambda x: x[0])
    names: dict[str, int] = defaultdict(int)
    groups, ties = [], []
    for _, g, parts in found:
        names[g.name] += 1
        g = g if names[g.name] == 1 else g.model_copy(update={"name": f"{g.name}#{names[g.name]}"})
        groups.append(g)
        if g.prunable and len(parts) > 1:
            reason = "gqa='query_heads': every key/value group keeps as many query heads"
            ties.append(Tie(parts=[TiePart(group=g.name, channels=p) for p in parts], reason=reason))
    groups, expert_ties = split_experts(graph, groups)
    groups, scale_ties = tie_shared_scales(groups)
    ties += scale_ties
    if not graph.exported:  # export's literals match attributes by value only: the export probe decides there
        # an attribute a pinned group, or an axis of no group, holds cannot change
        groups = pin_shared_sizes(pin_untied_sizes(groups), ungrouped)
    # one config count read by every layer; one module attribute the code read for several groups (torch.fx)
    return groups, ties + expert_ties + shared_size_ties(groups, graph.bounds, exported=graph.exported)


def _divert_repeats(graph: AxisGraph) -> dict[AxisId, np.ndarray]:
    """``gqa="query_heads"``: the source of every diverted repeat link (key/value heads) is
    kept; each target index's part is the source index it copies."""
    targets: dict[AxisId, np.ndarray] = {}
    for a, b, ia, ib in graph.repeats:
        graph.pin(a, "gqa='query_heads': key/value heads are kept, query heads are pruned within each group")
        part = np.full(graph.size(b), -1, dtype=np.int64)
        part[ib] = ia
        targets[b] = part
    return targets


def _tied_group(
    graph: AxisGraph, nodes: list[AxisId], ch: Channels, targets: dict[AxisId, np.ndarray]
) -> tuple[tuple[int, int], Group, list[list[int]]]:
    """``_group``, plus the parts of its channels a repeat target splits them into (each
    part: the channels copying one source index); a group whose channels do not split into
    equal parts that way is pinned."""
    key, group, perm = _group(graph, nodes, ch)
    hits = [i for i in (ch.at or {}) if nodes[i] in targets]
    if not hits:
        return key, group, []
    i = hits[0]
    at = ch.at[i][perm]  # type: ignore[index]
    part = np.where(at >= 0, targets[nodes[i]][np.maximum(at, 0)], -1)
    labels = sorted(set(part.tolist()))
    parts = [np.flatnonzero(part == p).tolist() for p in labels]
    factors = graph.repeat_factors.get(nodes[i], [])
    if -1 in labels or len({len(p) for p in parts}) > 1:
        reason = "query heads do not split evenly into key/value groups"
    elif any(not graph.size_refs.get(f) for f in factors):  # ``expand(-1, -1, 2, ...)``: a literal count per group
        reason = "a literal number of query heads per key/value group"
    else:
        reason = ""
    if reason:
        update = {"prunable": False, "reason": group.reason or f"gqa='query_heads': {reason}"}
        return key, group.model_copy(update=update), []
    sizes = list(group.sizes)
    for f in factors:
        for src in sorted(graph.size_refs.get(f, ()), key=str):
            uses = [f"{f[1]}:{f[2]}"] if f[0] == "v" and ":" not in f[1] else []
            sizes.append(SizeRef(owner=src.owner, attr=src.attr, per_channel=1, every=len(parts), uses=uses))
    return key, group.model_copy(update={"sizes": sizes}), parts


def _group(graph: AxisGraph, nodes: list[AxisId], ch: Channels) -> tuple[tuple[int, int], Group, np.ndarray]:
    """Members of one channel signature, channels ordered along the primary member (and that
    order, as a permutation of ``ch``'s channels)."""
    occurrences: dict[int, list[int]] = defaultdict(list)  # node -> columns in positions
    for col, n in enumerate(ch.params):
        occurrences[n].append(col)
    order_of = lambda n: (graph.order[nodes[n][1]], nodes[n][2])  # noqa: E731
    rows = [n for n in occurrences if nodes[n][2] == 0 and graph.ndim[nodes[n][1]] > 1]
    producers = rows or [n for n in occurrences if nodes[n][2] == 0] or list(occurrences)
    primary = min(producers, key=order_of)
    listed = sorted(occurrences, key=lambda n: (n != primary, order_of(n)))
    if ch.positions is None:  # identity links only: every member owns its whole axis, in order
        size, first, perm = ch.size, 0, np.arange(ch.size)
        members = [_member(nodes[n], 0, size, 1, None, 1) for n in listed]
    else:
        size, first, perm, members = _slot_members(nodes, np.asarray(ch.positions, dtype=np.int64), occurrences, primary, listed)
    sizes, uneven = _size_refs(graph, nodes, ch, size) if graph.size_refs else ([], None)
    scales, follows, split = head_dim_parts(graph, nodes, ch.counts, perm) if graph.scales or graph.follows else ([], [], None)
    uneven = uneven or split
    as_number = _size_used_as_number(graph, sizes) if graph.numbers and sizes else None
    prunable = ch.pin is None and ch.produced and uneven is None
    reason = ch.pin or uneven if ch.pin is not None or uneven or ch.produced else "no parameter produces these channels"
    odd = next((m for m in members if m.indices is not None and strided_layout(m.positions()) is None), None)
    if odd is not None and prunable:
        prunable, reason = False, f"channel order of {odd.param} axis {odd.axis} is not a strided view"
    floor = min_keep(graph, nodes, ch, size) if graph.floors and prunable else None
    if floor is not None and floor[0] >= size:
        prunable, reason, floor = False, f"{floor[1]} needs all {size} channels", None
    param, axis = nodes[primary][1], nodes[primary][2]
    module, _, attr = param.rpartition(".")
    name = f"{module}:{'out' if axis == 0 else 'in'}" if attr == "weight" and axis < 2 else f"{param}:{axis}"
    name += ":head_dim" if len(nodes[primary]) > 3 else ""  # a shadow: the head size inside the rows
    group = constructed(  # built from a consistent graph: validation is the loader's job
        Group,
        name=name,
        size=size,
        prunable=prunable,
        reason=reason,
        zero_invariant=ch.mix is None and as_number is None,
        members=members,
        sizes=sizes,
        scales=scales,
        follows=follows,
        ratio=None,
        keep=None,
        min_keep=None if floor is None else floor[0],
        min_keep_reason=None if floor is None else floor[1],
    )
    return (order_of(primary)[0], first), group, perm


def _slot_members(
    nodes: list[AxisId], pos: np.ndarray, occurrences: dict[int, list[int]], primary: int, listed: list[int]
) -> tuple[int, int, np.ndarray, list[Member]]:
    """Channels (rows of ``pos``, columns: occurrences) ordered along the primary member: their
    count, the primary's first position, that order (a permutation of the rows) and the members."""
    perm = np.argsort(pos[:, occurrences[primary][0]], kind="stable")
    pos = pos[perm]
    # Per column: first and last position, and whether the column is a contiguous range.
    lo, hi = pos.min(0), pos.max(0)
    contiguous = (pos - lo == np.arange(len(pos))[:, None]).all(0)
    members = []
    for n in listed:
        cols = occurrences[n]
        if len(cols) == 1 and contiguous[cols[0]]:  # the common case, without per-member numpy work
            c = cols[0]
            members.append(_member(nodes[n], int(lo[c]), int(hi[c]) + 1, 1, None, 1))
        else:
            members += _members(nodes[n], pos[:, cols])
    return len(pos), int(pos[0, occurrences[primary][0]]), perm, members


def _size_refs(graph: AxisGraph, nodes: list[AxisId], ch: Channels, channels: int) -> tuple[list[SizeRef], str | None]:
    """The size attributes that count these channels: an attribute shaping an axis changes by
    the axis's indices per channel for every channel removed (None if it counts them unevenly)."""
    per: dict[tuple[str, str], int] = {}
    uses: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i, n in enumerate(nodes):
        sources = graph.size_refs.get(n)
        if not sources:
            continue
        counts = np.ones(channels, dtype=np.int64) if ch.counts is None else ch.counts.get(i)
        if counts is None or not counts.any():
            continue
        if (counts != counts[0]).any():
            return [], f"size attribute {sorted(sources, key=str)[0].attr} counts these channels unevenly"
        for src in sources:
            if not src.attr:  # a layer that resizes itself
                continue
            key = (src.owner, src.attr)
            if per.setdefault(key, int(counts[0])) != int(counts[0]):
                return [], f"size attribute {src.owner}.{src.attr} counts these channels unevenly"
            if n[0] == "v" and ":" not in n[1]:  # an activation of the eval trace
                uses[key].add(f"{n[1]}:{n[2]}")
    refs = [SizeRef(owner=o, attr=a, per_channel=c, uses=sorted(uses[(o, a)])) for (o, a), c in sorted(per.items())]
    return refs, None


def _size_used_as_number(graph: AxisGraph, refs: list[SizeRef]) -> str | None:
    """A size attribute whose value also scales a tensor inside its owner (``y / self.num_heads``):
    rewriting it changes what the model computes, so its channels are not zero-invariant."""
    for ref in refs:
        value = graph.size_values.get(SizeSource(ref.owner, ref.attr))
        for n, node in graph.numbers:
            inside = ref.owner in ("", "config") or ref.owner in module_stack(node)
            if n == value and inside:
                return f"size attribute {ref.owner or 'model'}.{ref.attr} = {n} is used as a value at node {node.name}"
    return None


def _members(node: AxisId, p: np.ndarray) -> list[Member]:
    """Columns of ``p`` (channels x occurrences) -> members; each run of columns that are
    consecutive positions in every channel becomes one member of that block size (a head's
    rows; GPT-2's fused q|k|v gives three), when the run starts on a block boundary."""
    breaks = [0, *(np.flatnonzero((np.diff(p, axis=1) != 1).any(0)) + 1).tolist(), p.shape[1]]
    runs: list[tuple[np.ndarray, int]] = []
    for a, b in zip(breaks, breaks[1:]):
        block = b - a
        if block > 1 and not (p[:, a] % block).any():
            runs.append((p[:, a] // block, block))
        else:
            runs += [(p[:, r], 1) for r in range(a, b)]
    out = []
    for q, block in runs:
        lo = int(q.min())
        rel = q - lo
        contiguous = np.array_equal(rel, np.arange(len(q)))
        layout = None if contiguous else strided_layout(q.tolist())
        indices = None if contiguous else rel.tolist()
        out.append(_member(node, lo * block, (int(q.max()) + 1) * block, block, indices, len(layout.sizes) if layout else 1))
    return out


def _member(node: AxisId, start: int, stop: int, block: int, indices: list[int] | None, channel_axes: int) -> Member:
    return constructed(  # consistent by construction: validation is the loader's job
        Member,
        param=node[1],
        axis=node[2],
        start=start,
        stop=stop,
        block=block,
        indices=indices,
        order=view_order(channel_axes),
        fix=None,
        factor=FACTOR if len(node) > 3 else 0,
    )
