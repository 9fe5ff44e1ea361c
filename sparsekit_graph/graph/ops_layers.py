"""Rules for standard layers: activations, linear, pooling, padding, reshaping, embeddings
(convolutions: ``ops_conv``; normalisation layers: ``ops_norm_layers``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .context import RuleContext
from .ops_conv import contracted_by_buffer
from .ops_join import link_padding
from .ops_matmul import zeroed_by_masks
from .ops_reshape import flatten_axes, reshape_axes
from .ops_tensor import pointwise, spatial_axes
from .positions import index_by_positions
from .rules import register_function_rule, register_module_rule
from .sizes import SizeSource
from .zeros import zero_breaker

__all__ = ["SAME_SHAPE_MODULES"]

# Layers whose output has their input's shape and whose channels pass straight through.
# The tracer computes their output shape without running them; their rule is ``activation``.
SAME_SHAPE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
    nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity,
)  # fmt: skip


@register_module_rule(*SAME_SHAPE_MODULES)
def activation(ctx: RuleContext) -> None:
    pointwise(ctx)


@register_module_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def softmax_module(ctx: RuleContext) -> None:
    pointwise(ctx)
    dim = ctx.module.dim  # type: ignore[union-attr]
    out = ctx.out()
    ctx.mix(out if dim is None else [out[dim]], f"softmax at {ctx.where()}")


@register_module_rule(nn.PReLU)
def prelu(ctx: RuleContext) -> None:
    pointwise(ctx)
    if ctx.module.weight.numel() > 1:  # type: ignore[union-attr]
        ctx.same(ctx.param("weight"), [ctx.out()[1 if ctx.out_value.ndim > 1 else 0]])


@register_function_rule(torch.prelu)
def prelu_function(ctx: RuleContext) -> None:
    """``F.prelu(x, w)`` / ``torch.prelu``: elementwise in ``x``; ``w`` holds one slope per
    channel (axis 1, axis 0 of a 1-D input), or one slope for all (a single element broadcasts).
    Any other weight shape is not modelled: pinned."""
    x, w = ctx.axes(ctx.input), ctx.axes(ctx.arg("weight"))
    out = ctx.out()
    if x is None or w is None:
        ctx.pin_everything(f"{ctx.where()}: input and weight must be tensors")
        return
    channel = out[1 if len(out) > 1 else 0] if out else None
    sizes = [ctx.graph.size(a) for a in w]
    if channel is None or (len(w) != 1 and sizes) or (sizes and sizes[0] not in (1, ctx.graph.size(channel))):
        ctx.pin_everything(f"{ctx.where()}: a weight of shape {tuple(sizes)} is not one slope per channel")
        return
    ctx.same(x, out)
    ctx.same(w, [channel])  # a single slope (size 1) couples nothing


@register_module_rule(nn.Linear)
def linear(ctx: RuleContext) -> None:
    x, out = ctx.axes(ctx.input), ctx.out()
    if x is None:
        ctx.pin_everything(f"{ctx.where()} without a tensor input")
        return
    ctx.same(x[:-1], out[:-1])
    ctx.graph.link(x[-1], ctx.param("weight", (1,))[0])
    ctx.produce(ctx.param("weight", (0,))[0], out[-1])
    if ctx.module.bias is not None:  # type: ignore[union-attr]
        ctx.same(ctx.param("bias"), [out[-1]])


@register_module_rule(nn.Bilinear)
def bilinear(ctx: RuleContext) -> None:
    """``y_o = x1 W_o x2 + b_o``: ``x1``'s features ~ weight axis 1, ``x2``'s ~ axis 2, axis 0
    produces the output. A zeroed feature of either input (or its weight slice) adds nothing."""
    x1, x2, out = ctx.axes(ctx.input), ctx.axes(ctx.arg("input2")), ctx.out()
    if x1 is None or x2 is None:
        ctx.pin_everything(f"{ctx.where()} without tensor inputs")
        return
    w = ctx.param("weight")
    ctx.same(x1[:-1], out[:-1])
    ctx.same(x2[:-1], out[:-1])
    ctx.graph.link(x1[-1], w[1])
    ctx.graph.link(x2[-1], w[2])
    ctx.produce(w[0], out[-1])
    if ctx.module.bias is not None:  # type: ignore[union-attr]
        ctx.same(ctx.param("bias"), out[-1:])


@register_function_rule(F.bilinear)
def bilinear_function(ctx: RuleContext) -> None:
    """``F.bilinear(x1, x2, weight, bias)``: as ``nn.Bilinear``, the weight a parameter or a view of one."""
    x1, x2, w, out = ctx.axes(ctx.arg("input1")), ctx.axes(ctx.arg("input2")), ctx.axes(ctx.arg("weight")), ctx.out()
    b = ctx.axes(ctx.arg("bias"))
    if x1 is None or x2 is None or w is None or len(w) != 3:
        ctx.pin_everything(f"bilinear with a computed weight at {ctx.where()}")
        return
    ctx.same(x1[:-1], out[:-1])
    ctx.same(x2[:-1], out[:-1])
    ctx.graph.link(x1[-1], w[1])
    ctx.graph.link(x2[-1], w[2])
    ctx.produce(w[0], out[-1])
    if b is not None:
        ctx.same(b, out[-1:])
    if not zeroed_by_masks(ctx, ctx.arg("weight")):  # a buffer weight: each input's masked features must be zero
        for node, axes in ((ctx.arg("input1"), x1), (ctx.arg("input2"), x2)):
            breaker = zero_breaker(node, len(axes) - 1, ctx.modules)
            if breaker is not None:
                ctx.mix([axes[-1]], f"{ctx.where()} with a weight masks leave sums values not zero (at {breaker})")


@register_function_rule(F.linear)
def linear_function(ctx: RuleContext) -> None:
    """``F.linear(x, weight, bias)``: the weight may be a parameter or a view of one (``w.T``)."""
    x, w, out = ctx.axes(ctx.input), ctx.axes(ctx.arg("weight")), ctx.out()
    b = ctx.axes(ctx.arg("bias"))
    if x is None or w is None or len(w) != 2:
        ctx.pin_everything(f"linear with a computed weight at {ctx.where()}")
        return
    ctx.same(x[:-1], out[:-1])
    ctx.graph.link(x[-1], w[1])
    ctx.produce(w[0], out[-1])
    contracted_by_buffer(ctx, len(x) - 1)
    if b is not None:
        ctx.same(b, out[-1:])


_SPATIAL = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2, nn.ReflectionPad1d: 1,
    nn.ReflectionPad2d: 2, nn.ReflectionPad3d: 3, nn.ReplicationPad1d: 1, nn.ReplicationPad2d: 2,
    nn.ReplicationPad3d: 3, nn.CircularPad1d: 1, nn.CircularPad2d: 2, nn.CircularPad3d: 3, nn.Upsample: -1,
    nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2,
}  # fmt: skip


@register_module_rule(*_SPATIAL)
def spatial(ctx: RuleContext) -> None:
    """Pooling, non-constant padding, upsampling: leading (batch, channel) axes pass through."""
    k = next(v for t, v in _SPATIAL.items() if isinstance(ctx.module, t))
    spatial_axes(ctx, k if k > 0 else max(ctx.meta(ctx.input).ndim - 2, 0))


@register_module_rule(nn.modules.padding._ConstantPadNd)
def constant_pad(ctx: RuleContext) -> None:
    """Constant padding of any axis, channels included (the CIFAR ResNet shortcut)."""
    src, out = ctx.axes(ctx.input), ctx.out()
    assert src is not None
    link_padding(ctx, src, out, list(ctx.module.padding), "constant")  # type: ignore[union-attr]


@register_module_rule(nn.Flatten)
def flatten_module(ctx: RuleContext) -> None:
    flatten_axes(ctx, ctx.module.start_dim, ctx.module.end_dim)  # type: ignore[union-attr]


@register_module_rule(nn.Unflatten)
def unflatten_module(ctx: RuleContext) -> None:
    """``nn.Unflatten(dim, sizes)``: a reshape of one axis. Without a ``-1``, the outermost size
    is the layer's attribute, as ``view(b, -1, 2, 2)``'s ``-1`` is the tensor's: it follows
    the carried channels (surgery lowers ``unflattened_size[0]``); the other sizes are literals."""
    m = ctx.module
    assert isinstance(m, nn.Unflatten)
    nd = ctx.meta(ctx.input).ndim
    dim = m.dim % nd  # type: ignore[operator]
    sizes = m.unflattened_size
    k = len(sizes)
    follows = _unflatten_follows(sizes)
    literal = [False] * dim + [s != -1 and not (j == 0 and follows) for j, s in enumerate(sizes)] + [False] * (nd - dim - 1)  # type: ignore[misc]
    if follows:
        source = SizeSource(ctx.module_name, "unflattened_size")
        ctx.graph.size_refs.setdefault(ctx.out()[dim], set()).add(source)
        ctx.graph.size_values[source] = sizes[0]  # type: ignore[assignment]
    groups = [([d], [d]) for d in range(dim)] + [([dim], list(range(dim, dim + k)))]
    groups += [([d], [d + k - 1]) for d in range(dim + 1, nd)]
    reshape_axes(ctx, literal=literal, groups=groups)


def _unflatten_follows(sizes: object) -> bool:
    """Can surgery rewrite ``sizes[0]`` (a plain tuple of ints, no ``-1``, the first > 1)?"""
    return (
        isinstance(sizes, tuple)
        and bool(sizes)
        and all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
        and -1 not in sizes
        and sizes[0] > 1
    )


@register_module_rule(nn.ChannelShuffle)
def channel_shuffle(ctx: RuleContext) -> None:
    _shuffle_channels(ctx, ctx.module.groups)  # type: ignore[union-attr]


@register_function_rule(torch.channel_shuffle, torch.native_channel_shuffle)
def channel_shuffle_function(ctx: RuleContext) -> None:
    """``F.channel_shuffle(x, g)``, ``torch.native_channel_shuffle``: as ``nn.ChannelShuffle``
    (both pinned everything)."""
    _shuffle_channels(ctx, ctx.arg("groups"))


def _shuffle_channels(ctx: RuleContext, g: object) -> None:
    """Output channel ``b*g + a`` is input channel ``a*(C/g) + b``; position ``b`` is the channel."""
    x, out = ctx.axes(ctx.input), ctx.out()
    if x is None or len(x) < 2 or not isinstance(g, int) or g < 1 or ctx.graph.size(x[1]) % g:
        ctx.pin_everything(f"channel shuffle with unreadable groups {g!r} at {ctx.where()}")
        return
    ctx.same(x[:1] + x[2:], out[:1] + out[2:])
    c = ctx.graph.size(x[1])
    src = np.arange(c)
    ctx.graph.link(x[1], out[1], src, (src % (c // g)) * g + src // (c // g), kind="permute")
    ctx.graph.link(x[1], x[1], src, src % (c // g), kind="tie")


@register_module_rule(nn.Embedding)
def embedding(ctx: RuleContext) -> None:
    """Rows looked up by the ids (the vocabulary pins, unless the ids are positions along an
    axis of its length: ``self.emb(h.argmax(1))``), columns produce the output's last axis."""
    ids, out = ctx.axes(ctx.input), ctx.out()
    ctx.same(ids or [], out[:-1])
    ctx.produce(ctx.param("weight", (1,))[0], out[-1])
    vocabulary = ctx.param("weight", (0,))
    plain = ctx.module.padding_idx is None and ctx.module.max_norm is None  # type: ignore[union-attr]
    if not (plain and index_by_positions(ctx, ctx.input, vocabulary[0])):
        ctx.pin(vocabulary, f"vocabulary of {ctx.where()}")


@register_module_rule(nn.EmbeddingBag)
def embedding_bag(ctx: RuleContext) -> None:
    """Each bag sums, averages or takes the max of rows (the vocabulary pins): columns produce
    the output's last axis, exactly (a removed column is zero in every row)."""
    m = ctx.module
    assert isinstance(m, nn.EmbeddingBag)
    ctx.read_all()
    vocabulary, columns = ctx.param("weight")
    out = ctx.out()
    if m.max_norm is not None:  # rows renormalised in forward by their norm over every column
        ctx.pin_everything(f"{ctx.where()} with max_norm")
        return
    ctx.produce(columns, out[-1])
    ctx.pin([vocabulary], f"vocabulary of {ctx.where()}")
    ctx.pin(out[:-1], f"bags of {ctx.where()}")
