"""Indexing one axis by an integer tensor (``table[index]``, ``x[:, idx]``): a gather.

The indexed axis and the index's own axes pin (positions chosen by data), unless the index holds
positions along an axis of the indexed one's length (``positions.py``); every other axis of
the source passes to the output (Swin's and MaxViT's relative-position tables keep their head
axis: ``table[index.view(-1)]`` is ``(N*N, heads)``). ``getitem`` (``ops_join.py``) asks here
first and handles every other indexing itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from .axes import AxisId
from .context import RuleContext
from .meta import CONSTANT
from .positions import index_by_positions
from .rules import register_function_rule
from .sizes import count_plus_sources

__all__ = ["constant_positions", "gather_by_index", "pick_fixed_positions", "produced_by_rows", "select_by_mask"]


def gather_by_index(ctx: RuleContext, items: list[object]) -> bool:
    """Link ``x[idx]``/``x[:, idx]`` (integer index tensors, or lists of ints, on adjacent axes,
    full slices elsewhere: PointNet++'s ``points[batch_ids, idx]`` too; ``items``: the index,
    full slices as ``slice(None)``); False, with nothing linked, for any other indexing."""
    value = ctx.meta(ctx.input)
    tensors = [k for k, i in enumerate(items) if isinstance(i, fx.Node) or _literal(i)]
    if not isinstance(value, Tensor) or not isinstance(ctx.out_value, Tensor) or not tensors:
        return False
    k, last = tensors[0], tensors[-1]
    idx = [ctx.meta(items[j]) if isinstance(items[j], fx.Node) else torch.as_tensor(items[j]) for j in tensors]
    if last - k + 1 != len(tensors) or not all(_integer(i) for i in idx):
        return False
    if any(i != slice(None) for i in items[:k] + items[last + 1 :]) or len(items) > value.ndim:
        return False
    src, out = ctx.axes(ctx.input), ctx.out()
    shape = torch.broadcast_shapes(*(i.shape for i in idx))
    if src is None or tuple(ctx.out_value.shape) != (*value.shape[:k], *shape, *value.shape[last + 1 :]):
        return False
    gathered, kept = out[k : k + len(shape)], src[:k] + src[last + 1 :]
    if len(tensors) == 1 and index_by_positions(ctx, items[k], src[k]):  # ``w[logits.topk(2).indices]``
        ctx.same(ctx.axes(items[k]) or [], gathered)
    else:
        index_axes = [a for j in tensors if isinstance(items[j], fx.Node) for a in ctx.axes(items[j]) or []]
        ctx.pin([*src[k : last + 1], *gathered, *index_axes], f"gathering by an index tensor at {ctx.where()}")
    ctx.same(kept, out[:k] + out[k + len(shape) :])
    produced_by_rows(ctx, kept)
    return True


def _literal(index: object) -> bool:
    """A list (or tuple) of ints written in the code: ``h[:, [0, 0, 1]]`` (pytorch-fm's field pairs)."""
    if not isinstance(index, (list, tuple)) or not index:
        return False
    return all(_literal(i) if isinstance(i, (list, tuple)) else isinstance(i, int) and not isinstance(i, bool) for i in index)


def _integer(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype not in (torch.bool, torch.uint8) and not t.is_floating_point() and not t.is_complex()


def select_by_mask(ctx: RuleContext, items: list[object]) -> bool:
    """``h[mask]``, ``h[mask, :]`` (a graph's nodes of one batch: ``h[batch == g]``; ``items``:
    the index, full slices as ``slice(None)``): a boolean mask over the leading axes picks rows
    by data (those axes and the picked rows pin); the trailing axes pass through. False, with
    nothing linked, for any other indexing."""
    value = ctx.meta(ctx.input)
    mask = ctx.meta(items[0]) if items and isinstance(items[0], fx.Node) else None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or any(i != slice(None) for i in items[1:]):
        return False
    src, out, k = ctx.axes(ctx.input), ctx.out(), mask.ndim
    if src is None or not isinstance(value, Tensor) or tuple(ctx.out_value.shape[1:]) != tuple(value.shape[k:]):
        return False
    ctx.pin([*src[:k], out[0], *(ctx.axes(items[0]) or [])], f"rows picked by a mask at {ctx.where()}")
    ctx.same(src[k:], out[1:])
    return True


@register_function_rule(torch.gather)
def gather(ctx: RuleContext) -> None:
    """``torch.gather(x, dim, idx)``: ``out[..., j, ...] = x[..., idx[..., j, ...], ...]`` along
    ``dim``; every other axis pairs index ``i`` of ``x``, ``idx`` and the output (PointNet++'s
    neighbours gathered with ``idx.expand(-1, -1, C)``). Along ``dim`` the positions are chosen
    by data (pinned), unless they are positions along that very axis (``positions.py``)."""
    ctx.arg("sparse_grad")
    _gather(ctx, "index", "gather")


@register_function_rule(torch.take_along_dim)
def take_along_dim(ctx: RuleContext) -> None:
    """``torch.take_along_dim(x, idx, dim)``: ``gather`` where ``idx`` is as long as ``x`` off
    ``dim``; a broadcast index (or none of ``dim``: the flattened input) pins."""
    value, index, dim = ctx.meta(ctx.input), ctx.meta(ctx.arg("indices")), ctx.arg("dim")
    same = isinstance(value, Tensor) and isinstance(index, Tensor) and index.shape == ctx.out_value.shape
    if same and isinstance(dim, int):
        same = all(index.shape[k] == value.shape[k] for k in range(value.ndim) if k != dim % value.ndim)
    if not same or not isinstance(dim, int):
        ctx.pin_everything(f"take_along_dim with a broadcast index at {ctx.where()}")
        return
    _gather(ctx, "indices", "take_along_dim")


def _gather(ctx: RuleContext, index_arg: str, label: str) -> None:
    src, idx, out = ctx.axes(ctx.input), ctx.axes(ctx.arg(index_arg)), ctx.out()
    value, index, dim = ctx.meta(ctx.input), ctx.meta(ctx.arg(index_arg)), ctx.arg("dim")
    if src is None or idx is None or not isinstance(dim, int) or not isinstance(index, Tensor) or index.ndim != value.ndim:
        ctx.pin_everything(f"{label} with unreadable arguments at {ctx.where()}")
        return
    d = dim % max(value.ndim, 1)
    for k in range(value.ndim):
        if k == d:
            continue
        if value.shape[k] == index.shape[k]:
            ctx.same([src[k], idx[k]], [out[k], out[k]])
        else:  # a part of the axis, by position
            ctx.pin([src[k], idx[k], out[k]], f"gather of part of axis {k} at {ctx.where()}")
    ctx.same([idx[d]], [out[d]])
    if not index_by_positions(ctx, ctx.arg(index_arg), src[d]):
        ctx.pin([src[d], out[d]], f"gathering by an index tensor at {ctx.where()}")


def produced_by_rows(ctx: RuleContext, kept: list[AxisId]) -> None:
    """A table's rows gathered by data (``self.emb.weight[ids]``, as ``nn.Embedding`` does): a
    2-D parameter's kept axis produces the output's channels (not a conv weight's kernel axes)."""
    if len(kept) != 1 or kept[0][0] != "p" or ctx.graph.size(kept[0]) < 2:
        return
    owner, _, attr = kept[0][1].rpartition(".")
    if isinstance(getattr(ctx.modules.get(owner), attr, None), nn.Parameter):
        ctx.graph.produce(kept[0])


def constant_positions(node: object) -> Tensor | None:
    """The values of an integer constant ``torch.export`` lifted (through the copies it
    makes of it), or None when ``node`` is anything else."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _COPIES:
        node = node.args[0]
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = node.meta.get(CONSTANT)
        return value if isinstance(value, Tensor) and value.ndim == 1 and len(value) else None
    return None


_COPIES = (torch.ops.aten.lift_fresh_copy.default, torch.ops.aten.clone.default, torch.ops.aten.alias.default)


def pick_fixed_positions(ctx: RuleContext) -> bool:
    """``x[..., [-2], :]`` (Falcon's key and value slots after its query heads): one constant
    index list on one axis of ``count + k`` slots (``sizes.count_plus_sources``), full slices
    elsewhere. Output index ``j`` is input position
    ``p[j]``; the picked slots pin, and so does every slot between them and the end they
    count from (a negative position keeps its slot only if nothing after it goes, a
    non-negative one if nothing before it goes); the other slots stay free. False, with
    nothing linked, for any other indexing."""
    value, out_value = ctx.meta(ctx.input), ctx.out_value
    items = ctx.arg("indices")
    if not isinstance(items, (list, tuple)) or not isinstance(value, Tensor) or not isinstance(out_value, Tensor):
        return False
    tensors = [k for k, i in enumerate(items) if i is not None]
    if len(tensors) != 1 or len(items) > value.ndim:
        return False
    k = tensors[0]
    pos = constant_positions(items[k])
    src, out = ctx.axes(ctx.input), ctx.out()
    if pos is None or src is None or out_value.ndim != value.ndim:
        return False
    n = value.shape[k]
    p = pos.tolist()
    if not all(-n <= i < n for i in p) or (min(p) < 0 <= max(p)) or not count_plus_sources(ctx.node, n, ctx.modules):
        return False  # only a layout of heads plus fixed slots (n = count + k) is known to follow
    ctx.same(src[:k] + src[k + 1 :], out[:k] + out[k + 1 :])
    picked = np.array([i % n for i in p], dtype=np.int64)
    where = ctx.where()
    ctx.graph.link(src[k], out[k], picked, np.arange(len(picked)), kind="offset")
    ctx.pin([out[k]], f"fixed positions {p} picked at {where}")
    held = np.arange(int(picked.min()), n) if p[0] < 0 else np.arange(0, int(picked.max()) + 1)
    anchor = ctx.graph.add_axis(("v", f"{ctx.prefix}{ctx.node.name}:held", k), len(held))
    ctx.graph.link(anchor, src[k], np.arange(len(held)), held, kind="offset")
    ctx.pin([anchor], f"positions {p} counted from the {'end' if p[0] < 0 else 'start'} at {where}")
    return True
