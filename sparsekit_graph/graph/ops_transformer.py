"""Rules torch's transformer layers need when traced through (``size_tracer.TRACED_TORCH_LAYERS``).

``nn.TransformerEncoderLayer`` and its kin are not leaves: their Python runs under the tracer,
made of layers with rules (``nn.MultiheadAttention``, linears, norms, dropout) and residual adds,
so heads, the feed-forward width and the model width plan as they would written out by hand.
What is left are the queries their mask handling makes of a tensor's layout
(``F._canonical_mask``: ``mask.dtype``, ``torch.is_floating_point(mask)``; ``src.is_nested``).

The trace is the plain path (``trace_mode.unfused_attention``). In eval the model may run
torch's fused one instead; surgery keeps that exact (``prune/mha.py``) except for the nested
tensors ``nn.TransformerEncoder`` makes of a padded batch, whose fused layers need
``num_heads * head_dim == embed_dim``: there the heads and the model width pin
(``nested_encoder``).
"""

from __future__ import annotations

import torch
from torch import nn

from .context import RuleContext
from .ops_sizes import fresh_tensor
from .rules import register_function_rule

__all__ = ["nested_encoder"]

register_function_rule(torch.Tensor.is_nested, torch.is_floating_point, torch.is_complex)(fresh_tensor)


def nested_encoder(ctx: RuleContext) -> str | None:
    """Why the ``nn.MultiheadAttention`` ``ctx`` runs, given a key padding mask, must keep its
    heads and width: an enclosing ``nn.TransformerEncoder`` may run it on nested tensors in
    eval (``use_nested_tensor``), through torch's fused layer, which splits ``embed_dim`` into
    ``num_heads`` heads and zeroes the padded positions the plain path computes. None if not."""
    parts = ctx.module_name.split(".")
    for k in range(len(parts) - 1, -1, -1):
        path = ".".join(parts[:k])
        owner = ctx.modules.get(path)
        if isinstance(owner, nn.TransformerEncoder) and getattr(owner, "use_nested_tensor", False):
            return (
                f"{path or 'the model'} (nn.TransformerEncoder, enable_nested_tensor) runs {ctx.where()} on nested "
                "tensors in eval, through torch's fused layer: its heads and width stay"
            )
    return None
