"""Rules for layers of torchvision and timm that the tracer should keep as leaves."""

from __future__ import annotations

import torch.nn.functional as F

from .ops_tensor import pointwise
from .rules import RuleContext, register_function_rule, register_module_rule


def channels_first_norm(ctx: RuleContext) -> None:
    """LayerNorm over the channel axis 1 of (B, C, H, W): per-channel affine, channels mix."""
    pointwise(ctx)
    channel = [ctx.out()[1]]
    ctx.graph.mix(channel[0], f"normalised by {ctx.where()}")
    for attr in ("weight", "bias"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), channel)
    if getattr(ctx.module, "weight", None) is None:
        ctx.pin(channel, f"{ctx.where()} has no affine parameters to resize")


@register_function_rule(F.layer_norm, F.rms_norm)
def layer_norm_function(ctx: RuleContext) -> None:
    """Functional layer norm: its ``normalized_shape`` is a literal, so the normalised axes pin."""
    pointwise(ctx)
    shape = ctx.arg(1, "normalized_shape")
    out = ctx.out()
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    ctx.pin(out[len(out) - k :], f"literal normalized_shape at {ctx.where()}")


def _register_optional() -> None:
    try:
        import torchvision.ops

        from .ops_tensor import unary

        register_function_rule(torchvision.ops.stochastic_depth)(unary)
    except ImportError:
        pass
    try:
        from torchvision.models.convnext import LayerNorm2d as TvLayerNorm2d

        register_module_rule(TvLayerNorm2d)(channels_first_norm)
    except ImportError:
        pass
    try:
        from timm.layers import LayerNorm2d as TimmLayerNorm2d

        register_module_rule(TimmLayerNorm2d)(channels_first_norm)
    except ImportError:
        pass


_register_optional()
