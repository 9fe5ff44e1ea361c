"""Small models written the ways strangers write PyTorch: exact, pinned or refused, never wrong.

Each model goes through the DESIGN.md oracle (``check_oracle``: plan, round trip, prune at
0.5, masked dense == pruned on every zero-invariant group, the model bitwise untouched);
``plan`` may refuse only with a ``SparseKitError``. Pairs of spellings of one op must give
one plan.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import Body, assert_untouched, check_oracle, fingerprint, oracle_or_refusal, set_extras
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

C = 8  # channels of the block under test
X4 = (2, 3, 6, 6)  # (B, 3, H, W)
X3 = (2, 5, 6)  # (B, L, 6)


class Seq(nn.Module):
    """Linear-GELU (group ``fc:out``, 8 channels) -> ``fn(self, h)`` -> Linear head, on (B, L, 6)."""

    def __init__(self, fn: Callable[..., Tensor], **extra: nn.Module | nn.Parameter | Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(6, C)
        set_extras(self, extra)
        self.fn = fn
        with torch.no_grad():
            width = fn(self, torch.relu(self.fc(torch.randn(*X3)))).shape[-1]
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, C)
        return self.head(self.fn(self, h))


def _inplace_mul(self, h):
    g = h.clone()
    g.mul_(self.s.view(1, -1, 1, 1))
    return g


def _slice_write(self, h):
    out = h.new_zeros(h.shape)
    out[:, : h.shape[1] // 2] = h[:, : h.shape[1] // 2]
    return out + h


def _chunk_residual(self, h):
    a, b = h.chunk(2, dim=1)
    return torch.cat([a + b, b], dim=1)


def _var_mean(self, h):
    v, m = torch.var_mean(h, dim=1, keepdim=True)
    return (h - m) / (v + 1e-3).sqrt()


def _max_values(self, h):
    return h * h.max(dim=1, keepdim=True).values


def _topk(self, h):
    return h * h.topk(2, dim=1).values.sum(1, keepdim=True)


leaky = functools.partial(F.leaky_relu, negative_slope=0.2)


BODIES: dict[str, tuple[Callable[..., Tensor], dict]] = {
    # layout
    "cat_tensors_kw_dim_neg3": (lambda s, h: torch.cat(tensors=[h, h * 2], dim=-3), {}),
    "transpose_neg_axes": (lambda s, h: h.transpose(-1, -3).transpose(-3, -1), {}),
    "swapaxes_method": (lambda s, h: h.swapaxes(1, 3).swapaxes(3, 1), {}),
    "swapdims_method": (lambda s, h: h.swapdims(1, -1).swapdims(-1, 1), {}),
    "moveaxis_method": (lambda s, h: h.moveaxis(1, -1).moveaxis(-1, 1), {}),
    "movedim_fn_kw": (lambda s, h: torch.movedim(h, source=1, destination=3).movedim(3, 1), {}),
    "none_index_squeeze": (lambda s, h: h[:, :, None].squeeze(2), {}),
    "unsqueeze_neg_squeeze": (lambda s, h: h.unsqueeze(-1).squeeze(-1), {}),
    "stride_slice_spatial": (lambda s, h: h[..., ::2], {}),
    "stride_slice_channels": (lambda s, h: h[:, ::2], {}),
    "narrow_channels": (lambda s, h: torch.narrow(h, 1, 0, 4), {}),
    "stack_then_sum": (lambda s, h: torch.stack([h, 2 * h], dim=1).sum(1), {}),
    "stack_then_flatten": (lambda s, h: torch.stack([h, h], dim=2).flatten(1, 2), {}),
    "chunk_residual": (_chunk_residual, {}),
    "unfold_channels": (lambda s, h: h.unfold(1, 2, 2).sum(-1), {}),
    "expand_as_gate": (lambda s, h: h * h.mean((2, 3), keepdim=True).expand_as(h), {}),
    "repeat_channels": (lambda s, h: h.repeat(1, 2, 1, 1), {}),
    "tile_channels": (lambda s, h: h.tile((1, 2, 1, 1)), {}),
    "repeat_interleave_channels": (lambda s, h: h.repeat_interleave(2, dim=1), {}),
    "roll_channels": (lambda s, h: torch.roll(h, 1, 1), {}),
    "roll_spatial": (lambda s, h: torch.roll(h, shifts=1, dims=-1), {}),
    "flip_channels": (lambda s, h: torch.flip(h, [1]), {}),
    "flip_spatial": (lambda s, h: h.flip(-1), {}),
    "index_select_channels": (lambda s, h: h.index_select(1, torch.tensor([0, 2, 4])), {}),
    # pointwise and gates
    "where_relu": (lambda s, h: torch.where(h > 0.5, h, torch.zeros_like(h)), {}),
    "where_scalar": (lambda s, h: torch.where(h > 0.5, h, 0.0), {}),
    "addcmul_value": (lambda s, h: torch.addcmul(h, h, h, value=0.5), {}),
    "mul_inplace_param": (_inplace_mul, {"s": nn.Parameter(torch.rand(C) + 0.5)}),
    "slice_assignment": (_slice_write, {}),
    "partial_leaky": (lambda s, h: leaky(h - 0.5), {}),
    "clamp_min_kw": (lambda s, h: h.clamp(min=0.1) + h.clamp_min(0.2), {}),
    "scale_none_index": (lambda s, h: h * s.g[None, :, None, None], {"g": nn.Parameter(torch.rand(C))}),
    "scale_view": (
        lambda s, h: h * s.g.view(1, -1, 1, 1) + s.bias.reshape(-1, 1, 1),
        {"g": nn.Parameter(torch.rand(C)), "bias": nn.Parameter(torch.rand(C))},
    ),
    "scale_unsqueeze": (lambda s, h: h + s.bias.unsqueeze(-1).unsqueeze(-1), {"bias": nn.Parameter(torch.rand(C))}),
    # reductions over the channel axis
    "sum_dim_list": (lambda s, h: h * h.sum(dim=[1], keepdim=True), {}),
    "amax_channels": (lambda s, h: h * h.amax(1, keepdim=True), {}),
    "max_values": (_max_values, {}),
    "topk_channels": (_topk, {}),
    "norm_dim1": (lambda s, h: h / (h.norm(dim=1, keepdim=True) + 1e-3), {}),
    "vector_norm_dim1": (lambda s, h: h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-3), {}),
    "normalize_p1": (lambda s, h: F.normalize(h, p=1.0, dim=1), {}),
    "normalize_kw_input": (lambda s, h: F.normalize(input=h, dim=-3), {}),
    "cumsum_channels": (lambda s, h: torch.cumsum(h, dim=1), {}),
    "softmax_channels_method": (lambda s, h: h.softmax(1), {}),
    "softmax_channels_fn": (lambda s, h: F.softmax(h, dim=-3), {}),
    "log_softmax_channels": (lambda s, h: h.log_softmax(dim=1), {}),
    "std_channels": (lambda s, h: h / (h.std(1, keepdim=True) + 1e-3), {}),
    "var_mean_channels": (_var_mean, {}),
    "glu_channels": (lambda s, h: F.glu(h, dim=1), {}),
    "logsumexp_channels": (lambda s, h: h - torch.logsumexp(h, dim=1, keepdim=True), {}),
    "abs_sum_channels": (lambda s, h: h * h.abs().sum(1, keepdim=True), {}),
    "square_sum_sqrt": (lambda s, h: h / (torch.square(h).sum(1, keepdim=True).sqrt() + 1e-3), {}),
    "exp_sum_channels": (lambda s, h: h * h.exp().sum(1, keepdim=True), {}),
    "mean_over_size": (lambda s, h: h * (h.sum(1, keepdim=True).div(h.shape[-3])), {}),
    # layers
    "groupnorm_2": (lambda s, h: s.gn(h), {"gn": nn.GroupNorm(2, C)}),
    "groupnorm_8": (lambda s, h: s.gn(h), {"gn": nn.GroupNorm(C, C)}),
    "groupnorm_1": (lambda s, h: s.gn(h), {"gn": nn.GroupNorm(1, C)}),
    "instancenorm_affine": (lambda s, h: s.inorm(h), {"inorm": nn.InstanceNorm2d(C, affine=True)}),
    "instancenorm_plain": (lambda s, h: s.inorm(h), {"inorm": nn.InstanceNorm2d(C)}),
    "pixel_shuffle": (lambda s, h: s.ps(h), {"ps": nn.PixelShuffle(2)}),
    "pixel_unshuffle": (lambda s, h: s.pu(h), {"pu": nn.PixelUnshuffle(2)}),
    "upsample_module": (lambda s, h: s.up(h), {"up": nn.Upsample(scale_factor=2)}),
    "interpolate_kw": (lambda s, h: F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False), {}),
    "prelu_channels": (lambda s, h: s.pr(h - 0.5), {"pr": nn.PReLU(num_parameters=C)}),
    "prelu_one": (lambda s, h: s.pr(h - 0.5), {"pr": nn.PReLU()}),
    "softmax2d": (lambda s, h: s.sm(h), {"sm": nn.Softmax2d()}),
    "conv_groups_param": (
        lambda s, h: F.conv2d(h, s.w, s.wb, padding=1, groups=2),
        {"w": nn.Parameter(torch.randn(C, C // 2, 3, 3) * 0.2), "wb": nn.Parameter(torch.randn(C))},
    ),
    "conv_depthwise_param": (lambda s, h: F.conv2d(h, s.w, groups=C), {"w": nn.Parameter(torch.randn(2 * C, 1, 1, 1))}),
    "conv_buffer_weight": (lambda s, h: F.conv2d(h, s.wbuf), {"wbuf": torch.randn(6, C, 1, 1)}),
    "sequential_subclass": (lambda s, h: s.seq(h), {"seq": type("MySeq", (nn.Sequential,), {})(nn.Conv2d(C, C, 1), nn.ReLU())}),
    "module_dict": (
        lambda s, h: s.md["act"](s.md["conv"](h)),
        {"md": nn.ModuleDict({"conv": nn.Conv2d(C, 6, 1), "act": nn.ReLU()})},
    ),
    "module_list_loop": (
        lambda s, h: functools.reduce(lambda t, m: m(t), s.ml, h),
        {"ml": nn.ModuleList([nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, 6, 1)])},
    ),
    "conv_twice": (lambda s, h: s.twice(torch.relu(s.twice(h))), {"twice": nn.Conv2d(C, C, 3, padding=1)}),
    "orthogonal_param": (lambda s, h: s.oc(h), {"oc": nn.utils.parametrizations.orthogonal(nn.Conv2d(C, C, 1))}),
    "weight_norm_dim_none": (lambda s, h: s.wn(h), {"wn": nn.utils.parametrizations.weight_norm(nn.Conv2d(C, 6, 1), dim=None)}),
    "einsum_param": (lambda s, h: torch.einsum("bchw,oc->bohw", h, s.w), {"w": nn.Parameter(torch.randn(6, C))}),
    "einsum_reduce": (lambda s, h: h * torch.einsum("bchw->bc", h)[:, :, None, None], {}),
    "expand_size_read": (lambda s, h: h + h.sum(1, keepdim=True).expand(-1, h.shape[1], -1, -1), {}),
    "expand_literal": (lambda s, h: h + h.sum(1, keepdim=True).expand(-1, C, -1, -1), {}),
    "channels_last_linear": (lambda s, h: s.lin(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), {"lin": nn.Linear(C, 6)}),
    "masked_fill_buffer": (lambda s, h: h.masked_fill(s.m, 0.0), {"m": torch.rand(1, C, 1, 1) > 0.5}),
    "new_ones_scale": (lambda s, h: h * h.new_ones(h.shape[1])[None, :, None, None], {}),
    "depthwise_module": (lambda s, h: s.dw(h), {"dw": nn.Conv2d(C, C, 3, padding=1, groups=C)}),
    "conv_transpose_groups": (lambda s, h: s.ct(h), {"ct": nn.ConvTranspose2d(C, 6, 2, stride=2, groups=2)}),
    "advanced_index": (lambda s, h: h[:, [0, 2, 4]], {}),
    "maxpool_indices": (lambda s, h: F.max_pool2d(h, 2, return_indices=True)[0], {}),
    "tensordot_param": (
        lambda s, h: torch.tensordot(h, s.w, dims=([1], [1])).permute(0, 3, 1, 2),
        {"w": nn.Parameter(torch.randn(6, C))},
    ),
    "zeros_like_alone": (lambda s, h: torch.zeros_like(h) + 1, {}),
    "zeros_of_read_shape": (lambda s, h: torch.zeros(h.shape) + h.new_ones(h.size(0), h.size(1), 1, 1), {}),
    "div_out_channels": (lambda s, h: h * (h.sum(1, keepdim=True) / s.a.out_channels), {}),
    "div_num_features": (lambda s, h: h / s.bn.num_features, {}),
    "div_weight_len": (lambda s, h: h * (h.sum(1, keepdim=True) / s.a.weight.shape[0]), {}),
    "param_norm_scale": (lambda s, h: h * s.a.weight.norm(), {}),
    "copy_into_empty": (lambda s, h: torch.empty_like(h).copy_(h), {}),
    "slice_mul_inplace": (lambda s, h: (lambda g: (g[:, :4].mul_(2), g)[1])(h.clone()), {}),
    "index_fill_channels": (lambda s, h: h.clone().index_fill_(1, torch.tensor([0]), 0.0), {}),
    "relu_inplace_then_sum": (lambda s, h: h * F.relu(h - 0.5, inplace=True).sum(1, keepdim=True), {}),
    "module_on_two_branches": (lambda s, h: s.sh(h) + s.sh(torch.relu(-h)), {"sh": nn.Conv2d(C, C, 1)}),
    "where_scalar_first": (lambda s, h: torch.where(h > 0.5, 1.0, h), {}),
    "clamp_tensor_bound": (lambda s, h: h.clamp(min=s.lo[None, :, None, None]), {"lo": nn.Parameter(torch.rand(C))}),
    "sigmoid_mean_channels": (lambda s, h: h * torch.sigmoid(h).mean(1, keepdim=True), {}),
    "fold_unfold": (lambda s, h: F.fold(F.unfold(h, 3, padding=1), h.shape[-2:], 3, padding=1), {}),
    # divisors and logarithms of a channel's members: masked, 0 / 0 is NaN (were claimed zero-invariant)
    "div_by_param": (lambda s, h: h / s.g.view(1, -1, 1, 1), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "rsqrt_param": (lambda s, h: h * s.g.rsqrt()[:, None, None], {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "log_param_shift": (lambda s, h: h + s.g.log()[:, None, None], {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "div_spatial_sum": (lambda s, h: h / h.sum((2, 3), keepdim=True), {}),
    "div_by_param_eps": (lambda s, h: h / (s.g.abs() + 1e-3)[:, None, None], {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "div_by_buffer": (lambda s, h: h / s.g[:, None, None], {"g": torch.rand(C) + 0.5}),
    "einsum_scale_param": (lambda s, h: torch.einsum("bchw,c->bchw", h, s.g), {"g": nn.Parameter(torch.rand(C))}),
    "conv_padding_same": (
        lambda s, h: F.conv2d(h, s.w, s.wb, padding="same"),
        {"w": nn.Parameter(torch.randn(6, C, 3, 3) * 0.2), "wb": nn.Parameter(torch.randn(6))},
    ),
    "batch_norm_functional": (
        lambda s, h: F.batch_norm(h, s.rm, s.rv, s.bw, s.bb, training=False),
        {"rm": torch.randn(C), "rv": torch.rand(C) + 0.5, "bw": nn.Parameter(torch.rand(C)), "bb": nn.Parameter(torch.rand(C))},
    ),
    "cat_new_zeros_channels": (lambda s, h: torch.cat([h, h.new_zeros(h.shape[0], 4, h.shape[2], h.shape[3])], 1), {}),
    "stack_sum0": (lambda s, h: torch.stack([h, h * 2]).sum(0), {}),
    "view_star_shape": (lambda s, h: h.view(*h.shape[:2], -1).view_as(h), {}),
    "conv_buffer_sigmoid": (lambda s, h: h * F.conv2d(h.sigmoid(), s.o), {"o": torch.ones(1, C, 1, 1)}),
    # einsum sums: a reduction of values that are not zero for a removed channel (was zero-invariant)
    "einsum_reduce_sigmoid": (lambda s, h: h * torch.einsum("bchw->bhw", h.sigmoid())[:, None], {}),
    "einsum_buffer_sigmoid": (lambda s, h: h * torch.einsum("bchw,c->bhw", h.sigmoid(), s.o)[:, None], {"o": torch.rand(C)}),
    "einsum_ellipsis_mix": (lambda s, h: torch.einsum("bc...,oc->bo...", h, s.w), {"w": nn.Parameter(torch.randn(6, C))}),
}


def _lstm(self, h):
    out, _ = self.rnn(h)
    return out


def _gru_loop(self, h):
    out = torch.zeros(h.shape[0], 6)
    for t in range(h.shape[1]):
        out = self.cell(h[:, t], out)
    return out.unsqueeze(1).expand(-1, h.shape[1], -1)


def _bmm_param(self, h):
    return torch.bmm(h, self.w.expand(h.shape[0], -1, -1))


SEQ_BODIES: dict[str, tuple[Callable[..., Tensor], dict]] = {
    "matmul_param": (lambda s, h: torch.matmul(h, s.w), {"w": nn.Parameter(torch.randn(C, 5))}),
    "at_param_T": (lambda s, h: h @ s.w.T, {"w": nn.Parameter(torch.randn(5, C))}),
    "bmm_param": (_bmm_param, {"w": nn.Parameter(torch.randn(1, C, 5))}),
    "bilinear": (lambda s, h: s.bil(h, h), {"bil": nn.Bilinear(C, C, 4)}),
    "lstm": (_lstm, {"rnn": nn.LSTM(C, 6, batch_first=True)}),
    "gru": (_lstm, {"rnn": nn.GRU(C, 6, batch_first=True)}),
    "shared_param_two_layers": (
        lambda s, h: F.linear(torch.relu(F.linear(h, s.w)), s.w),
        {"w": nn.Parameter(torch.randn(C, C) * 0.3)},
    ),
    "linear_sliced_weight": (lambda s, h: F.linear(h, s.w[:4]), {"w": nn.Parameter(torch.randn(6, C))}),
    "layernorm_channels_last": (lambda s, h: s.ln(h), {"ln": nn.LayerNorm(C)}),
    "layernorm_no_affine": (lambda s, h: s.ln(h), {"ln": nn.LayerNorm(C, elementwise_affine=False)}),
    "conv1d_permuted": (lambda s, h: s.conv(h.transpose(1, 2)).transpose(1, 2), {"conv": nn.Conv1d(C, 6, 3, padding=1)}),
    "softmax_last": (lambda s, h: h.softmax(-1), {}),
    "mean_last_keepdim": (lambda s, h: h - h.mean(-1, keepdims=True), {}),
    "rms_by_hand": (lambda s, h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6), {}),
    "flatten_all_but_batch": (lambda s, h: h.flatten(start_dim=1), {}),
    "reshape_heads": (lambda s, h: h.reshape(h.shape[0], h.shape[1], 2, -1).transpose(1, 2).transpose(1, 2).reshape(h.shape), {}),
    "sequence_pool_cat": (lambda s, h: torch.cat([h.mean(1, keepdim=True), h], dim=1), {}),
    "cumsum_sequence": (lambda s, h: h.cumsum(dim=1), {}),
    "roll_sequence": (lambda s, h: h.roll(1, 1), {}),
    "linear_on_sequence": (lambda s, h: s.mix(h.transpose(-1, -2)).transpose(-1, -2), {"mix": nn.Linear(5, 5)}),
    "swiglu_chunk": (lambda s, h: (lambda a, b: a * F.silu(b))(*s.up(h).chunk(2, -1)), {"up": nn.Linear(C, 12)}),
    "gram_products": (lambda s, h: (h @ h.transpose(-1, -2)) @ h, {}),
    "layer_norm_shape_read": (lambda s, h: F.layer_norm(h, h.shape[-1:]), {}),
    "layer_norm_literal": (
        lambda s, h: F.layer_norm(h, (C,), s.lw, s.lb),
        {"lw": nn.Parameter(torch.ones(C)), "lb": nn.Parameter(torch.zeros(C))},
    ),
    "baddbmm_param": (
        lambda s, h: torch.baddbmm(s.b, h, s.w.expand(h.shape[0], -1, -1)),
        {"b": nn.Parameter(torch.zeros(5)), "w": nn.Parameter(torch.randn(1, C, 5))},
    ),
    "split_literal_reversed": (lambda s, h: torch.cat(h.split(4, dim=-1)[::-1], -1), {}),
    "unbind_stack": (lambda s, h: torch.stack(h.unbind(1), 1), {}),
    "embedding_fn_positions": (
        lambda s, h: h + F.embedding(torch.arange(h.shape[1]), s.pos)[None],
        {"pos": nn.Parameter(torch.randn(5, C))},
    ),
    "gru_cell_loop": (_gru_loop, {"cell": nn.GRUCell(C, 6)}),
    "reciprocal_param": (lambda s, h: h * s.g.reciprocal(), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "rdiv_param": (lambda s, h: h * (1 / s.g), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "pow_negative_param": (lambda s, h: h * s.g**-0.5, {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "div_inplace_param": (lambda s, h: h.clone().div_(s.g), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "addcdiv_param": (lambda s, h: torch.addcdiv(h, h, s.g), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "temperature_softmax": (lambda s, h: (h / s.t).softmax(1), {"t": nn.Parameter(torch.rand(C) + 0.5)}),
    "div_by_exp_param": (lambda s, h: h / s.g.exp(), {"g": nn.Parameter(torch.rand(C))}),
    "einsum_bld_hd": (lambda s, h: torch.einsum("bld,hd->blh", h, s.w), {"w": nn.Parameter(torch.randn(5, C))}),
    "matmul_batched_param": (lambda s, h: torch.matmul(h, s.w), {"w": nn.Parameter(torch.randn(1, C, 5))}),
    "view_star_heads": (lambda s, h: h.view(*h.shape[:2], 2, -1).flatten(2), {}),
    # a buffer is no member masks zero: sigmoid(0) @ buffer still adds (was claimed zero-invariant)
    "matmul_buffer_sigmoid": (lambda s, h: h * (h.sigmoid() @ s.o), {"o": torch.ones(C, 1)}),
    "matmul_constant_reduce": (lambda s, h: h * (h.sigmoid() @ torch.ones(C, 1)), {}),
    "matmul_constant_mean": (lambda s, h: h - h @ torch.full((C, C), 1.0 / C), {}),
    "layer_norm_size_tuple": (lambda s, h: F.layer_norm(h, (h.size(-1),)), {}),
    "layer_norm_size_list": (lambda s, h: F.layer_norm(h, [h.shape[-1]]), {}),
    "linear_buffer_sigmoid": (lambda s, h: h * F.linear(h.sigmoid(), s.o), {"o": torch.ones(1, C)}),
}


# The default run checks these (the models that found bugs, one per family of ops); the
# rest run with ``-m slow``, to keep the default step short.
QUICK = {
    "conv_depthwise_param", "conv_groups_param", "where_relu", "glu_channels", "repeat_channels", "tile_channels",
    "flip_channels", "roll_channels", "pixel_shuffle", "cumsum_channels", "exp_sum_channels", "norm_dim1",
    "var_mean_channels", "mul_inplace_param", "slice_assignment", "groupnorm_2", "prelu_channels", "stack_then_sum",
    "chunk_residual", "module_dict", "scale_none_index", "unfold_channels", "narrow_channels", "softmax2d",
    "bmm_param", "bilinear", "lstm", "linear_sliced_weight", "conv1d_permuted", "reshape_heads", "rms_by_hand",
    "view_literal_chw", "flatten_channels_last", "view_size0", "max_values", "adaptive_view", "sum_twice",
    "div_out_channels", "div_num_features", "zeros_like_alone", "zeros_of_read_shape",
    "maxpool_indices", "baddbmm_param", "layer_norm_shape_read", "embedding_fn_positions", "gru_cell_loop",
    "div_by_param", "rsqrt_param", "div_spatial_sum", "reciprocal_param", "pow_negative_param",
    "matmul_buffer_sigmoid", "matmul_constant_reduce", "linear_buffer_sigmoid", "conv_buffer_sigmoid",
    "einsum_reduce_sigmoid", "einsum_buffer_sigmoid", "einsum_ellipsis_mix", "layer_norm_size_tuple",
}  # fmt: skip


def _cases(names: list[str]) -> list:
    return [pytest.param(n, id=n, marks=() if n in QUICK else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _cases(sorted(BODIES)))
def test_conv_spellings(name: str, tmp_path: Path) -> None:
    fn, extra = BODIES[name]
    oracle_or_refusal(Body(fn, **extra), torch.randn(*X4), tmp_path)


@pytest.mark.parametrize("name", _cases(sorted(SEQ_BODIES)))
def test_sequence_spellings(name: str, tmp_path: Path) -> None:
    fn, extra = SEQ_BODIES[name]
    oracle_or_refusal(Seq(fn, **extra), torch.randn(*X3), tmp_path)


# -- whole models --------------------------------------------------------------------------


class Flat(nn.Module):
    """conv-ReLU (8 channels, 4x4) -> ``how`` -> Linear: every spelling of flattening."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.fc, self.flat, self.how = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C * 16, 5), nn.Flatten(), how

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))  # (B, 8, 4, 4)
        flat = {
            "flatten_start_dim": lambda: h.flatten(start_dim=1),
            "torch_flatten": lambda: torch.flatten(h, 1),
            "flatten_module": lambda: self.flat(h),
            "view_size0": lambda: h.view(h.size(0), -1),
            "reshape_shape0": lambda: h.reshape(h.shape[0], -1),
            "view_literal_chw": lambda: h.view(-1, C * 16),
            "reshape_len": lambda: h.reshape(len(h), -1),
            "flatten_channels_last": lambda: h.permute(0, 2, 3, 1).flatten(1),
            "movedim_flatten": lambda: h.movedim(1, -1).reshape(h.shape[0], -1),
        }[self.how]()
        return self.fc(flat)


