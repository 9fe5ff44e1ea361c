"""torchvision's Swin Transformer functions, wrapped as leaves by ``torch.fx.wrap``.

``shifted_window_attention(x (B, H, W, C), qkv_weight (3C, C), proj_weight (C', C), bias (1, nH,
N, N), window_size, num_heads, shift_size, ...)`` pads, rolls and partitions the spatial axes
into windows and splits ``qkv`` into ``num_heads`` heads of ``C // num_heads``: the heads'
width is the input width, so a head is ``C // num_heads`` channels of the residual stream
together with its q, k and v rows, its ``proj`` columns and its column of the relative-position
bias table. Swin V2's cosine attention normalises q and k within each head and scales the
scores by that head's ``logit_scale`` (``(nH, 1, 1)``): a member of the head, whose other
parts are unchanged. The spatial axes pin (windows, shifts). ``_get_relative_position_bias`` gathers the
table's rows by a fixed index: its heads pass through. ``_patch_merging_pad`` concatenates the
four 2x2 neighbours: output channel ``j`` is input channel ``j % C``.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .rules import register_function_rule

__all__ = ["register_swin_rules"]


def shifted_window_attention(ctx: RuleContext) -> None:
    x, out = ctx.axes(ctx.input), ctx.out()
    qkv = ctx.weight_axes(ctx.arg("qkv_weight"), (0, 1))
    proj = ctx.weight_axes(ctx.arg("proj_weight"), (0, 1))
    bias = ctx.axes(ctx.arg("relative_position_bias"))
    heads_n, logit_scale = ctx.arg("num_heads"), ctx.arg("logit_scale")
    for harmless in ("window_size", "shift_size", "attention_dropout", "dropout", "training"):
        ctx.arg(harmless)
    if x is None or qkv is None or proj is None or bias is None or len(x) != 4 or not isinstance(heads_n, int):
        ctx.pin_everything(f"shifted window attention with unreadable arguments at {ctx.where()}")
        return
    width = ctx.graph.size(x[-1])
    scale = None if logit_scale is None else ctx.weight_axes(logit_scale, (0,))  # Swin V2: (nH, 1, 1), one per head
    if width % heads_n or ctx.graph.size(qkv[0]) != 3 * width:
        ctx.pin_everything(f"shifted window attention at {ctx.where()}: qkv is not 3 x the input width")
        return
    if logit_scale is not None and (scale is None or ctx.graph.size(scale[0]) != heads_n):
        ctx.pin_everything(f"shifted window attention at {ctx.where()}: a cosine-attention scale that is no parameter per head")
        return
    head_dim = width // heads_n
    ctx.same([x[0]], [out[0]])
    ctx.pin([*x[1:3], *out[1:3]], f"windows of {ctx.where()}")
    ctx.graph.link(x[-1], qkv[1])
    rows = np.arange(3 * width)
    ctx.graph.link(qkv[0], x[-1], rows, rows % width, kind="tie")  # q, k and v rows of channel c
    qkv_bias = ctx.axes(ctx.arg("qkv_bias"))
    if qkv_bias is not None:
        ctx.graph.link(qkv_bias[0], x[-1], rows, rows % width, kind="tie")
    ctx.graph.link(proj[1], x[-1])
    ctx.produce(proj[0], out[-1])
    proj_bias = ctx.axes(ctx.arg("proj_bias"))
    if proj_bias is not None:
        ctx.same(proj_bias, [out[-1]])
    heads = ctx.graph.add_axis(("v", f"{ctx.prefix}{ctx.node.name}:heads", 0), heads_n)
    c = np.arange(width)
    ctx.graph.link(x[-1], heads, c, c // head_dim, kind="block")
    ctx.size_follows_model(heads, heads_n)
    ctx.same([bias[-3]], [heads])
    if scale is not None:  # cosine attention: normalize(q) . normalize(k) * exp(logit_scale[h]), within each head
        ctx.same([scale[0]], [heads])
    ctx.pin(bias[-2:], f"window positions of {ctx.where()}")


def relative_position_bias(ctx: RuleContext) -> None:
    """``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)``: (L, nH) -> (1, nH, N, N)."""
    table, index, out = ctx.axes(ctx.arg("relative_position_bias_table")), ctx.axes(ctx.arg("relative_position_index")), ctx.out()
    ctx.arg("window_size")
    if table is None or index is None or len(table) != 2 or len(out) != 4:
        ctx.pin_everything(f"relative position bias with unreadable arguments at {ctx.where()}")
        return
    ctx.same([table[1]], [out[1]])
    ctx.pin([table[0], *index, *out[2:]], f"relative positions of {ctx.where()}")


def patch_merging_pad(ctx: RuleContext) -> None:
    """(..., H, W, C) -> (..., H/2, W/2, 4C): the four neighbours' channels side by side."""
    x, out = ctx.axes(ctx.input), ctx.out()
    if x is None or len(x) < 3:
        ctx.pin_everything(f"patch merging with unreadable input at {ctx.where()}")
        return
    ctx.same(x[:-3], out[:-3])
    ctx.pin([*x[-3:-1], *out[-3:-1]], f"2x2 patches of {ctx.where()}")
    j = np.arange(ctx.graph.size(out[-1]))
    ctx.graph.link(x[-1], out[-1], j % ctx.graph.size(x[-1]), j, kind="tie")


def register_swin_rules() -> None:
    """Register the rules (called once torchvision is in use)."""
    from torchvision.models import swin_transformer as swin

    register_function_rule(swin.shifted_window_attention)(shifted_window_attention)
    register_function_rule(swin._get_relative_position_bias)(relative_position_bias)
    register_function_rule(swin._patch_merging_pad)(patch_merging_pad)
