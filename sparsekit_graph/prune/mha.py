"""``nn.MultiheadAttention`` after head pruning.

The stock layer projects ``query`` (width ``embed_dim``) to ``3 * embed_dim`` packed rows of
``in_proj_weight`` and splits them into ``num_heads`` heads of ``embed_dim // num_heads``:
its heads' width must equal its input width. Once heads (or the residual width) are pruned the
two differ, so surgery turns the layer into ``PrunedMultiheadAttention``: the same parameters
under the same names, ``num_heads`` heads of the original ``head_dim`` each, any input width.
It computes what the stock layer computes when the widths agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import RESIZERS, registrar

__all__ = ["PrunedMultiheadAttention"]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads' width (``num_heads * head_dim``) may differ from
    its input width ``embed_dim``. Packed ``in_proj`` only (``kdim == vdim == embed_dim``), no
    ``bias_k``/``bias_v`` and no ``add_zero_attn``: the planner pins the others."""

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (L, 1, E)
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # (B, L, E) -> (L, B, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if is_causal and attn_mask is None:
            raise RuntimeError("need attn_mask if specifying the is_causal hint")
        (length, batch, _), source = query.shape, key.shape[0]
        heads, dim = self.num_heads, self.head_dim
        w = self.in_proj_weight.split(heads * dim)
        b = self.in_proj_bias.split(heads * dim) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(x, wi, bi).view(n, batch, heads, dim).permute(1, 2, 0, 3)  # (B, H, L|S, D)
            for x, wi, bi, n in zip((query, key, value), w, b, (length, source, source))
        )
        mask = _merged_mask(attn_mask, key_padding_mask, batch, heads, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(dim)  # (B, H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout)
            y = weights @ v
            if average_attn_weights:
                weights = weights.mean(1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.permute(2, 0, 1, 3).reshape(length, batch, heads * dim)  # (L, B, H*D)
        out = self.out_proj(y)
        if not batched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights


def _merged_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    batch: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """``attn_mask`` ((L, S) or (B*H, L, S)) and ``key_padding_mask`` ((B, S)) as one additive
    float mask broadcastable to (B, H, L, S); boolean masks mean True = not attended."""
    out = None
    if attn_mask is not None:
        m = _additive(attn_mask, dtype)
        out = m.view(batch, heads, length, source) if m.dim() == 3 else m
    if key_padding_mask is not None:
        m = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
        out = m if out is None else out + m
    return out


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


@registrar(RESIZERS)(nn.MultiheadAttention)
def _resize(m: nn.MultiheadAttention) -> None:
    """Head count from the sliced ``in_proj_weight`` (each head keeps ``head_dim`` rows of q, k
    and v); a layer whose heads no longer match its input width computes with the pruned class."""
    if not m._qkv_same_embed_dim or m.in_proj_weight is None:
        return
    inner = m.in_proj_weight.shape[0] // 3
    width = m.in_proj_weight.shape[1]
    m.num_heads = inner // m.head_dim
    m.embed_dim = m.kdim = m.vdim = width
    if inner != width and type(m) is nn.MultiheadAttention:
        m.__class__ = PrunedMultiheadAttention


@registrar(RESIZERS)(nn.TransformerEncoderLayer)
def _resize_encoder_layer(m: nn.TransformerEncoderLayer) -> None:
    """torch's fused eval path (``torch._transformer_encoder_layer_fwd``) splits ``embed_dim``
    into ``num_heads`` heads: a layer whose heads' width no longer equals its width takes the
    plain path, which computes the same. ``activation_relu_or_gelu`` is the flag the fast path
    checks; the plain path calls ``activation`` itself and never reads it."""
    w = m.self_attn.in_proj_weight
    if w is not None and w.shape[0] != 3 * w.shape[1]:
        m.activation_relu_or_gelu = 0
