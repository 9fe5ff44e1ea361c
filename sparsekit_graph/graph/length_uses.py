"""Fail closed on axis lengths that size something no rule ties to their axis.

``h.topk(h.shape[1] // 2, 1)``, ``h.new_zeros(B, C // 2, H, W)``, ``F.pad(h, (0, C // 4))``,
``F.adaptive_avg_pool2d(h, C // 2)``: a length read off an axis (under torch.fx a graph node),
possibly turned into another number, reaches an argument that shapes the op's result. When the
axis loses channels the length changes and so does the result's shape, which only works where
the rules linked the shaped axis to the read one (``view(B, C, -1)``, a channel shuffle's
``view(B, g, C // g, H, W)``, ``k.reshape(B * h, n, d)`` with ``B, h`` read off ``q`` whose heads
``bmm`` joins to ``k``'s) through whole axes: a part of an axis (an ``offset`` link of cat, slice
or pad: ``cat([h, h.new_zeros(B, C // 2, H, W)], 1)``) does not make the shaped length follow
the read one. This pass runs after every rule, follows each read through the
numbers computed from it, and for every tensor op that takes one:

- a number used as a value (``h * C``, ``fill_value``, the data of ``torch.tensor(C)``): left to
  ``axis_lengths`` (it costs the axis its zero-invariance);
- an argument a rule declared it models (``register_length_args``: conv's ``groups``), or a
  length it declared it follows (``RuleContext.model_length``: ``t[:, : n // 2]``): trusted;
- a size list (``size``, ``shape``, ``sizes``, ``normalized_shape``, ``output_size``): each
  position shapes one output axis (the trailing ones, or from ``dim`` for ``unflatten``); the
  read axis must be connected to that axis by links other than ``offset``, else it is pinned;
- any other argument (``k``, ``kernel_size``, ``stride``, ``pad``, an index): pinned.

The reason names the node, so the pin is traceable to the line that made it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .axes import AxisGraph, AxisId
from .meta import META, SIZE_READS, ReadInt
from .normalize import normalize
from .ops_sizes import length_args
from .tensor_data import DATA_OPS

__all__ = ["pin_unmodelled_lengths", "read_axis"]

Lineage = frozenset | tuple  # the axes a number depends on, or one such set per element of a size tuple

_READS = (torch.Tensor.size, torch.Tensor.shape, torch.numel)
# Arguments where a number is an operand, not a size: ``axis_lengths`` judges those uses.
_VALUE_ARGS = frozenset(
    {"input", "other", "exponent", "alpha", "beta", "value", "fill_value", "scalar", "min", "max", "scale", "data",
     "weight", "eps", "p"}
)  # fmt: skip
# Arguments listing sizes, one output axis per position.
_SIZE_LISTS = frozenset({"size", "shape", "sizes", "normalized_shape", "output_size"})


def pin_unmodelled_lengths(
    graph: AxisGraph,
    nodes: Iterable[fx.Node],
    axes_of: Callable[[fx.Node], list[AxisId] | None],
) -> None:
    """Pin every axis whose length shapes an op's result in a way no rule linked back to it.

    Args:
        graph: The axis graph, every rule applied.
        nodes: The traced nodes, in graph order.
        axes_of: The axes of a tensor-valued node (``RuleContext.axes``), None otherwise.
    """
    lineage: dict[fx.Node, Lineage] = {}
    uses: list[fx.Node] = []
    for node in nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        if node.op != "call_module" and (read := _read(node, axes_of)) is not None:
            lineage[node] = read
            continue
        carried = any(n in lineage for n in node.all_input_nodes)
        if not carried:
            continue
        value = node.meta.get(META)
        if _has_tensor(value):
            uses.append(node)
        elif node.op != "call_module":
            try:
                lineage[node] = _derive(node, value, lineage)
            except Exception:  # noqa: BLE001 - an unreadable computation depends on everything it took
                lineage[node] = _union((node.args, node.kwargs), lineage)
    if not uses:
        return
    joined = _Joined()
    for a, b, kind in graph.links():
        if kind != "offset":  # a part of an axis (cat, slice, pad) does not follow its length
            joined.union(a, b)
    for user in uses:
        try:
            _check(graph, user, lineage, joined, axes_of)
        except Exception as e:  # noqa: BLE001 - what cannot be judged fails closed
            why = f"the length of this axis reaches node {user.name}, which could not be judged ({type(e).__name__})"
            for a in _union((user.args, user.kwargs), lineage):
                _pin(graph, a, why)


def read_axis(node: fx.Node, axes_of: Callable[[fx.Node], list[AxisId] | None]) -> AxisId | None:
    """The axis whose length ``node`` is, as read in forward (``h.size(1)``, ``h.shape[1]``);
    None for anything else (arithmetic on lengths included)."""
    read = _read(node, axes_of)
    call = normalize(node)
    if read is None and call.op is operator.getitem and isinstance(src := call.args.get("input"), fx.Node):
        shape = _read(src, axes_of)
        read = _derive(node, node.meta.get(META), {src: shape}) if isinstance(shape, tuple) else None
    return next(iter(read)) if isinstance(read, frozenset) and len(read) == 1 and call.op is not torch.numel else None


def _read(node: fx.Node, axes_of: Callable[[fx.Node], list[AxisId] | None]) -> Lineage | None:
    """The lineage of a length read (``h.size(1)``, ``h.shape``, ``h.numel()``), else None."""
    call = normalize(node)
    if call.op not in _READS:
        return None
    src = call.args.get("input")
    axes = axes_of(src) if isinstance(src, fx.Node) else None
    if not axes:
        return None
    dim = call.args.get("dim")
    if call.op is torch.numel:
        return frozenset(axes)
    if isinstance(dim, int) and -len(axes) <= dim < len(axes):
        return frozenset({axes[dim]})
    if dim is None:
        return tuple(frozenset({a}) for a in axes)
    return frozenset(axes)


def _derive(node: fx.Node, value: Any, lineage: dict[fx.Node, Lineage]) -> Lineage:
    """The lineage of a number (or size tuple) computed from carried ones."""
    call = normalize(node)
    src = call.args.get("input")
    if call.op is operator.getitem and isinstance(src, fx.Node) and isinstance(lineage.get(src), tuple):
        parts = lineage[src]
        index = call.args.get("index")
        if isinstance(index, int) and -len(parts) <= index < len(parts):
            return parts[index]
        if isinstance(index, slice):
            return parts[index]
    if call.op is operator.add and isinstance(value, tuple):  # ``h.shape[:2] + (4, -1)``
        a, b = _positions(src, lineage, set()), _positions(call.args.get("other"), lineage, set())
        if a is not None and b is not None and len(a) + len(b) == len(value):
            return a + b
    rest = _numel_part(node, lineage) if call.op is operator.floordiv else None
    if rest is not None:
        return rest
    every = _union(node.args, lineage) | _union(node.kwargs, lineage)
    if isinstance(value, (tuple, list)):
        return tuple(every for _ in value)
    return every


def _numel_part(node: fx.Node, lineage: dict[fx.Node, Lineage]) -> frozenset | None:
    """The axes ``h.numel() // (b * c)`` depends on, ``b`` and ``c`` lengths read off distinct
    axes of ``h`` (times positive literals; or ``h.numel() // b // c``): those of ``h``'s other
    lengths, whose product it is (over the literals) whatever ``b`` and ``c`` become. None for
    anything else."""
    call = normalize(node)
    whole = lineage.get(node)
    if call.op is torch.numel:
        return whole if isinstance(whole, frozenset) else None
    src = call.args.get("input")
    if call.op is not operator.floordiv or not isinstance(src, fx.Node):
        return None
    part = _numel_part(src, lineage)
    return None if part is None else _over_lengths(part, call.args.get("other"), lineage)


def _over_lengths(whole: frozenset, divisor: Any, lineage: dict[fx.Node, Lineage]) -> frozenset | None:
    """``whole`` less the axes whose lengths ``divisor`` multiplies, each once; None if it is no such product."""
    read: list[AxisId] = []
    todo = [divisor]
    while todo:
        f = todo.pop()
        if isinstance(f, int) and not isinstance(f, bool) and f > 0:
            continue
        if not isinstance(f, fx.Node):
            return None
        call = normalize(f)
        if call.op is operator.mul:
            todo += [call.args.get("input"), call.args.get("other")]
            continue
        if not _one_length(f):
            return None
        read += list(lineage.get(f) or ())
    if len(set(read)) != len(read) or not set(read) <= whole:
        return None
    return whole - set(read)


def _one_length(n: fx.Node) -> bool:
    """Is ``n`` one axis's length as read: ``h.size(d)`` or ``h.shape[d]`` / ``h.size()[d]``?"""
    call = normalize(n)
    if call.op is torch.Tensor.size and isinstance(call.args.get("dim"), int):
        return True
    src = call.args.get("input")
    if call.op is not operator.getitem or not isinstance(call.args.get("index"), int) or not isinstance(src, fx.Node):
        return False
    whole = normalize(src)
    return whole.op in (torch.Tensor.size, torch.Tensor.shape) and whole.args.get("dim") is None


def _positions(v: Any, lineage: dict[fx.Node, Lineage], skip: set[fx.Node]) -> tuple | None:
    """Per-element lineage of a size list argument (a tuple node or a literal list), but of
    the numbers in ``skip`` (which a rule follows)."""
    if isinstance(v, fx.Node):
        lin = lineage.get(v)
        if isinstance(lin, tuple):
            return lin
        if lin is not None:
            return (lin,)
        return None if not isinstance(v.meta.get(META), (tuple, list)) else tuple(frozenset() for _ in v.meta[META])
    if isinstance(v, (tuple, list)):
        return tuple(_union(e, lineage, skip) for e in v)
    return (frozenset(),)


def _union(v: Any, lineage: dict[fx.Node, Lineage], skip: set[fx.Node] | None = None) -> frozenset:
    """Every axis the numbers in ``v`` depend on (but those of ``skip``, which a rule follows)."""
    found: set[AxisId] = set()

    def visit(n: fx.Node) -> fx.Node:
        lin = lineage.get(n) if not skip or n not in skip else None
        if isinstance(lin, tuple):
            for part in lin:
                found.update(part)
        elif lin is not None:
            found.update(lin)
        return n

    fx.node.map_arg(v, visit)
    return frozenset(found)


def _check(
    graph: AxisGraph,
    user: fx.Node,
    lineage: dict[fx.Node, Lineage],
    joined: _Joined,
    axes_of: Callable[[fx.Node], list[AxisId] | None],
) -> None:
    """Pin the read axes ``user``'s arguments carry where nothing ties them to what they shape."""
    call = normalize(user)
    if call.op in DATA_OPS:  # ``torch.tensor(C)``: the length is data, judged by ``axis_lengths``
        return
    out = user.meta.get(META)
    out_axes = axes_of(user) if isinstance(out, Tensor) else None
    modelled = length_args(call.op)
    source = call.args.get("input")
    in_axes = (axes_of(source) or []) if isinstance(source, fx.Node) else []
    for k, v in call.args.items():
        if k in _VALUE_ARGS or k in modelled:
            continue
        followed = {n for u, n in graph.modelled_lengths if u is user}
        carried = _union(v, lineage, followed)
        if not carried:
            continue
        if k in _SIZE_LISTS and out_axes is not None:
            parts = _used_positions(call.op, k, _positions(v, lineage, followed) or (), len(out_axes))
            dim = call.args.get("dim") if k == "sizes" else None  # unflatten's: an axis of the input
            rank_in = len(out_axes) - len(parts) + 1
            start = dim % rank_in if isinstance(dim, int) and rank_in > 0 else len(out_axes) - len(parts)
            for i, part in enumerate(parts):
                j = start + i
                shaped = out_axes[j] if 0 <= j < len(out_axes) else None
                loose = [a for a in part if shaped is None or not joined.same(a, shaped)]
                for a in loose:
                    _pin(graph, a, f"the length of this axis sizes argument {k} of node {user.name}, and nothing links them")
                # a loose read's length, or a literal multiple of it (``4 * C``), the shaped axis keeps,
                # as the read's pin keeps it: it cannot lose channels either (``y.expand(x.shape)``,
                # ``F.layer_norm(y, (C,))`` with ``C`` read off ``x``); a view's sizes, or a multiple
                # by a size attribute surgery rewrites (``b * self.num_heads``), are the factors' rules
                size = math.prod(graph.size(a) for a in loose)
                exact = graph.size(shaped) == size or not _reads_attribute(v) if shaped is not None else False
                regroups = _reshapes(call.op) and any(joined.same(a, i) for a in loose for i in in_axes)
                alone = exact and set(loose) == set(part) and not regroups
                if loose and shaped is not None and (alone or graph.size(shaped) % size):
                    why = f"this axis of node {user.name} is as long as argument {k}, made from a length nothing links it to"
                    _pin(graph, shaped, why)
            continue
        for a in carried:
            _pin(graph, a, f"the length of this axis reaches argument {k} of node {user.name}, which no rule models")


def _reads_attribute(v: Any) -> bool:
    """Was a number in ``v`` made with a size attribute's read (``b * self.num_heads``)?"""
    seen: set[fx.Node] = set()
    found = False

    def visit(a: Any) -> Any:
        nonlocal found
        if isinstance(a, ReadInt):
            found = True
        elif isinstance(a, fx.Node) and a not in seen and not isinstance(a.meta.get(META), Tensor):
            seen.add(a)
            found = found or bool(a.meta.get(SIZE_READS))
            fx.node.map_aggregate((a.args, a.kwargs), visit)
        return a

    fx.node.map_aggregate(v, visit)
    return found


def _reshapes(op: object) -> bool:
    """A view or reshape: its sizes regroup the input's axes, whose links the factor rules make."""
    return getattr(op, "__name__", "").split(".")[0] in ("view", "reshape", "unflatten", "_unsafe_view")


# A transposed conv's ``output_size`` may name the batch and channel lengths too; torch drops
# them (``_ConvTransposeNd._output_padding``) and reads only the spatial ones.
_SPATIAL_DIMS = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def _used_positions(op: object, arg: str, parts: tuple, out_rank: int) -> tuple:
    """The entries of size list ``arg`` that ``op`` reads (all but what it drops unread)."""
    if arg == "output_size" and isinstance(op, type):
        spatial = next((n for cls, n in _SPATIAL_DIMS.items() if issubclass(op, cls)), None)
        if spatial is not None and len(parts) == out_rank > spatial:
            return parts[len(parts) - spatial :]
    return parts


def _pin(graph: AxisGraph, axis: AxisId, reason: str) -> None:
    if graph.size(axis) > 1 and not graph.nodes[axis]["pins"]:
        graph.pin(axis, reason)
        graph.mix(axis, reason)


class _Joined:
    """Union-find over axes: which are connected by the links seen so far."""

    def __init__(self) -> None:
        self._up: dict[AxisId, AxisId] = {}

    def find(self, a: AxisId) -> AxisId:
        root = a
        while (up := self._up.get(root, root)) != root:
            root = up
        while a != root:  # path compression
            a, self._up[a] = self._up.get(a, a), root
        return root

    def union(self, a: AxisId, b: AxisId) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._up[ra] = rb

    def same(self, a: AxisId, b: AxisId) -> bool:
        return a == b or self.find(a) == self.find(b)


def _has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)
