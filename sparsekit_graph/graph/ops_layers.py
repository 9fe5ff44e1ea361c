"""Rules for standard layers: convolutions, linear, normalisation, pooling, activations."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from .ops_tensor import pointwise, reshape_axes
from .rules import RuleContext, register_function_rule, register_module_rule

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
    nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity,
)  # fmt: skip


@register_module_rule(*_POINTWISE_MODULES)
def activation(ctx: RuleContext) -> None:
    pointwise(ctx)


@register_module_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def softmax_module(ctx: RuleContext) -> None:
    pointwise(ctx)
    dim = ctx.module.dim if ctx.module.dim is not None else -1  # type: ignore[union-attr]
    ctx.graph.mix(ctx.out()[dim], f"softmax at {ctx.where()}")


@register_module_rule(nn.PReLU)
def prelu(ctx: RuleContext) -> None:
    pointwise(ctx)
    if ctx.module.weight.numel() > 1:  # type: ignore[union-attr]
        ctx.same(ctx.param("weight"), [ctx.out()[1 if ctx.out_value.ndim > 1 else 0]])


@register_module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv(ctx: RuleContext) -> None:
    """Channels of a (possibly grouped) convolution.

    Plain: input channels ~ weight columns, weight rows ~ output channels. Depthwise-like
    (one input channel per group): input channel ``j`` ~ output channels
    ``[j*m, (j+1)*m)``. Grouped: pruning must keep the groups equal, so position ``k``
    within every group is one channel, on the input and the output side alike.
    """
    m = ctx.module
    assert isinstance(m, nn.modules.conv._ConvNd)
    x, out = ctx.axes(ctx.arg(0)), ctx.out()
    assert x is not None
    cx, co = len(x) - len(m.kernel_size) - 1, len(out) - len(m.kernel_size) - 1
    ctx.same(x[:cx], out[:co])  # batch
    g = m.groups
    in_axis, out_axis = (0, 1) if m.transposed else (1, 0)
    w_out = ctx.param("weight", (out_axis,))[0]
    if m.bias is not None:
        ctx.same(ctx.param("bias"), [out[co]])
    c_in, c_out = ctx.graph.size(x[cx]), ctx.graph.size(out[co])
    per_in, per_out = c_in // g, c_out // g
    if per_in == 1 and g > 1 and not m.transposed:  # depthwise, channel multiplier per_out
        ctx.graph.link(w_out, out[co])
        ctx.graph.link(x[cx], out[co], np.arange(c_out) // per_out, np.arange(c_out), kind="block")
        return
    w_in = ctx.param("weight", (in_axis,))[0]
    if g == 1:
        ctx.graph.link(x[cx], w_in)
        ctx.graph.link(w_out, out[co])
    else:
        ctx.graph.link(x[cx], w_in, np.arange(c_in), np.arange(c_in) % ctx.graph.size(w_in), kind="tie")
        ctx.graph.link(w_out, out[co], np.arange(c_out) % ctx.graph.size(w_out), np.arange(c_out), kind="tie")
        ctx.graph.link(x[cx], x[cx], np.arange(c_in), np.arange(c_in) % per_in, kind="tie")
        ctx.graph.link(out[co], out[co], np.arange(c_out), np.arange(c_out) % per_out, kind="tie")


@register_module_rule(nn.Linear)
def linear(ctx: RuleContext) -> None:
    x, out = ctx.axes(ctx.arg(0)), ctx.out()
    assert x is not None
    ctx.same(x[:-1], out[:-1])
    ctx.graph.link(x[-1], ctx.param("weight", (1,))[0])
    ctx.graph.link(ctx.param("weight", (0,))[0], out[-1])
    if ctx.module.bias is not None:  # type: ignore[union-attr]
        ctx.same(ctx.param("bias"), [out[-1]])


@register_function_rule(F.linear)
def linear_function(ctx: RuleContext) -> None:
    """``F.linear(x, weight, bias)`` with parameters fetched by ``get_attr`` (e.g. timm's Linear)."""
    x, w, out = ctx.axes(ctx.arg(0)), ctx.axes(ctx.arg(1, "weight")), ctx.out()
    b = ctx.axes(ctx.arg(2, "bias"))
    if x is None or w is None or len(w) != 2:
        ctx.pin_everything(f"linear with a computed weight at {ctx.where()}")
        return
    ctx.same(x[:-1], out[:-1])
    ctx.graph.link(x[-1], w[1])
    ctx.graph.link(w[0], out[-1])
    if b is not None:
        ctx.same(b, out[-1:])


@register_module_rule(nn.modules.batchnorm._NormBase)
def channel_norm(ctx: RuleContext) -> None:
    """BatchNorm / InstanceNorm: per-channel statistics and affine parameters on axis 1."""
    pointwise(ctx)
    out = ctx.out()
    channel = [out[1 if len(out) > 1 else 0]]
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), channel)


