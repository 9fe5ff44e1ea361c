"""Rules for normalisation layers and their functional forms: batch, instance, group, layer and RMS norm.

Each keeps its channel axis (or normalised trailing axes) whole with its affine parameters and
running statistics; statistics computed from the input mix the axes they reduce over.
"""

from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .axes import AxisId
from .context import RuleContext
from .length_uses import read_axis
from .norm_statistics import mix_statistics, statistics_axes
from .ops_sizes import register_length_args
from .ops_tensor import pointwise
from .rules import register_function_rule, register_module_rule
from .singular import in_dtype
from .sizes import SizeSource

__all__ = ["channel_norm", "link_group_norm"]


@register_module_rule(nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm, nn.modules.instancenorm._InstanceNorm)
def channel_norm(ctx: RuleContext) -> None:
    """BatchNorm / InstanceNorm (and torchvision's FrozenBatchNorm2d, stored statistics only):
    per-channel statistics and affine parameters on axis 1."""
    pointwise(ctx)
    out, m = ctx.out(), ctx.module
    instance = isinstance(m, nn.modules.instancenorm._InstanceNorm)
    unbatched = instance and len(out) == m._get_no_batch_dim()  # type: ignore[union-attr]  # (C, L): channels first
    channel = [out[0 if unbatched or len(out) == 1 else 1]]
    computed = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm))
    if computed:  # in eval, stored statistics (if tracked); in training, the batch's: two values at least
        stats = out[1:] if unbatched else statistics_axes(out, batch=not instance)
        mix_statistics(ctx, stats, counted=True, mix=m.training or not m.track_running_stats)  # type: ignore[union-attr]
    tensors = [attr for attr in ("weight", "bias", "running_mean", "running_var") if getattr(m, attr, None) is not None]
    for attr in tensors:
        ctx.same(ctx.param(attr), channel)
    if not tensors and isinstance(count := getattr(m, "num_features", None), int):  # nothing resized counts them:
        source = SizeSource(ctx.module_name, "num_features")  # surgery rewrites the count its check reads
        ctx.graph.size_refs.setdefault(channel[0], set()).add(source)
        ctx.graph.size_values[source] = count


@register_function_rule(F.batch_norm, F.instance_norm)
def batch_norm_function(ctx: RuleContext) -> None:
    """Functional batch/instance norm (e.g. timm's BatchNormAct2d): 1-D tensors follow axis 1."""
    ctx.read_all()
    x, out = ctx.axes(ctx.input), ctx.out()
    if x is None:
        return
    ctx.same(x, out)
    instance = ctx.call.op is F.instance_norm
    stats = ctx.arg("use_input_stats", True) if instance else ctx.arg("training", False)
    # True, or a value the rule cannot read: statistics, fail closed; ``training=self.training``
    # is False in eval, and the train forward needs two values
    mix_statistics(ctx, statistics_axes(out, batch=not instance), counted=True, mix=stats is not False)
    for name in ("running_mean", "running_var", "weight", "bias"):
        axes = ctx.axes(ctx.arg(name))
        if axes is not None and len(axes) == 1:
            ctx.same(axes, [out[1]])


@register_module_rule(nn.GroupNorm)
def group_norm(ctx: RuleContext) -> None:
    pointwise(ctx)
    m = ctx.module
    affine = [ctx.param(attr) for attr in ("weight", "bias") if getattr(m, attr, None) is not None]
    link_group_norm(ctx, ctx.out(), m.num_groups, affine, resized=bool(affine))  # type: ignore[union-attr]
    if m.num_groups == m.num_channels:  # type: ignore[union-attr]
        eps_guard(ctx, ctx.out()[1:2], m.eps)  # type: ignore[union-attr]


