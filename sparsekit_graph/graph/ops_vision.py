"""Rules for layers of torchvision and timm that the tracer should keep as leaves, and how
layers of transformers resize themselves after surgery."""

from __future__ import annotations

import math
import sys

from .context import RuleContext
from .masked_values import SCALINGS
from .ops_conv import link_conv
from .ops_norm_layers import channel_norm
from .ops_swin import register_swin_rules
from .ops_tensor import pointwise
from .rules import register_function_rule, register_module_rule
from .sizes import register_size_attribute


def channels_first_norm(ctx: RuleContext) -> None:
    """LayerNorm over the channel axis 1 of (B, C, H, W): per-channel affine, channels mix."""
    pointwise(ctx)
    channel = [ctx.out()[1]]
    ctx.mix(channel, f"normalised by {ctx.where()}")
    for attr in ("weight", "bias"):
        if getattr(ctx.module, attr, None) is not None:
            ctx.same(ctx.param(attr), channel)
    if getattr(ctx.module, "weight", None) is None:
        ctx.pin(channel, f"{ctx.where()} has no affine parameters to resize")


def standardized_conv(ctx: RuleContext) -> None:
    """timm's weight-standardised convolutions (NFNet, BiT): each output row is standardised
    over its fan-in. A zeroed row stays zero, so output channels are exact; removing an input
    channel changes every row's mean and variance, so input channels are not zero-invariant."""
    m = ctx.module
    x, out = ctx.axes(ctx.input), ctx.out()
    assert x is not None and m is not None
    w = ctx.param("weight", (0, 1))
    co = link_conv(ctx, x, w, out, spatial=len(m.kernel_size), groups=m.groups, transposed=False)  # type: ignore[arg-type]
    ctx.mix([w[1]], f"weight standardisation over the fan-in of {ctx.where()}")
    if math.prod(m.kernel_size) == 1:  # type: ignore[arg-type]
        # ``F.batch_norm(w.reshape(1, out, -1), training=True)`` needs two fan-in values per row
        ctx.at_least(w[1], 2, f"weight standardisation (batch statistics over the fan-in) at {ctx.where()}")
    for attr in ("bias", "gain"):
        if getattr(m, attr, None) is not None:
            ctx.same(ctx.param(attr, (0,)), [out[co]])


def _torchvision_rules() -> None:
    import torchvision.ops
    from torchvision.models.convnext import LayerNorm2d

    register_function_rule(torchvision.ops.stochastic_depth)(pointwise)
    SCALINGS.add(torchvision.ops.stochastic_depth)  # a dropout: finite noise over the survival rate
    register_module_rule(LayerNorm2d)(channels_first_norm)
    # Detection backbones' BatchNorm with its affine and statistics as buffers: BatchNorm in eval
    # (traced, its ``(running_var + eps).rsqrt()`` of buffers alone was a constant that pinned).
    register_module_rule(torchvision.ops.FrozenBatchNorm2d)(channel_norm)
    register_swin_rules()


def _timm_rules() -> None:
    from timm.layers import LayerNorm2d
    from timm.layers.std_conv import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    register_module_rule(LayerNorm2d)(channels_first_norm)
    register_module_rule(StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)(standardized_conv)
    # EfficientFormerV2's attention views its values by ``self.dh`` (heads x value size, set in
    # ``__init__``): a size attribute, so surgery rewrites it with the heads (else they pin).
    register_size_attribute("dh")
    _timm_resizers()


def _timm_resizers() -> None:
    """timm's relative-position biases view their gathered table by a ``bias_shape`` tuple
    holding the head count (CoAtNet, MaxViT): it follows the table's head axis. A resizer
    makes the layer explain its own sizes, so that count is not taken for its attention's
    ``num_heads`` (rewritten while ``bias_shape`` kept the old count: the prune failed)."""
    from timm.layers.pos_embed_rel import RelPosBias, RelPosBiasTf

    from ..prune.surgery import register_resizer

    @register_resizer(RelPosBias)
    def _rel_pos_bias(m: RelPosBias) -> None:  # table (positions, heads)
        m.bias_shape = (*m.bias_shape[:-1], m.relative_position_bias_table.shape[-1])

    @register_resizer(RelPosBiasTf)
    def _rel_pos_bias_tf(m: RelPosBiasTf) -> None:  # table (heads, height, width)
        m.bias_shape = tuple(m.relative_position_bias_table.shape)
        m.num_heads = m.bias_shape[0]


def _transformers_layers() -> None:
    from transformers.pytorch_utils import Conv1D

    from ..prune.surgery import register_resizer

    @register_resizer(Conv1D)
    def _conv1d(m: Conv1D) -> None:  # GPT-2's transposed linear: weight (nx, nf)
        m.nx, m.nf = m.weight.shape


_PENDING = {"torchvision": _torchvision_rules, "timm": _timm_rules, "transformers": _transformers_layers}


def register_library_rules() -> None:
    """Register the rules for torchvision's, timm's and transformers' layers once those
    libraries are in use.

    Never imports them: a model built from them has imported them already, and importing timm
    for nothing would cost every user its import time (and every trace: fx patches
    ``nn.Module`` methods, which costs more the more layer classes exist).
    """
    for name in [n for n in _PENDING if n in sys.modules]:
        try:
            _PENDING.pop(name)()
        except ImportError:
            pass


register_library_rules()