@register_function_rule(F.batch_norm, F.instance_norm)
def batch_norm_function(ctx: RuleContext) -> None:
    """Functional batch/instance norm (e.g. timm's BatchNormAct2d): 1-D tensors follow axis 1."""
    x, out = ctx.axes(ctx.arg(0)), ctx.out()
    assert x is not None
    ctx.same(x, out)
    for n in ctx.tensor_args()[1:]:
        axes = ctx.axes(n)
        if axes is not None and len(axes) == 1:
            ctx.same(axes, [out[1]])


@register_module_rule(nn.GroupNorm)
def group_norm(ctx: RuleContext) -> None:
    """GroupNorm normalises groups of channels together: channels stay, pinned."""
    pointwise(ctx)
    out = ctx.out()
    for attr in ("weight", "bias"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), [out[1]])
    ctx.pin([out[1]], f"channel groups of {ctx.where()}")


@register_module_rule(nn.LayerNorm, nn.RMSNorm)
def layer_norm(ctx: RuleContext) -> None:
    """Normalised trailing axes mix (not zero-invariant); without affine parameters they pin,
    since ``normalized_shape`` would not follow a pruned size."""
    pointwise(ctx)
    out = ctx.out()
    k = len(ctx.module.normalized_shape)  # type: ignore[union-attr]
    trailing = out[len(out) - k :]
    for a in trailing:
        ctx.graph.mix(a, f"normalised by {ctx.where()}")
    if getattr(ctx.module, "weight", None) is None:
        ctx.pin(trailing, f"{ctx.where()} has no affine parameters to resize")
        return
    for attr in ("weight", "bias"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), trailing)


@register_module_rule(nn.LocalResponseNorm)
def local_response_norm(ctx: RuleContext) -> None:
    pointwise(ctx)
    ctx.pin([ctx.out()[1]], f"cross-channel {ctx.where()}")


_SPATIAL = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2, nn.ZeroPad2d: 2,
    nn.ConstantPad1d: 1, nn.ConstantPad2d: 2, nn.ConstantPad3d: 3, nn.ReflectionPad1d: 1, nn.ReflectionPad2d: 2,
    nn.ReplicationPad1d: 1, nn.ReplicationPad2d: 2, nn.ReplicationPad3d: 3, nn.Upsample: -1,
    nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2, nn.PixelShuffle: 0, nn.PixelUnshuffle: 0,
}  # fmt: skip


@register_module_rule(*_SPATIAL)
def spatial(ctx: RuleContext) -> None:
    """Pooling, padding, upsampling: the leading (batch, channel) axes pass through."""
    x, out = ctx.axes(ctx.arg(0)), ctx.out()
    assert x is not None
    k = _SPATIAL[type(ctx.module)] if type(ctx.module) in _SPATIAL else -1
    if k == 0:  # pixel (un)shuffle mixes channels with space
        ctx.pin(x + out, f"{ctx.where()} moves channels into space")
        return
    k = len(x) - 2 if k < 0 else k
    ctx.same(x[: len(x) - k], out[: len(out) - k])


@register_module_rule(nn.Flatten)
def flatten_module(ctx: RuleContext) -> None:
    x = ctx.meta(ctx.arg(0))
    m = ctx.module
    nd = x.ndim
    start, end = m.start_dim % nd, m.end_dim % nd  # type: ignore[union-attr]
    reshape_axes(ctx, literal=[False] * ctx.out_value.ndim, groups=[(list(range(start, end + 1)), [start])])


@register_module_rule(nn.Unflatten)
def unflatten_module(ctx: RuleContext) -> None:
    m = ctx.module
    nd = ctx.meta(ctx.arg(0)).ndim
    dim = m.dim % nd  # type: ignore[union-attr]
    k = len(m.unflattened_size)  # type: ignore[union-attr]
    literal = [False] * dim + [s != -1 for s in m.unflattened_size] + [False] * (nd - dim - 1)  # type: ignore[union-attr]
    groups = [([d], [d]) for d in range(dim)] + [([dim], list(range(dim, dim + k)))]
    groups += [([d], [d + k - 1]) for d in range(dim + 1, nd)]
    reshape_axes(ctx, literal=literal, groups=groups)


@register_module_rule(nn.ChannelShuffle)
def channel_shuffle(ctx: RuleContext) -> None:
    """Output channel ``b*g + a`` is input channel ``a*(C/g) + b``; position ``b`` is the channel."""
    x, out = ctx.axes(ctx.arg(0)), ctx.out()
    assert x is not None
    ctx.same(x[:1] + x[2:], out[:1] + out[2:])
    c, g = ctx.graph.size(x[1]), ctx.module.groups  # type: ignore[union-attr]
    src = np.arange(c)
    ctx.graph.link(x[1], out[1], src, (src % (c // g)) * g + src // (c // g), kind="permute")
    ctx.graph.link(x[1], x[1], src, src % (c // g), kind="tie")


@register_module_rule(nn.Embedding)
def embedding(ctx: RuleContext) -> None:
    ids, out = ctx.axes(ctx.arg(0)), ctx.out()
    ctx.same(ids or [], out[:-1])
    ctx.graph.link(ctx.param("weight", (1,))[0], out[-1])
    ctx.pin(ctx.param("weight", (0,)), f"vocabulary of {ctx.where()}")
