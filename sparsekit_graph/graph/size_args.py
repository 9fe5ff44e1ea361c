"""Size arguments of reshapes and fresh tensors: which of their numbers follow the model.

A size may be read off a tensor's axis (``x.size(2)``, ``x.shape``: that axis's length), be a
literal made from a layer's size attribute (``made_from``: surgery rewrites the attribute), or
be computed in the graph from such numbers. A product (``b * self.num_heads``) is split into
its factors (``product_terms``): the reads and attributes follow the model, the literals the
code wrote (``b * 4``) do not, and ``literal_dims`` says which input axes such a literal sizes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from .axes import AxisGraph, AxisId
from .context import RuleContext
from .meta import MODULE_READS
from .normalize import normalize
from .sizes import SizeSource, read_sites, size_sources

__all__ = [
    "counted_alike", "link_lengths", "link_read_lengths", "literal_dims", "made_from", "product_follows", "product_terms",
    "read_axis", "size_element", "size_elements",
]  # fmt: skip


def made_from(node: fx.Node, value: int, sources: list[SizeSource]) -> bool:
    """Where the model's reads of its layers' sizes were recorded (``size_reads``, torch.fx),
    did the code compute the literal ``value`` at ``node`` from one of ``sources`` (a hard-coded
    ``reshape(B, L, 24)`` beside ``num_heads * head_dim == 24`` does not follow the heads)?
    True where nothing was recorded for their owners (torch.export, other modules)."""
    out = next((n for n in reversed(node.graph.nodes) if n.op == "output"), None)
    recorded = out.meta.get(MODULE_READS) if out is not None else None
    if not recorded or all(s.owner not in recorded for s in sources):
        return True
    sites = read_sites(node, value)
    return any((s.owner, s.attr) in sites for s in sources)


def product_terms(ctx: RuleContext, x: Any) -> tuple[list[Any], int] | None:
    """``x`` as a product computed in the graph (``b * 4``, ``4 * b * n``, ``b *
    self.num_heads``): its factors that follow the model (nodes, and ints made from a size
    attribute: ``made_from``) and the product of the literals the code wrote. None where ``x``
    is no product of numbers."""
    if not isinstance(x, fx.Node) or x.op != "call_function" or normalize(x).op is not operator.mul:
        return None
    terms: list[Any] = []
    literal = 1
    for a in (normalize(x).args.get("input"), normalize(x).args.get("other")):
        inner = product_terms(ctx, a)
        if inner is not None:
            terms += inner[0]
            literal *= inner[1]
        elif isinstance(a, fx.Node):
            terms.append(a)
        elif isinstance(a, int) and not isinstance(a, bool):
            sources = size_sources(x, a, ctx.modules)
            if sources and made_from(x, a, sources):
                terms.append(a)
            else:
                literal *= a
        else:
            return None
    return terms, literal


def product_follows(ctx: RuleContext, size: object) -> bool:
    """Is ``size`` a product computed in the graph whose every factor follows the model: a read
    of an axis (``b`` of ``b, n, _ = x.shape``) or an int made from a size attribute
    (``self.num_heads``)? A literal the code wrote (``b * 4``) or any other number (``n // 2``)
    among them: no (``torch.zeros(b * self.num_heads, n, n)`` follows, ``torch.zeros(b * 4, n, n)``
    does not)."""
    found = product_terms(ctx, size)
    if found is None or found[1] != 1:
        return False
    return all(isinstance(t, int) or read_axis(ctx, t) is not None for t in found[0])


def literal_dims(ctx: RuleContext, size: fx.Node, dims: Sequence[int]) -> list[int] | None:
    """The input axes among ``dims`` (the non-unit axes a reshape merges into the output axis
    ``size`` shapes) that a literal factor of the computed ``size`` sizes: ``q.reshape(b * 4,
    n, d)`` reads the batch, so the 4 sizes the heads. Empty where ``size`` holds no literal
    above 1 (or is no product); None where the literal cannot be placed (the whole output axis
    is then a constant): no factor is a read of one of ``dims`` whose rest is that literal."""
    found = product_terms(ctx, size)
    if found is None or found[1] == 1:
        return []
    terms, literal = found
    src = ctx.axes(ctx.input) or []
    read = [read_axis(ctx, t) for t in terms if not isinstance(t, int)]
    if None in read:  # a number computed otherwise (``(n // 2) * 4``): nothing says what it follows
        return None
    covered = {d for d in dims if any(src[d] in ctx.graph.identity_linked(a) for a in read)}
    rest = [d for d in dims if d not in covered]
    followed = math.prod(t for t in terms if isinstance(t, int))  # with the literal: the rest (both pin)
    return rest if rest and math.prod(ctx.graph.size(src[d]) for d in rest) == literal * followed else None


def link_read_lengths(ctx: RuleContext, sizes: object, out: list) -> None:
    """A size read off a tensor's axis (``x.size(2)``, ``x.shape``, ``view_as(x)``) makes the
    output axis as long as that axis: they are one channel space (timm's ``reshape(B, N, C)``
    of attention heads by the input's width ties the heads' width to the residual stream).
    Where the op's own links already carry the read axis's channels to the output axis with
    their count (a channel shuffle's closing ``view(b, c, H, W)`` of ``c = h.shape[1]``: the
    same channels, permuted), the lengths follow each other and no identity is added (it
    would tie each channel to its shuffled copy: one block of all of them). Call it after
    the op's other links."""
    if isinstance(sizes, fx.Node) and isinstance(ctx.meta(sizes), Tensor):  # view_as / reshape_as
        read: list = list(ctx.axes(sizes) or [])
    elif isinstance(sizes, (tuple, list)):
        read = [read_axis(ctx, s) for s in sizes]
    else:
        read = _read_axes(ctx, sizes) or []
    link_lengths(ctx, read, out)


def link_lengths(ctx: RuleContext, read: Sequence[AxisId | None], out: Sequence[AxisId]) -> None:
    """Link each output axis to the axis its length was read off (``read``, None where none
    was), as ``link_read_lengths`` does; ``fresh_sizes.read_axes`` gives them under torch.export."""
    for a, o in zip(read, out):
        if a is not None and ctx.graph.size(a) == ctx.graph.size(o) > 1 and not counted_alike(ctx.graph, a, o):
            ctx.graph.link(a, o)


# Links whose index maps are whole and uniform: every index of the smaller axis moves with as
# many of the larger one, so two axes of one length joined by them keep equal counts whatever
# is pruned (not ``offset``: a part of an axis; not ``repeat``: copies an expand broadcast).
_COUNTED = frozenset({"identity", "permute", "block", "tie"})


def counted_alike(graph: AxisGraph, a: AxisId, b: AxisId) -> bool:
    """Are ``a`` and ``b`` joined by ``_COUNTED`` links alone (so, being of one length, they
    keep one count)? Searched from both ends at once: the cost is the smaller side's."""
    if a == b:
        return True
    seen = ({a}, {b})
    todo: tuple[list[AxisId], list[AxisId]] = ([a], [b])
    while todo[0] and todo[1]:
        side = 0 if len(todo[0]) <= len(todo[1]) else 1
        x = todo[side].pop()
        for y, ds in graph.adj[x].items():
            if y in seen[side] or not any(d["kind"] in _COUNTED for d in ds):
                continue
            if y in seen[1 - side]:
                return True
            seen[side].add(y)
            todo[side].append(y)
    return False


def _read_axes(ctx: RuleContext, x: object) -> list | None:
    """Axes of ``t`` for ``t.shape`` / ``t.size()`` (and ``t.shape[:2]``: those axes); a
    concatenation with numbers (``t.size()[:-2] + (16,)``) has None where a number stands."""
    if isinstance(x, (tuple, list)):
        return [None] * len(x)
    if not isinstance(x, fx.Node) or x.op not in ("call_function", "call_method"):
        return None
    if x.op == "call_function" and x.target is operator.add and _is_sizes(ctx, x):
        parts = [_read_axes(ctx, a) for a in x.args]
        return None if any(p is None for p in parts) else [a for p in parts for a in p]
    call = normalize(x)
    if call.op in (torch.Tensor.shape, torch.Tensor.size) and call.args.get("dim") is None:
        return ctx.axes(call.args.get("input"))
    if call.op is operator.getitem and isinstance(call.args.get("index"), slice):
        axes = _read_axes(ctx, call.args.get("input"))
        return axes[call.args["index"]] if axes is not None else None
    return None


def read_axis(ctx: RuleContext, x: object) -> tuple | None:
    """The axis whose length ``x`` is: ``t.size(d)``, ``t.shape[d]``, ``aten.sym_size(t, d)``,
    ``t.numel()`` of a tensor with one axis longer than 1 (``self.g.bias.numel()``)."""
    if not isinstance(x, fx.Node) or x.op not in ("call_function", "call_method"):
        return None
    call = normalize(x)
    if call.op is torch.numel:
        long = [a for a in ctx.axes(call.args.get("input")) or [] if ctx.graph.size(a) > 1]
        return long[0] if len(long) == 1 else None
    if call.op is torch.Tensor.size and isinstance(call.args.get("dim"), int):
        axes = ctx.axes(call.args.get("input"))
        return axes[call.args["dim"]] if axes else None
    if call.op is operator.getitem and isinstance(call.args.get("index"), int):
        axes = _read_axes(ctx, call.args.get("input"))
        return axes[call.args["index"]] if axes and -len(axes) <= call.args["index"] < len(axes) else None
    return None


def _is_sizes(ctx: RuleContext, x: fx.Node) -> bool:
    """Is ``x``'s traced value a tuple of sizes (``torch.Size``, a tuple of ints)?"""
    return isinstance(ctx.meta(x), tuple) and len(x.args) == 2


def size_elements(ctx: RuleContext, seq: object) -> list | None:
    """The sizes of a size tuple ``seq``: the numbers (and nodes) the code wrote, None where
    one is read off a tensor (``h.size()[:-2] + (16,)``: ``[None, None, 16]``); None where
    ``seq`` is no such tuple."""
    if isinstance(seq, (tuple, list)):
        return list(seq)
    if isinstance(seq, fx.Node) and seq.op == "call_function" and seq.target is operator.add and _is_sizes(ctx, seq):
        parts = [size_elements(ctx, a) for a in seq.args]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]  # type: ignore[union-attr]
    axes = _read_axes(ctx, seq)
    return None if axes is None else [None] * len(axes)


def size_element(ctx: RuleContext, x: object) -> object:
    """``x`` with the tuple arithmetic of a size expression undone: in
    ``view(*(h.size()[:-2] + (self.all_head_size,)))`` the last size is the number the code
    wrote (a literal like any other: it follows a size attribute or pins), not a node computed
    from a read of ``h``; other values are returned as they are."""
    if not (isinstance(x, fx.Node) and x.op == "call_function" and x.target is operator.getitem):
        return x
    seq, index = x.args
    sizes = size_elements(ctx, seq) if isinstance(index, int) and not isinstance(seq, (tuple, list)) else None
    if sizes is None or not -len(sizes) <= index < len(sizes) or sizes[index] is None:
        return x
    return sizes[index]
