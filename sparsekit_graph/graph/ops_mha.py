"""``nn.MultiheadAttention`` as a leaf: its packed ``in_proj`` read per head; and
``F.multi_head_attention_forward`` called directly.

Rows ``[0, E)``, ``[E, 2E)`` and ``[2E, 3E)`` of ``in_proj_weight`` are q, k and v, each
``num_heads`` heads of ``head_dim`` rows; head ``h`` owns rows ``h*D .. h*D+D`` of each part
and columns ``h*D .. h*D+D`` of ``out_proj.weight``. The heads are an axis of their own
(three block members in ``in_proj``), produced by ``in_proj_weight``. Surgery turns a layer
whose heads no longer match its input width into ``PrunedMultiheadAttention``
(``prune/mha.py``), which computes exactly what the stock layer computed for the kept heads.
"""

from __future__ import annotations

import operator

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..prune.mha import PrunedMultiheadAttention
from .axes import AxisId
from .context import RuleContext
from .ops_transformer import nested_encoder
from .rules import register_function_rule, register_module_rule


@register_module_rule(nn.MultiheadAttention, PrunedMultiheadAttention)
def multihead_attention(ctx: RuleContext) -> None:
    """``(L, B, E) x (S, B, E) x (S, B, E) -> (L, B, E_out), weights`` (``(B, L, E)`` with
    ``batch_first``). The width ``E`` is the columns of ``in_proj_weight``; heads are produced
    by its rows; the output width by ``out_proj``. ``head_dim`` never changes (the scale
    ``1/sqrt(head_dim)`` depends on it)."""
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    q, k, v = (ctx.axes(ctx.arg(n)) for n in ("input", "key", "value"))  # query is the primary input
    padding, mask = ctx.axes(ctx.arg("key_padding_mask")), ctx.axes(ctx.arg("attn_mask"))
    need = ctx.arg("need_weights", True)
    ctx.arg("average_attn_weights"), ctx.arg("is_causal")
    unusual = not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn or m.in_proj_weight is None
    if unusual or q is None or k is None or v is None or len(q) not in (2, 3) or not isinstance(need, bool):
        ctx.pin_everything(f"{ctx.where()}: separate q/k/v projections, bias_k/bias_v, add_zero_attn or unread inputs")
        return
    out = ctx.out(0)
    batch, seq = ((0, 1) if m.batch_first else (1, 0)) if len(q) == 3 else (None, 0)
    if batch is not None:
        ctx.same([q[batch]] * 3, [k[batch], v[batch], out[batch]])
    ctx.same([q[seq], k[seq]], [out[seq], v[seq]])
    ctx.mix([k[seq]], f"softmax over keys at {ctx.where()}")

    w_in = _param(ctx, m.in_proj_weight)  # (3*H*D, E)
    for x in (q, k, v):
        ctx.graph.link(x[-1], w_in[1])
    heads = _heads_axis(ctx, m)
    rows = np.arange(ctx.graph.size(w_in[0]))
    inner = len(rows) // 3
    ctx.produce(w_in[0], heads, rows, rows % inner // m.head_dim, kind="block")
    if m.in_proj_bias is not None:
        ctx.graph.link(_param(ctx, m.in_proj_bias)[0], heads, rows, rows % inner // m.head_dim, kind="block")
    w_out = _param(ctx, m.out_proj.weight)  # (E_out, H*D)
    cols = np.arange(inner)
    ctx.graph.link(w_out[1], heads, cols, cols // m.head_dim, kind="block")
    ctx.produce(w_out[0], out[-1])
    if m.out_proj.bias is not None:
        ctx.same(_param(ctx, m.out_proj.bias), [out[-1]])

    if padding is not None:  # (B, S), or (S,) unbatched
        ctx.same(padding, [q[batch], k[seq]] if batch is not None else [k[seq]])
        nested = nested_encoder(ctx)
        if nested is not None:
            ctx.pin([w_in[1], heads], nested)
    if mask is not None:  # (L, S) or (B*H, L, S): the latter counts heads
        ctx.same(mask[-2:], [q[seq], k[seq]])
        if len(mask) == 3:
            ctx.pin([heads], f"a per-head attn_mask at {ctx.where()}")
    _weights(ctx, heads, q, k, batch, seq)


def _weights(ctx: RuleContext, heads: AxisId, q: list[AxisId], k: list[AxisId], batch: int | None, seq: int) -> None:
    """The attention weights (``need_weights``): averaged over heads ``(B, L, S)``, or per
    head ``(B, H, L, S)``. A head's zeroed weights still count in the average, so where the
    weights are used the heads are not zero-invariant."""
    value = ctx.out_value[1] if isinstance(ctx.out_value, (tuple, list)) else None
    if value is None:
        return
    w = ctx.out(1)
    lead = [q[batch]] if batch is not None else []
    ctx.same(w[: len(lead)], lead)
    if len(w) == len(lead) + 3:
        ctx.graph.link(w[len(lead)], heads)
    ctx.same(w[-2:], [q[seq], k[seq]])
    if _uses_weights(ctx.node):
        ctx.mix([heads], f"attention weights of {ctx.where()} are averaged over heads")


def _uses_weights(node: fx.Node) -> bool:
    """Is element 1 of the layer's output read (anything but ``out[0]``, or an unused ``out[1]``)?"""
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return True
        if user.args[1] != 0 and user.users:
            return True
    return False


def _heads_axis(ctx: RuleContext, m: nn.MultiheadAttention) -> AxisId:
    inner = m.in_proj_weight.shape[0] // 3
    return ctx.graph.add_axis(("v", f"{ctx.prefix}{ctx.node.name}:heads", 0), inner // m.head_dim)


def _param(ctx: RuleContext, t: nn.Parameter) -> list[AxisId]:
    return ctx.graph.add_param(ctx.graph.canonical[id(t)], t)


@register_function_rule(F.multi_head_attention_forward)
def multi_head_attention_function(ctx: RuleContext) -> None:
    """``F.multi_head_attention_forward(query, key, value, E, num_heads, ...)``, sequence first.
    It splits the query's width ``E`` into ``num_heads`` heads of ``E // num_heads``: removing a
    head or a query channel changes the head size (and the ``1/sqrt`` scale), so the query width,
    the q/k/v rows and ``out_proj``'s columns pin. With separate projections the key and value
    widths (``k_proj``/``v_proj`` columns) prune like a linear's input; ``out_proj``'s rows
    produce the output width."""
    ctx.read_all()
    q, k, v = (ctx.axes(ctx.arg(n)) for n in ("query", "key", "value"))
    separate = ctx.arg("use_separate_proj_weight", False)
    names = ("q_proj_weight", "k_proj_weight", "v_proj_weight") if separate is True else ("in_proj_weight",) * 3
    weights = [ctx.axes(ctx.arg(n)) for n in names]
    w_out = ctx.axes(ctx.arg("out_proj_weight"))
    static = ctx.arg("static_k") is not None or ctx.arg("static_v") is not None
    if q is None or k is None or v is None or None in weights or w_out is None or static or not isinstance(separate, bool):
        ctx.pin_everything(f"{ctx.where()}: static keys/values or projections that are not tensors")
        return
    out = ctx.out(0)
    batch = 1 if len(q) == 3 else None
    if batch is not None:
        ctx.same([q[batch]] * 3, [k[batch], v[batch], out[batch]])
    ctx.same([q[0], k[0]], [out[0], v[0]])
    ctx.mix([k[0]], f"softmax over keys at {ctx.where()}")
    for x, w in zip((q, k, v), weights):
        ctx.graph.link(x[-1], w[1])  # type: ignore[index]
    reason = f"{ctx.where()} splits the query width by num_heads={ctx.arg('num_heads')}: the head size would change"
    rows = [w[0] for w in weights] + [w_out[1], q[-1]]  # type: ignore[index]
    rows += [a[-1] for n in ("in_proj_bias", "bias_k", "bias_v") if (a := ctx.axes(ctx.arg(n))) is not None]
    ctx.pin(rows, reason)
    ctx.produce(w_out[0], out[-1])
    bias = ctx.axes(ctx.arg("out_proj_bias"))
    if bias is not None:
        ctx.same(bias, out[-1:])
    padding, mask = ctx.axes(ctx.arg("key_padding_mask")), ctx.axes(ctx.arg("attn_mask"))
    if padding is not None:
        ctx.same(padding, [q[batch], k[0]] if batch is not None else [k[0]])
    if mask is not None:  # (L, S), or (B*H, L, S): its first axis counts heads
        ctx.same(mask[-2:], [q[0], k[0]])
        ctx.pin(mask[:-2], reason)
    value = ctx.out_value[1] if isinstance(ctx.out_value, (tuple, list)) else None
    if value is not None:  # the weights: (B, L, S), or per head (B, H, L, S)
        w = ctx.out(1)
        lead = [q[batch]] if batch is not None else []
        ctx.same(w[: len(lead)], lead)
        ctx.pin(w[len(lead) : -2], reason)
        ctx.same(w[-2:], [q[0], k[0]])
