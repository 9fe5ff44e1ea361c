"""Rules for convolutions: layers, functional calls (a weight passed in, maybe computed), plain,
grouped, depthwise, transposed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .axes import AxisId
from .context import RuleContext
from .ops_matmul import zeroed_by_masks
from .ops_sizes import register_length_args
from .rules import register_function_rule, register_module_rule
from .size_args import read_axis
from .split_sizes import followed_count
from .zeros import zero_breaker

__all__ = ["contracted_by_buffer", "link_conv", "same_positions"]


def link_conv(
    ctx: RuleContext,
    x: list[AxisId],
    w: list[AxisId],
    out: list[AxisId],
    *,
    spatial: int,
    groups: int,
    transposed: bool,
    fixed_groups: bool = False,
    same_positions: Sequence[bool] = (),
) -> int:
    """Couple a (possibly grouped) convolution; returns the output channel axis.

    Plain: input channels ~ weight columns, weight rows produce output channels.
    Depthwise-like (one input channel per group): input channel ``j`` ~ output channels
    ``[j*m, (j+1)*m)`` (transposed: ~ weight row ``j``, which produces them). Grouped: pruning
    must keep the groups equal, so position ``k``
    within every group is one channel, on the input and the output side alike.
    Spatial output axes are pinned, but where ``same_positions`` says the conv maps each position to
    itself (kernel 1, stride 1, no padding: gMLP's ``Conv1d(n, n, 1)`` over tokens, the features
    its spatial axis). ``w`` holds the weight's first two axes.
    ``fixed_groups``: the group count is a literal of the call (``F.conv2d(x, w, groups=8)``)
    that would not follow pruned channels: even a depthwise conv keeps its groups, by position.
    """
    cx, co = len(x) - spatial - 1, len(out) - spatial - 1
    ctx.same(x[:cx], out[:co])  # batch
    for i, (a, b) in enumerate(zip(x[cx + 1 :], out[co + 1 :])):
        if i < len(same_positions) and same_positions[i]:
            ctx.same([a], [b])
        else:
            ctx.pin([a, b], f"spatial axis of {ctx.where()}")
    w_in, w_out = (w[0], w[1]) if transposed else (w[1], w[0])
    c_in, c_out = ctx.graph.size(x[cx]), ctx.graph.size(out[co])
    per_in, per_out = c_in // groups, c_out // groups
    if per_in == 1 and groups > 1 and not transposed and not fixed_groups:  # depthwise, channel multiplier per_out
        ctx.produce(w_out, out[co])
        ctx.graph.link(x[cx], out[co], np.arange(c_out) // per_out, np.arange(c_out), kind="block")
        ctx.pin([w_in], f"depthwise weight of {ctx.where()}") if ctx.graph.size(w_in) > 1 else None
        return co
    if per_in == 1 and groups > 1 and not fixed_groups:  # depthwise transposed: weight (in, multiplier, ...)
        ctx.graph.link(x[cx], w_in)
        ctx.produce(w_in, out[co], np.arange(c_out) // per_out, np.arange(c_out), kind="block")
        ctx.pin([w_out], f"depthwise weight of {ctx.where()}") if ctx.graph.size(w_out) > 1 else None
        return co
    if fixed_groups and per_in == 1 and groups > 1:  # every group one input channel, and the count cannot follow
        ctx.pin([x[cx], out[co], w_in, w_out], f"depthwise call with a literal group count at {ctx.where()}")
        return co
    if groups == 1:
        ctx.graph.link(x[cx], w_in)
        ctx.produce(w_out, out[co])
        return co
    ctx.graph.link(x[cx], w_in, np.arange(c_in), np.arange(c_in) % ctx.graph.size(w_in), kind="tie")
    ctx.produce(w_out, out[co], np.arange(c_out) % ctx.graph.size(w_out), np.arange(c_out), kind="tie")
    ctx.graph.link(x[cx], x[cx], np.arange(c_in), np.arange(c_in) % per_in, kind="tie")
    ctx.graph.link(out[co], out[co], np.arange(c_out), np.arange(c_out) % per_out, kind="tie")
    return co


@register_module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv(ctx: RuleContext) -> None:
    m = ctx.module
    assert isinstance(m, nn.modules.conv._ConvNd)
    x, out = ctx.axes(ctx.input), ctx.out()
    ctx.arg("output_size")
    if x is None:
        ctx.pin_everything(f"{ctx.where()} without a tensor input")
        return
    w = ctx.param("weight", (0, 1))
    same = same_positions(m.kernel_size, m.stride, m.padding, m.output_padding)
    co = link_conv(ctx, x, w, out, spatial=len(m.kernel_size), groups=m.groups, transposed=m.transposed, same_positions=same)
    if m.bias is not None:
        ctx.same(ctx.param("bias"), [out[co]])


_TRANSPOSED = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


@register_function_rule(F.conv1d, F.conv2d, F.conv3d, *_TRANSPOSED, torch.convolution)
def conv_function(ctx: RuleContext) -> None:
    """``F.conv2d(x, weight, bias, ...)`` with a weight fetched or computed in ``forward``
    (``aten.convolution``: any of them, its ``transposed`` flag says which)."""
    ctx.read_all()
    x, w, out = ctx.axes(ctx.input), ctx.weight_axes(ctx.arg("weight"), (0, 1)), ctx.out()
    groups = ctx.arg("groups", 1)
    read = read_axis(ctx, groups) if isinstance(groups, fx.Node) else None  # groups=h.shape[1]
    flag = ctx.arg("transposed", False)
    transposed = ctx.call.op in _TRANSPOSED or flag is True
    if read is not None and not _depthwise_read(ctx, x, read):
        ctx.pin([read], f"group count read off an axis at {ctx.where()}")
        read = None
    if read is not None:
        groups = ctx.graph.size(read)  # a depthwise count that follows pruning, as a layer's does
    if x is None or w is None or not isinstance(groups, int) or not isinstance(flag, bool):
        ctx.pin_everything(f"convolution with unreadable arguments at {ctx.where()}")
        return
    spatial = ctx.meta(ctx.arg("weight")).ndim - 2
    cx = len(x) - spatial - 1
    if read is not None and read != x[cx]:
        ctx.graph.link(read, x[cx])  # the read axis and the input channels: one count
    # Only a depthwise count (as long as the channels) may follow them; any other count stays
    # (``groups=self.g.groups`` of a 3-group conv is no size of the axis: recording it as one
    # had surgery lower it per pruned channel).
    depthwise = groups == ctx.graph.size(x[cx])
    fixed = read is None and groups > 1 and (not depthwise or ctx.constant_size(x[cx], groups))
    if fixed and depthwise and followed_count(ctx, groups, x[cx]):  # ``groups=self.channels``: surgery rewrites it
        fixed = False
    kernel = ctx.meta(ctx.arg("weight")).shape[2:]
    same = same_positions(kernel, ctx.arg("stride", 1), ctx.arg("padding", 0), ctx.arg("output_padding", 0))
    co = link_conv(ctx, x, w, out, spatial=spatial, groups=groups, transposed=transposed, fixed_groups=fixed, same_positions=same)
    _pin_kernel_axes(ctx, ctx.arg("weight"))
    contracted_by_buffer(ctx, cx)
    b = ctx.axes(ctx.arg("bias"))
    if b is not None:
        ctx.same(b, [out[co]])


register_length_args({"groups"}, F.conv1d, F.conv2d, F.conv3d, *_TRANSPOSED, torch.convolution)


def same_positions(kernel: Sequence[int], stride: Any, padding: Any, output_padding: Any) -> list[bool]:
    """Per spatial axis of a convolution: does it map each position to itself (kernel 1, stride
    1, no padding)? All False where an argument is not a number, a tuple of them or a padding
    word (``"valid"``, ``"same"``)."""
    n = len(kernel)

    def each(v: Any) -> list[Any]:
        return list(v) if isinstance(v, (tuple, list)) and len(v) == n else [v] * n

    pads = [0] * n if padding in ("valid", "same") else each(padding)
    rows = zip(kernel, each(stride), pads, each(output_padding))
    return [all(type(v) is int for v in row) and row == (1, 1, 0, 0) for row in rows]


def _pin_kernel_axes(ctx: RuleContext, weight: object) -> None:
    """A weight computed in forward (``kh @ kw``, ``w + einsum(...)``) brings its kernel axes
    along, linked to what made them: no channels (pruning one would shrink the kernel)."""
    if isinstance(weight, fx.Node) and weight.name not in (ctx.aliases or {}) and weight.name not in ctx.views:
        axes = ctx.axes(weight)
        if axes:
            ctx.pin(axes[2:], f"kernel axis of {ctx.where()}")


def _depthwise_read(ctx: RuleContext, x: list[AxisId] | None, read: AxisId) -> bool:
    """``groups`` read off an axis as long as the input's channels (``groups=h.shape[1]``):
    depthwise, and it stays so when both are pruned together. Any other read count (a partly
    grouped conv) would change what is computed."""
    if x is None or not isinstance(ctx.meta(ctx.arg("weight")), torch.Tensor):
        return False
    cx = len(x) - (ctx.meta(ctx.arg("weight")).ndim - 2) - 1
    return 0 <= cx < len(x) and ctx.graph.size(read) == ctx.graph.size(x[cx]) > 1


def contracted_by_buffer(ctx: RuleContext, d: int) -> None:
    """A weight that masks do not zero (a buffer, a computed tensor) sums input axis ``d``:
    exact only where the input itself is zero for a masked channel (``F.linear(sigmoid(h),
    self.buf)`` still adds ``0.5 * buf``)."""
    if zeroed_by_masks(ctx, ctx.arg("weight")):
        return
    breaker = zero_breaker(ctx.input, d, ctx.modules)
    if breaker is not None:
        ctx.mix([ctx.axes(ctx.input)[d]], f"{ctx.where()} with a weight masks leave sums values not zero (at {breaker})")