FLATS = ["flatten_start_dim", "torch_flatten", "flatten_module", "view_size0", "reshape_shape0", "view_literal_chw",
         "reshape_len", "flatten_channels_last", "movedim_flatten"]  # fmt: skip


@pytest.mark.parametrize("how", _cases(FLATS))
def test_flatten_into_linear(how: str, tmp_path: Path) -> None:
    model, x = Flat(how), torch.randn(2, 3, 4, 4)
    plan = skg.plan(model, x)
    for g in plan.prunable:  # only the conv's channels, never a spatial position
        assert any(m.param == "conv.weight" and m.axis == 0 for m in g.members), g
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class Pooled(nn.Module):
    """conv-ReLU -> a spatial reduction -> Linear."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.fc, self.how = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 5), how

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        pooled = {
            "sum_dim_list": lambda: h.sum(dim=[2, 3]),
            "sum_neg": lambda: torch.sum(h, dim=(-1, -2)),
            "sum_twice": lambda: h.sum(-1).sum(-1),
            "mean_axis": lambda: h.mean(axis=(2, 3)),
            "amax": lambda: h.amax(dim=(2, 3)),
            "amax_fn": lambda: torch.amax(h, (-2, -1)),
            "adaptive_view": lambda: F.adaptive_avg_pool2d(h, 1).view(h.size(0), -1),
            "adaptive_squeeze": lambda: F.adaptive_avg_pool2d(h, (1, 1)).squeeze(-1).squeeze(-1),
            "max_values": lambda: h.flatten(2).max(dim=-1).values,
            "logsumexp": lambda: torch.logsumexp(h.flatten(2), -1),
        }[self.how]()
        return self.fc(pooled)


POOLS = ["sum_dim_list", "sum_neg", "sum_twice", "mean_axis", "amax", "amax_fn", "adaptive_view", "adaptive_squeeze",
         "max_values", "logsumexp"]  # fmt: skip


@pytest.mark.parametrize("how", _cases(POOLS))
def test_spatial_reductions_keep_channels(how: str, tmp_path: Path) -> None:
    model, x = Pooled(how), torch.randn(2, 3, 4, 4)
    group = skg.plan(model, x).group("conv:out")
    assert group.prunable and group.zero_invariant, group.reason
    check_oracle(model, x, tmp_path, min_drop=0.0)


class Embed(nn.Module):
    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, C, padding_idx=padding_idx)
        self.fc, self.head = nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, ids: Tensor) -> Tensor:  # (B, L) int64
        return self.head(torch.relu(self.fc(self.emb(ids))))


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_padding_idx(padding_idx: int | None, tmp_path: Path) -> None:
    model, ids = Embed(padding_idx), torch.randint(0, 20, (2, 5))
    plan = skg.plan(model, ids)
    assert plan.group("fc:out").prunable
    assert all(m.axis == 1 for g in plan.prunable for m in g.members if m.param == "emb.weight")  # never the vocabulary
    check_oracle(model, ids, tmp_path, min_drop=0.0)


class KwargsNet(nn.Module):
    """``forward(x, *, scale=None, **extra)`` called with a dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, x: Tensor, scale: Tensor | None = None, **extra: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if scale is not None:
            h = h * scale
        return self.b(h + extra["shift"])