def link_group_norm(
    ctx: RuleContext, out: list[AxisId], groups: int, affine: list[list[AxisId]], *, resized: bool = False
) -> None:
    """GroupNorm keeps its group count: channel ``k`` of every group is one channel (groups lose
    equally, like a grouped conv's). Its statistics change (not zero-invariant). With one
    channel per group the statistics are per channel, as InstanceNorm's: zero-invariant where
    the group count follows the channels (``resized``: a layer whose surgery rewrites
    ``num_groups`` from its affine weight), else pinned."""
    for axes in affine:
        ctx.same(axes, [out[1]])
    mix_statistics(ctx, statistics_axes(out, batch=False), counted=False)
    c = ctx.graph.size(out[1])
    if groups > 1 and c // groups == 1:
        if not resized:
            ctx.pin([out[1]], f"one channel per group of {ctx.where()}")
        return
    ctx.mix([out[1]], f"normalised by {ctx.where()}")
    if groups > 1:
        ctx.graph.link(out[1], out[1], np.arange(c), np.arange(c) % (c // groups), kind="tie")


@register_module_rule(nn.LayerNorm, nn.RMSNorm)
def layer_norm(ctx: RuleContext) -> None:
    """Normalised trailing axes mix (not zero-invariant); without affine parameters a single
    normalised axis is counted by the layer's own ``normalized_shape`` (recorded: surgery
    rewrites it; timm's ``LayerNorm(dim, affine=False)``), more pin."""
    pointwise(ctx)
    out = ctx.out()
    shape = tuple(ctx.module.normalized_shape)  # type: ignore[union-attr]
    trailing = out[len(out) - len(shape) :]
    ctx.mix(trailing, f"normalised by {ctx.where()}")
    eps_guard(ctx, out[: len(out) - len(shape)], ctx.module.eps)
    if getattr(ctx.module, "weight", None) is None:
        if len(shape) != 1:
            ctx.pin(trailing, f"{ctx.where()} has no affine parameters to resize")
            return
        source = SizeSource(ctx.module_name, "normalized_shape")
        ctx.graph.size_refs.setdefault(trailing[0], set()).add(source)
        ctx.graph.size_values[source] = shape[0]
        return
    for attr in ("weight", "bias"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), trailing)


register_length_args({"num_groups"}, F.group_norm)  # read off the channel axis it follows, else pinned


@register_function_rule(F.layer_norm, F.rms_norm, F.group_norm)
def layer_norm_function(ctx: RuleContext) -> None:
    """Functional norms mix the normalised axes; a ``normalized_shape`` that is no size attribute
    of the layer or model (or a group count) is a literal: those axes pin. Without affine
    parameters (OLMo's LayerNorm) an attribute alone sizes the axis: surgery rewrites it."""
    out = ctx.out()
    if ctx.call.op is F.group_norm:
        ctx.read_all()
        ctx.same(ctx.axes(ctx.input) or [], out)
        affine = [a for k in ("weight", "bias") if (a := ctx.axes(ctx.arg(k))) is not None]
        groups = ctx.arg("num_groups")
        channels = (ctx.axes(ctx.input) or [None, None])[1]
        if isinstance(groups, fx.Node) and channels is not None and read_axis(groups, ctx.axes) == channels:
            ctx.model_length(groups)  # ``F.group_norm(h, h.shape[1])``: one channel per group, whatever the count
            link_group_norm(ctx, out, ctx.meta(groups), affine, resized=True)
            eps_guard(ctx, out[1:2], ctx.arg("eps"))
            return
        if not isinstance(groups, int) or any(len(a) != 1 for a in affine):
            ctx.pin_everything(f"group norm with unreadable arguments at {ctx.where()}")
            return
        link_group_norm(ctx, out, groups, affine)
        if groups == ctx.graph.size(out[1]):
            eps_guard(ctx, out[1:2], ctx.arg("eps"))
        return
    pointwise(ctx)
    shape = ctx.arg("normalized_shape")
    # F.layer_norm(x, x.shape[-1:]) or (x.size(-1),): lengths read in forward follow the model
    parts = shape if isinstance(shape, (tuple, list)) else ()
    lengths = bool(parts) and all(isinstance(p, fx.Node) and isinstance(ctx.meta(p), int) for p in parts)
    read = isinstance(shape, fx.Node) or lengths
    value = ctx.meta(shape) if isinstance(shape, fx.Node) else shape
    k = len(value) if isinstance(value, (tuple, list)) else 1
    trailing = out[len(out) - k :]
    ctx.mix(trailing, f"normalised by {ctx.where()}")
    eps_guard(ctx, out[: len(out) - k], ctx.arg("eps"))
    # torch.export writes ``x.shape[-1:]`` as a literal: it must equal the input's trailing axes,
    # so it follows them as a reshape's kept literal does; a literal of the code fails prune's
    # re-trace of the pruned copy (``plan/probe.py``), which pins it there.
    if read or ctx.exported:
        return
    if k != 1 or not ctx.size_follows_model(trailing[0], shape):
        ctx.pin(trailing, f"literal normalized_shape at {ctx.where()}")


def eps_guard(ctx: RuleContext, kept: list[AxisId], eps: object) -> None:
    """A channel of ``kept`` axes that the layer normalises on its own is ``0 * rsqrt(0 + eps)``
    once masked: NaN where ``eps`` is 0 in the value's dtype (``eps=0.0``, ``1e-50`` in float32),
    which the next layer's zeroed columns do not remove. RMS norm's default eps (None) is the
    dtype's own."""
    dtype = ctx.meta(ctx.input).dtype
    if eps is None and ctx.call.op is not F.layer_norm:
        return
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and in_dtype(float(eps), dtype) != 0:
        return
    ctx.mix(kept, f"normalised by {ctx.where()} with eps {eps}, which a removed channel divides by")