class DictNet(nn.Module):
    """``forward(batch)`` taking a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.b(torch.relu(self.a(batch["x"])) * batch["mask"])


def test_keyword_inputs(tmp_path: Path) -> None:
    x = {"x": torch.randn(2, 6), "scale": torch.rand(2, 1), "shift": torch.zeros(2, 1)}
    check_oracle(KwargsNet(), x, tmp_path, min_drop=0.0)
    model = DictNet()
    before = fingerprint(model)
    batch = {"x": torch.randn(2, 6), "mask": torch.ones(2, 1)}
    try:
        plan = skg.plan(model, (batch,))
    except skg.SparseKitError as e:  # a refusal names what it cannot read
        assert_untouched(model, before, "refused plan")
        assert "input0" in str(e) and "dict" in str(e), e
        return
    assert_untouched(model, before, "plan")
    small = skg.prune(model, plan, ratio=0.5).model
    assert small(batch).shape == (2, 3)


# -- one op, two spellings, one plan --------------------------------------------------------

PAIRS: dict[str, list[Callable[..., Tensor]]] = {
    "transpose": [
        lambda s, h: h.transpose(-1, -3).transpose(-3, -1),
        lambda s, h: h.swapaxes(1, 3).swapaxes(3, 1),
        lambda s, h: torch.swapdims(h, 3, 1).transpose(dim0=1, dim1=3),
    ],
    "movedim": [
        lambda s, h: h.moveaxis(1, -1).moveaxis(-1, 1),
        lambda s, h: torch.movedim(h, source=(1,), destination=(3,)).permute(0, 3, 1, 2),
        lambda s, h: h.permute(dims=[0, 2, 3, 1]).movedim(-1, -3),
    ],
    "cat": [
        lambda s, h: torch.cat(tensors=[h, 2 * h], dim=-3),
        lambda s, h: torch.concatenate((h, 2 * h), axis=1),
        lambda s, h: torch.cat([h, h.mul(2)], 1),
    ],
    "repeat": [
        lambda s, h: h.repeat(1, 2, 1, 1),
        lambda s, h: h.tile((1, 2, 1, 1)),
        lambda s, h: h.tile(1, 2, 1, 1),
        lambda s, h: torch.cat([h, h], dim=1),
    ],
    "flip_spatial": [
        lambda s, h: h.flip(-1),
        lambda s, h: torch.flip(h, dims=(3,)),
        lambda s, h: h.flip([-1]),
    ],
    "sum_channels": [
        lambda s, h: h * h.sum(dim=[1], keepdim=True),
        lambda s, h: h * torch.sum(h, axis=1, keepdims=True),
        lambda s, h: h * h.sum(-3)[:, None],
        lambda s, h: h * h.sum(1).unsqueeze(1),
    ],
    "norm_channels": [
        lambda s, h: h / (h.norm(dim=1, keepdim=True) + 1e-3),
        lambda s, h: h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-3),
        lambda s, h: h / (torch.norm(h, p=2, dim=1, keepdim=True) + 1e-3),
    ],
    "softmax_channels": [
        lambda s, h: h.softmax(1),
        lambda s, h: F.softmax(h, dim=-3),
        lambda s, h: torch.softmax(h, 1),
        lambda s, h: nn.Softmax2d()(h),
    ],
    "std_channels": [
        lambda s, h: h / (h.std(1, keepdim=True) + 1e-3),
        lambda s, h: h / (torch.std(h, dim=1, keepdim=True) + 1e-3),
        lambda s, h: h / (torch.std_mean(h, 1, keepdim=True)[0] + 1e-3),
    ],
    "gate_where": [
        lambda s, h: torch.where(h > 0.5, h, 0.0),
        lambda s, h: torch.where(h > 0.5, h, torch.zeros_like(h)),
        lambda s, h: h.masked_fill(h <= 0.5, 0.0),
        lambda s, h: h * (h > 0.5),
    ],
    "glu": [
        lambda s, h: F.glu(h, dim=1),
        lambda s, h: F.glu(h, -3),
        lambda s, h: h.chunk(2, 1)[0] * torch.sigmoid(h.chunk(2, 1)[1]),
    ],
    "leaky": [
        lambda s, h: leaky(h),
        lambda s, h: F.leaky_relu(h, 0.2),
        lambda s, h: nn.LeakyReLU(0.2)(h),
        lambda s, h: F.leaky_relu(input=h, negative_slope=0.2),
    ],
    "inplace_scale": [
        lambda s, h: h.clone().mul_(2.0),
        lambda s, h: h * 2.0,
        lambda s, h: torch.mul(h, 2.0),
    ],
    "cumsum": [
        lambda s, h: torch.cumsum(h, dim=1),
        lambda s, h: h.cumsum(1),
        lambda s, h: h.cumsum(dim=-3),
    ],
    "pixel_shuffle": [
        lambda s, h: F.pixel_shuffle(h, 2),
        lambda s, h: nn.PixelShuffle(2)(h),
        lambda s, h: F.pixel_shuffle(h, upscale_factor=2),
    ],
    "upsample": [
        lambda s, h: F.interpolate(h, scale_factor=2),
        lambda s, h: nn.Upsample(scale_factor=2)(h),
        lambda s, h: F.interpolate(input=h, scale_factor=2.0, mode="nearest"),
    ],
    "halves": [
        lambda s, h: h.chunk(2, 1)[1] * 2,
        lambda s, h: torch.tensor_split(h, 2, dim=1)[1] * 2,
        lambda s, h: h.split(h.size(1) // 2, 1)[1] * 2,
        lambda s, h: h.split(h.shape[1] // 2, dim=1)[1] * 2,
    ],
    "spatial_view": [
        lambda s, h: h.view(h.size(0), h.size(1), -1).view(h.shape),
        lambda s, h: h.reshape(h.shape[0], h.shape[1], h.shape[2] * h.shape[3]).reshape(h.size()),
        lambda s, h: h.flatten(2).unflatten(2, h.shape[2:]),
        lambda s, h: h.flatten(start_dim=2).view_as(h),
    ],
}


def _key(plan: skg.Plan) -> list[tuple]:
    members = lambda g: sorted((m.param, m.axis, m.start, m.stop, m.block) for m in g.members)  # noqa: E731
    return sorted((g.size, g.prunable, g.zero_invariant, members(g)) for g in plan.groups if "model" not in (g.reason or ""))


@pytest.mark.parametrize("op", sorted(PAIRS))
def test_spellings_give_one_plan(op: str) -> None:
    x = torch.randn(*X4)
    keys = []
    for fn in PAIRS[op]:
        torch.manual_seed(0)
        keys.append(_key(skg.plan(Body(fn), x)))
    assert all(k == keys[0] for k in keys[1:]), keys


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_group_norm_keeps_its_groups(groups: int, tmp_path: Path) -> None:
    """GroupNorm (module or function): groups lose channels equally, never zero-invariant. With
    one channel per group the statistics are per channel (zero-invariant, as InstanceNorm's): the
    layer's group count follows its weight in surgery, a literal count in a call does not (pinned)."""
    module = Body(lambda s, h: s.gn(h), gn=nn.GroupNorm(groups, C))
    function = Body(lambda s, h: F.group_norm(h, groups, s.gn.weight, s.gn.bias), gn=nn.GroupNorm(groups, C))
    x = torch.randn(*X4)
    group = skg.plan(module, x).group("a:out")
    if groups == C:
        called = skg.plan(function, x).group("a:out")
        assert not called.prunable and "one channel per group" in (called.reason or "")
        assert group.prunable and group.zero_invariant
        result = check_oracle(module, x, tmp_path, min_drop=0.0, require=False)
        assert result.model.gn.num_groups == result.model.gn.num_channels == result.model.a.out_channels
        return
    assert _key(skg.plan(module, x)) == _key(skg.plan(function, x))
    assert group.prunable and not group.zero_invariant
    result = check_oracle(module, x, tmp_path, min_drop=0.0, require=False)
    assert result.model.gn.num_groups == groups and result.model.gn.num_channels == result.model.a.out_channels


@pytest.mark.parametrize(
    ("body", "zero_invariant"),
    [
        pytest.param(lambda s, h: h / s.g.view(1, -1, 1, 1), False, id="param"),
        pytest.param(lambda s, h: h * s.g.rsqrt()[:, None, None], False, id="rsqrt"),
        pytest.param(lambda s, h: h / h.sum((2, 3), keepdim=True), False, id="spatial-sum"),
        pytest.param(lambda s, h: h / (s.g.abs() + 1e-3)[:, None, None], True, id="param-plus-eps"),
        pytest.param(lambda s, h: h / s.g.exp()[:, None, None], True, id="exp"),
        pytest.param(lambda s, h: h / (h.norm(dim=1, keepdim=True) + 1e-3), True, id="broadcast-norm"),
    ],
)
def test_divisors_that_vanish_with_the_channel(body: Callable[..., Tensor], zero_invariant: bool) -> None:
    """Masked, ``h / g`` with ``g`` a member is 0 / 0: prunable, but no zero-invariance claim."""
    group = skg.plan(Body(body, g=nn.Parameter(torch.rand(C) + 0.5)), torch.randn(*X4)).group("a:out")
    assert group.prunable and group.zero_invariant is zero_invariant, group


def test_branch_on_a_layer_attribute_pins(tmp_path: Path) -> None:
    """Python control flow on a layer's attribute (a plain int the tracers do not see) pins the
    group it sizes at plan time, naming it (``graph/size_reads.py``; more in test_size_reads)."""
    model, x = Body(lambda s, h: h * 2 if s.a.out_channels == C else h), torch.randn(*X4)
    group = skg.plan(model, x).group("a:out")
    assert not group.prunable and "a.out_channels" in (group.reason or ""), group
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


def _asserts_width(s: nn.Module, h: Tensor) -> Tensor:
    assert h.shape[1] == s.a.out_channels
    return h


def _loops_over_width(s: nn.Module, h: Tensor) -> Tensor:
    for _ in range(h.shape[1] // 4):
        h = h + 1
    return h


def _loops_over_rows(s: nn.Module, h: Tensor) -> Tensor:
    return torch.stack([row * 2 for row in h.transpose(0, 1)], 1)


@pytest.mark.parametrize(
    "branch",
    [
        pytest.param(lambda s, h: h * 2 if h.shape[1] == C else h, id="equal"),
        pytest.param(lambda s, h: h * 2 if h.shape[1] == 64 else h, id="other-branch"),
        pytest.param(lambda s, h: h * 2 if h.size(1) > 4 else h, id="greater"),
        pytest.param(_asserts_width, id="assert"),
        pytest.param(_loops_over_width, id="range"),
        pytest.param(_loops_over_rows, id="iterate"),
        pytest.param(lambda s, h: h * 2 if float(h.size(1)) > 4 else h, id="float-branch"),
        # ``int(h.size(1) / 3)`` alone is ``h.size(1) // 3`` (round 9); a number made from it is not
        pytest.param(lambda s, h: h.view(h.size(0), int(h.size(1) / 3) % 5, -1), id="int-size"),
    ],
)
def test_control_flow_on_a_channel_count_pins(branch: Callable[..., Tensor], tmp_path: Path) -> None:
    """A size that decides Python control flow (or becomes a Python number) pins its axis at
    plan time, naming the node: the traced code holds one branch, which a pruned size may not take."""
    model, x = Body(branch), torch.randn(*X4)
    group = skg.plan(model, x).group("a:out")
    assert not group.prunable and "python control flow" in (group.reason or ""), group
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


@pytest.mark.parametrize(
    "branch",
    [
        pytest.param(lambda s, h: h.view(h.size(0), -1).view(h.shape), id="view-batch"),
        pytest.param(lambda s, h: h * 2 if h.shape[0] > 1 else h, id="batch-branch"),
        pytest.param(lambda s, h: h * 2 if h.shape[-1] == 6 else h, id="spatial-branch"),
        pytest.param(lambda s, h: h.reshape(*h.shape[:2], -1).view(h.shape), id="star-shape"),
        pytest.param(lambda s, h: h / math.sqrt(h.size(1)), id="math-scale"),  # traced: follows, no zero-invariance
        pytest.param(lambda s, h: h * len(h.transpose(0, 1)), id="len"),  # len(t) is t.shape[0]: traced, as math-scale
        pytest.param(lambda s, h: h * int(h.size(1) ** 0.5), id="int"),  # a number only tensor arithmetic takes
        pytest.param(lambda s, h: h * float(h.size(1)), id="float"),  # (``flow_values``): as math-scale
    ],
)
def test_control_flow_on_other_sizes_keeps_channels(branch: Callable[..., Tensor], tmp_path: Path) -> None:
    """Sizes only shaping a view or traced as values, and branches on batch and spatial sizes,
    leave the channels prunable."""
    result = check_oracle(Body(branch), torch.randn(*X4), tmp_path, min_drop=0.0, require=False)
    assert result.plan.group("a:out").prunable


def test_einsum_spellings_of_a_linear_layer_give_one_plan() -> None:
    """With or without an ellipsis, operands as a list, or as ``F.linear`` / ``@``: one plan."""
    spellings = [
        lambda s, h: torch.einsum("bld,hd->blh", h, s.w),
        lambda s, h: torch.einsum("...d,hd->...h", h, s.w),
        lambda s, h: torch.einsum("b l d, h d -> b l h", [h, s.w]),
        lambda s, h: F.linear(h, s.w),
        lambda s, h: h @ s.w.T,
    ]
    keys = []
    for fn in spellings:
        torch.manual_seed(0)
        keys.append(_key(skg.plan(Seq(fn, w=nn.Parameter(torch.randn(5, C))), torch.randn(*X3))))
    assert all(k == keys[0] for k in keys[1:]), keys
    assert any(prunable and zi for _, prunable, zi, _ in keys[0])


class Caching(nn.Module):
    """A forward that keeps state in Python attributes (a call counter, the last features)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(C, 4, 1)
        self.calls, self.last = 0, None

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        self.last, self.calls = h, self.calls + 1
        self.seen = True  # an attribute forward creates
        return self.b(h)


def test_python_attributes_set_in_forward_are_restored() -> None:
    """Tracing ran ``forward``: it left a Proxy in ``self.last`` and counted a call."""
    model, x = Caching(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    skg.prune(model, plan, ratio=0.5)
    assert (model.calls, model.last, hasattr(model, "seen")) == (0, None, False)


class StarForward(nn.Module):
    """``forward(self, *args, **kwargs)``: the input arrives in ``args[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(args[0])))


def test_forward_taking_star_args(tmp_path: Path) -> None:
    """Shape propagation gave ``*args`` every input, leaving none for ``**kwargs`` (refused)."""
    result = check_oracle(StarForward(), torch.randn(*X4), tmp_path, min_drop=0.0)
    assert result.plan.group("a:out").prunable


def test_layer_norm_shape_read_in_any_container_gives_one_plan() -> None:
    """``x.shape[-1:]``, ``(x.size(-1),)`` and ``[x.shape[-1]]`` all follow x (a literal pins)."""
    spellings = [
        lambda s, h: F.layer_norm(h, h.shape[-1:]),
        lambda s, h: F.layer_norm(h, (h.size(-1),)),
        lambda s, h: F.layer_norm(h, [h.shape[-1]]),
        lambda s, h: F.layer_norm(h, normalized_shape=h.shape[2:]),
    ]
    keys = [_key(skg.plan(Seq(fn), torch.randn(*X3))) for fn in spellings]
    assert all(k == keys[0] for k in keys[1:]), keys
    assert skg.plan(Seq(spellings[1]), torch.randn(*X3)).group("fc:out").prunable


class Constants(nn.Module):
    """A forward that builds tensors (``torch.tensor([...])``): torch.fx makes them attributes
    of the model (``_tensor_constant0``) to read them from its graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x)) * torch.tensor([0.5, 1.5]).sum()
        return self.b(h + torch.arange(6.0))


def test_tensor_constants_leave_no_attributes(tmp_path: Path) -> None:
    """``plan`` and ``prune`` leave the model's attributes as they were (no ``_tensor_constant*``)."""
    model, x = Constants(), torch.randn(*X4)
    attributes, before = dict(model.__dict__), fingerprint(model)
    every = [(m, dict(vars(m))) for m in model.modules()]
    plan = skg.plan(model, x)
    pruned = skg.prune(model, plan, ratio=0.5).model
    assert all(vars(m).keys() == d.keys() and all(vars(m)[k] is v for k, v in d.items()) for m, d in every)
    assert not [k for k in vars(pruned) if k.startswith("_tensor_constant")]
    assert_untouched(model, before, "plan and prune")
    assert torch.equal(skg.trace(model, x)(x), model(x)) and model.__dict__.keys() == attributes.keys()
    assert check_oracle(model, x, tmp_path, min_drop=0.0).plan.group("a:out").prunable


@dataclasses.dataclass
class WidthConfig:
    """A user's own config object (not a Hugging Face config): nothing rewrites ``width``."""

    width: int = C


class ConfigView(nn.Module):
    """Linear (group ``fc:out``) -> ``view(*h.shape[:-1], self.cfg.width)`` -> Linear head, on
    (B, L, 6); ``fused`` adds a device check that torch.fx cannot trace (torch.export then runs)."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.cfg, self.fused = WidthConfig(), fused
        self.fc, self.head = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, C)
        if self.fused and h.is_cuda:
            h = h.contiguous()
        return self.head(h.view(*h.shape[:-1], self.cfg.width))


def test_view_by_a_config_literal_pins(tmp_path: Path) -> None:
    """A literal view size equal to a channel count (``self.cfg.width``) does not follow a
    pruned count: the axis pins."""
    model, x = ConfigView(False), torch.randn(*X3)
    assert not is_exported(trace_graph(model, x))
    group = skg.plan(model, x).group("fc:out")
    assert not group.prunable and "constant size" in (group.reason or ""), group
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


def test_view_by_a_config_literal_under_export_pins(tmp_path: Path) -> None:
    """torch.export writes ``h.shape[-1]`` and ``self.cfg.width`` as the same literal, and a
    literal that keeps an input axis is taken for a size read (HF Swin's ``view(B, -1, 4 * C)``
    needs that); the planner's export probe prunes a copy, sees the view fail, and pins."""
    model, x = ConfigView(True), torch.randn(*X3)
    assert is_exported(trace_graph(model, x))
    group = skg.plan(model, x).group("fc:out")
    assert not group.prunable and "torch.export" in (group.reason or ""), group
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


@dataclasses.dataclass
class TwoWidths:
    """A plain config with two attributes of one value: surgery rewrites ``hidden_size`` only."""

    hidden_size: int = C
    width: int = C


class ConfigAttributeView(nn.Module):
    """``view(*h.shape[:-1], 1, self.config.<read>)``: the literal equals both attributes."""

    def __init__(self, read: str, fused: bool) -> None:
        super().__init__()
        self.config, self.read, self.fused = TwoWidths(), read, fused
        self.fc, self.head = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, C)
        if self.fused and h.is_cuda:
            h = h.contiguous()
        size = self.config.hidden_size if self.read == "hidden_size" else self.config.width
        return self.head(h.view(*h.shape[:-1], 1, size).flatten(2))


@pytest.mark.parametrize("fused", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("read", ["hidden_size", "width"])
def test_a_config_literal_follows_only_the_attribute_forward_reads(read: str, fused: bool, tmp_path: Path) -> None:
    """A literal matches a size attribute of a plain config only if the forward read it: reading
    ``hidden_size`` prunes (surgery rewrites it), reading ``width`` of the same value pins."""
    model, x = ConfigAttributeView(read, fused), torch.randn(*X3)
    group = skg.plan(model, x).group("fc:out")
    assert group.prunable is (read == "hidden_size"), group
    assert type(model.config) is TwoWidths
    result = check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
    assert result.model.config.hidden_size == (C // 2 if read == "hidden_size" else C)
