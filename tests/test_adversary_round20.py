"""Adversary round 20."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from helpers import PerChannel as _Scaled
from torch import Tensor, nn

import sparsekit_graph as skg

F16, F32 = torch.float16, torch.float32


def _masked_and_pruned(model: nn.Module, plan: skg.Plan, x: Tensor, group: str = "a:out") -> tuple[Tensor, Tensor]:
    mask = torch.zeros(plan.group(group).size, dtype=torch.bool)
    mask[1::3] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[group].apply_mask(mask)
    pruned = skg.prune(model, plan, masks={group: mask}).model.eval()
    with torch.no_grad():
        return dense(x).float(), pruned(x).float()


def _signature(plan: skg.Plan) -> list[tuple[str, int, bool, bool]]:
    return [(g.name, g.size, g.prunable, g.zero_invariant) for g in plan.groups]


def _built(f: Callable[[Tensor], Tensor], dtype: torch.dtype) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return _Scaled(f).to(dtype).eval(), torch.randn(2, 3, 6, 6).to(dtype)


# -- an eps made on the input's device is the constant it holds -----------------------------


def _amax(h: Tensor) -> Tensor:
    return h.abs().amax((2, 3), keepdim=True)


_EPS: dict[str, Callable[[Tensor, float], Tensor | float]] = {
    "number": lambda h, e: e,
    "tensor": lambda h, e: torch.tensor(e),
    "tensor_on_device": lambda h, e: torch.tensor(e, device=h.device),
    "tensor_on_device_in_dtype": lambda h, e: torch.tensor(e, device=h.device, dtype=h.dtype),
    "as_tensor_on_device": lambda h, e: torch.as_tensor(e, dtype=h.dtype, device=h.device),
    "scalar_tensor_on_device": lambda h, e: torch.scalar_tensor(e, device=h.device),
    "full_on_device": lambda h, e: torch.full((), e, device=h.device),
    "new_tensor": lambda h, e: h.new_tensor(e),
    "new_full": lambda h, e: h.new_full((1,), e),
    "new_ones_scaled": lambda h, e: h.new_ones(()) * e,
    "cast_to_the_input": lambda h, e: torch.tensor(e, device=h.device).to(h),
}


@pytest.mark.parametrize("name", sorted(_EPS))
def test_every_spelling_of_an_eps_keeps_a_clamped_divisor_zero_invariant(name: str) -> None:
    model, x = _built(lambda h: h / (_amax(h) + _EPS[name](h, 1e-5)), F32)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant, plan.group("a:out")
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)
    meta = skg.plan(copy.deepcopy(model).to("meta"), x.to("meta"))
    assert meta.group("a:out").zero_invariant


@pytest.mark.parametrize("name", sorted(set(_EPS) - {"number", "tensor"}))
def test_an_eps_on_the_device_that_rounds_to_zero_in_float16_is_not_zero_invariant(name: str) -> None:
    model, x = _built(lambda h: h / (_amax(h) + _EPS[name](h, 1e-9)), F16)
    plan = skg.plan(model, x)
    masked, _ = _masked_and_pruned(model, plan, x)
    assert not torch.isfinite(masked).all()  # 0 / (0 + 0) on the masked channel
    assert not plan.group("a:out").zero_invariant


def test_a_number_made_of_the_channel_count_is_not_a_constant() -> None:
    model, x = _built(lambda h: h / (_amax(h) + h.new_tensor(h.shape[1]) * 1e-6), F32)
    plan = skg.plan(model, x)
    assert not plan.group("a:out").zero_invariant  # the pruned model adds another number


# -- a number written into a slice plans alike on real and meta weights ---------------------


class _WrittenRow(nn.Module):
    def __init__(self, write: Callable[[nn.Module, Tensor], None]) -> None:
        super().__init__()
        self.a, self.b, self.write = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), write
        self.register_buffer("t", torch.rand(6))

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x).clone()
        self.write(self, y)
        return self.b(y)


def _set_number(m: nn.Module, y: Tensor) -> None:
    y[:, :, 0] = 1.0


def _set_last_row(m: nn.Module, y: Tensor) -> None:
    y[..., -1, :] = 0.0


def _set_buffer(m: nn.Module, y: Tensor) -> None:
    y[:, :, 0] = m.t


def _set_buffer_expanded_to_the_channel_count(m: nn.Module, y: Tensor) -> None:
    y[:, :, 0] = m.t.expand(y.shape[0], y.shape[1], 6)


def _set_buffer_expanded_to_a_literal(m: nn.Module, y: Tensor) -> None:
    y[:, :, 0] = m.t.expand(2, 8, 6)


@pytest.mark.parametrize(
    "write", [_set_number, _set_last_row, _set_buffer, _set_buffer_expanded_to_the_channel_count], ids=lambda f: f.__name__
)
def test_a_value_written_into_a_row_plans_alike_on_real_and_meta_weights(write: Callable[[nn.Module, Tensor], None]) -> None:
    torch.manual_seed(0)
    model, x = _WrittenRow(write).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    meta = skg.plan(copy.deepcopy(model).to("meta"), x.to("meta"))
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant
    assert _signature(meta) == _signature(plan)
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


def test_a_value_expanded_to_a_literal_channel_count_before_the_write_is_pinned_on_meta_weights() -> None:
    torch.manual_seed(0)
    model, x = _WrittenRow(_set_buffer_expanded_to_a_literal).eval(), torch.randn(2, 3, 6, 6)
    for plan in (skg.plan(model, x), skg.plan(copy.deepcopy(model).to("meta"), x.to("meta"))):
        assert not plan.group("a:out").prunable  # the pruned model would expand to 8 channels


# -- multi-query attention written by hand: one key/value head serves every query head ------


class _MultiQuery(nn.Module):
    """Attention with ``num_kv_heads`` key/value heads repeated for 4 query heads."""

    def __init__(self, repeat: Callable[[nn.Module, Tensor, Tensor], Tensor], num_kv_heads: int = 1) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.repeat = 4, num_kv_heads, 8, repeat
        self.q, self.o = nn.Linear(32, 32), nn.Linear(32, 32)
        self.k, self.v = nn.Linear(32, 8 * num_kv_heads), nn.Linear(32, 8 * num_kv_heads)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (p(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2) for p in (self.k, self.v))
        o = torch.nn.functional.scaled_dot_product_attention(q, self.repeat(self, k, q), self.repeat(self, v, q))
        return self.o(o.transpose(1, 2).reshape(b, t, -1))


_REPEATS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "repeat_interleave_ratio_of_counts": lambda m, k, q: k.repeat_interleave(m.num_heads // m.num_kv_heads, dim=1),
    "repeat_interleave_ratio_of_lengths": lambda m, k, q: k.repeat_interleave(q.shape[1] // k.shape[1], dim=1),
    "expand_and_reshape": lambda m, k, q: (
        k[:, :, None]
        .expand(k.shape[0], m.num_kv_heads, m.num_heads // m.num_kv_heads, k.shape[2], m.head_dim)
        .reshape(k.shape[0], m.num_heads, k.shape[2], m.head_dim)
    ),
}


@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
@pytest.mark.parametrize("name", sorted(_REPEATS))
def test_one_key_value_head_lets_every_query_head_be_pruned(name: str, gqa: str) -> None:
    torch.manual_seed(0)
    model, x = _MultiQuery(_REPEATS[name]).eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x, gqa=gqa)
    heads = plan.group("q:out")
    assert heads.prunable and heads.size == 4 and heads.zero_invariant, heads
    masked, pruned = _masked_and_pruned(model, plan, x, "q:out")
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)
    two = skg.prune(model, plan, masks={"q:out": torch.tensor([True, False, True, False])}).model
    assert two.num_heads == 2 and two.q.out_features == 16


@pytest.mark.parametrize("name", sorted(_REPEATS))
def test_two_key_value_heads_still_prune_whole_groups(name: str) -> None:
    torch.manual_seed(0)
    model, x = _MultiQuery(_REPEATS[name], num_kv_heads=2).eval(), torch.randn(2, 5, 32)
    heads = skg.plan(model, x).group("q:out")
    assert heads.prunable and heads.size == 2, heads


_LITERAL_REPEATS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "repeat_interleave_by_4": lambda m, k, q: k.repeat_interleave(4, dim=1),
    "expand_to_4": lambda m, k, q: k[:, :, None].expand(k.shape[0], 1, 4, k.shape[2], 8).reshape(k.shape[0], 4, k.shape[2], 8),
}


@pytest.mark.parametrize("name", sorted(_LITERAL_REPEATS))
def test_one_key_value_head_repeated_a_literal_number_of_times_keeps_the_query_heads(name: str) -> None:
    torch.manual_seed(0)
    model, x = _MultiQuery(_LITERAL_REPEATS[name]).eval(), torch.randn(2, 5, 32)
    heads = skg.plan(model, x).group("q:out")
    assert not heads.prunable or heads.size == 1, heads  # 4 copies whatever the heads pruning keeps


# -- one functional conv per row of a weight, concatenated: no parameter produces the rows ---


class _ConvPerRow(nn.Module):
    def __init__(self, convs: Callable[[nn.Module, Tensor], list[Tensor]]) -> None:
        super().__init__()
        self.a, self.b, self.convs = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(6, 4, 1), convs
        self.w = nn.Parameter(torch.randn(6, 8, 3, 3) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.cat(self.convs(self, torch.relu(self.a(x))), 1))


def _conv(h: Tensor, w: Tensor) -> Tensor:
    return torch.nn.functional.conv2d(h, w, padding=1)


_PER_ROW: dict[str, Callable[[nn.Module, Tensor], list[Tensor]]] = {
    "unbind_unsqueeze": lambda m, h: [_conv(h, w.unsqueeze(0)) for w in m.w.unbind(0)],
    "index_unsqueeze": lambda m, h: [_conv(h, m.w[i].unsqueeze(0)) for i in range(6)],
    "iterate_none": lambda m, h: [_conv(h, w[None]) for w in m.w],
    "split_by_one": lambda m, h: [_conv(h, w) for w in m.w.split(1, 0)],
    "slices": lambda m, h: [_conv(h, m.w[i : i + 1]) for i in range(6)],
}


@pytest.mark.parametrize("name", sorted(_PER_ROW))
def test_convs_per_weight_row_concatenated_never_plan_a_group_that_cannot_prune(name: str) -> None:
    torch.manual_seed(0)
    model, x = _ConvPerRow(_PER_ROW[name]).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    for group in plan.prunable:  # b:in was prunable with no parameter to lose its channels
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[1] = True
        assert skg.prune(model, plan, masks={group.name: mask}).model(x).shape == (2, 4, 6, 6)
    columns = next(g for g in plan.groups if any(m.param == "b.weight" and m.axis == 1 for m in g.members))
    assert not columns.prunable, columns
    skg.prune(model, plan, ratio=0.25)


def test_one_channel_conv_layers_concatenated_still_plan_their_weights() -> None:
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(6, 4, 1)
            self.heads = nn.ModuleList(nn.Conv2d(8, 1, 1) for _ in range(6))

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.b(torch.cat([head(h) for head in self.heads], 1))

    plan = skg.plan(Heads().eval(), torch.randn(2, 3, 6, 6))
    assert plan.group("a:out").prunable
    head = plan.group("heads.0:out")  # a parameter produces each of b's columns
    assert {"heads.0.weight", "b.weight"} <= {m.param for m in head.members}, head


# -- a layer's own counts read as arguments of its functional form ------------------------


class _FunctionalDepthwise(nn.Module):
    def __init__(self, groups: Callable[[nn.Module], int]) -> None:
        super().__init__()
        self.a, self.dw, self.pw, self.groups = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.Conv2d(8, 4, 1),
            groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = torch.nn.functional.conv2d(h, self.dw.weight, self.dw.bias, padding=1, groups=self.groups(self))
        return self.pw(torch.relu(h))


_GROUPS: dict[str, Callable[[nn.Module], int]] = {
    "groups": lambda m: m.dw.groups,
    "in_channels": lambda m: m.dw.in_channels,
    "out_channels": lambda m: m.dw.out_channels,
}


@pytest.mark.parametrize("name", sorted(_GROUPS))
def test_a_functional_depthwise_conv_with_its_group_count_read_off_the_layer_prunes(name: str) -> None:
    torch.manual_seed(0)
    model, x = _FunctionalDepthwise(_GROUPS[name]).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant
    masked, pruned = _masked_and_pruned(model, plan, x)  # the resizer saw in_channels rewritten and took it for no depthwise conv
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)
    small = skg.prune(model, plan, ratio=0.5).model
    assert small.dw.groups == small.dw.in_channels == small.dw.out_channels == 4


# -- a length read as numel() ---------------------------------------------------------------


class _NumelReshape(nn.Module):
    def __init__(self, width: Callable[[nn.Module], int]) -> None:
        super().__init__()
        self.fc1, self.g, self.fc2, self.width = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 6), width

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x)).reshape(-1, self.width(self)).view(x.shape[0], x.shape[1], -1)
        return self.fc2(h) + self.g(x).sum(-1, keepdim=True)


_WIDTHS: dict[str, Callable[[nn.Module], int]] = {
    "len": lambda m: len(m.g.bias),
    "shape": lambda m: m.g.bias.shape[0],
    "numel": lambda m: m.g.bias.numel(),
    "torch_numel": lambda m: torch.numel(m.g.bias),
    "numel_of_a_matrix": lambda m: m.g.weight.numel() // 8,
    "numel_of_a_matrix_whole": lambda m: m.g.weight.numel(),
}


@pytest.mark.parametrize("name", sorted(_WIDTHS))
def test_a_width_read_off_another_layer_never_leaves_a_group_that_cannot_prune(name: str) -> None:
    torch.manual_seed(0)
    model, x = _NumelReshape(_WIDTHS[name]).eval(), torch.randn(2, 8, 8)
    plan = skg.plan(model, x)
    for group in plan.prunable:
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[1::3] = True
        skg.prune(model, plan, masks={group.name: mask}).model(x)
    if name in ("len", "shape", "numel", "torch_numel"):  # the bias's length: both layers shrink together
        assert plan.group("fc1:out").prunable
        assert any(m.param == "g.bias" for m in plan.group("fc1:out").members)


# -- what a removed channel holds, continued: numbers, layers, complex values, in-place ----


def _m(h: Tensor) -> Tensor:
    return h.abs().mean((2, 3), keepdim=True)


def _v(h: Tensor) -> Tensor:
    return h.var((2, 3), keepdim=True)


def _sub_in_place(h: Tensor) -> Tensor:
    d = _v(h) + 1.0
    d.sub_(1.0)  # var again, written into the node made as var + 1
    return h / d


def _copy_in_place(h: Tensor) -> Tensor:
    d = _v(h) + 1.0
    d.copy_(_v(h))
    return h / d


def _log_in_place(h: Tensor) -> Tensor:
    s = _m(h) + 1.0
    s.log_()
    return h / s


class _CosineLayer(nn.Module):
    """``F.linear(x, F.normalize(w))``: a classifier over unit rows."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.w, self.b, self.eps = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Conv2d(8, 4, 1), eps

    def forward(self, x: Tensor) -> Tensor:
        w = torch.nn.functional.normalize(self.w.flatten(1), dim=1, eps=self.eps).view_as(self.w)
        return self.b(torch.nn.functional.conv2d(x, w, padding=1))


def _layer(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda h: layer(_m(h))


F_ = torch.nn.functional
# name -> (model maker, dtype, group): each computes inf or NaN on a masked channel
_NOT_FINITE: dict[str, tuple[Callable[[], nn.Module], torch.dtype, str]] = {
    "masked_fill_minus_inf_then_softmax": (
        lambda: _Scaled(lambda h: h * torch.softmax(h.masked_fill(h == 0, float("-inf")).flatten(2), -1).view_as(h)),
        F32,
        "a:out",
    ),
    "where_minus_inf": (lambda: _Scaled(lambda h: torch.where(h != 0, h, float("-inf"))), F32, "a:out"),
    "where_1e5_f16": (lambda: _Scaled(lambda h: torch.where(h != 0, h, 1e5)), F16, "a:out"),
    "threshold_value_inf": (lambda: _Scaled(lambda h: F_.threshold(_m(h), 1e-6, float("inf"))), F32, "a:out"),
    "leaky_relu_slope_overflows_f16": (lambda: _Scaled(lambda h: F_.leaky_relu(_v(h) - 1e-2, negative_slope=1e7)), F16, "a:out"),
    "normalize_layer_output_eps_0": (lambda: _Scaled(lambda h: F_.normalize(h, dim=-1, eps=0.0)), F32, "a:out"),
    "normalize_layer_output_f16": (lambda: _Scaled(lambda h: F_.normalize(h, dim=-1)), F16, "a:out"),
    "cosine_layer_f16": (_CosineLayer, F16, "w:0"),
    "cosine_layer_eps_0": (lambda: _CosineLayer(eps=0.0), F32, "w:0"),
    "complex_exp_overflows": (
        lambda: _Scaled(lambda h: h * torch.exp((100 - 1000 * _m(h)).to(torch.complex64)).abs()),
        F32,
        "a:out",
    ),
    "complex_eps_vanishes": (
        lambda: _Scaled(lambda h: (h.to(torch.complex64) / (_v(h).to(torch.complex64) + 1e-50)).abs()),
        F32,
        "a:out",
    ),
    "softplus_layer_overflows_f16": (lambda: _Scaled(_layer(nn.Softplus(beta=1e-5, threshold=1e-6))), F16, "a:out"),
    "threshold_layer_value_inf": (lambda: _Scaled(_layer(nn.Threshold(1e-6, float("inf")))), F32, "a:out"),
    "divisor_written_by_sub_": (lambda: _Scaled(_sub_in_place), F32, "a:out"),
    "divisor_written_by_copy_": (lambda: _Scaled(_copy_in_place), F32, "a:out"),
    "divisor_written_by_log_": (lambda: _Scaled(_log_in_place), F32, "a:out"),
    "local_response_norm_layer_k_0": (lambda: _Scaled(nn.LocalResponseNorm(1, k=0.0)), F32, "a:out"),
    "local_response_norm_k_0": (lambda: _Scaled(lambda h: F_.local_response_norm(h, 1, k=0.0)), F32, "a:out"),
}


@pytest.mark.parametrize("name", sorted(_NOT_FINITE))
def test_a_removed_channel_that_holds_inf_or_nan_is_not_zero_invariant(name: str) -> None:
    make, dtype, group = _NOT_FINITE[name]
    torch.manual_seed(0)
    model, x = make().to(dtype).eval(), torch.randn(2, 3, 6, 6).to(dtype)
    plan = skg.plan(model, x)
    masked, pruned = _masked_and_pruned(model, plan, x, group)
    assert torch.isfinite(pruned).all() and not torch.isfinite(masked).all()  # the case is what it claims
    assert not plan.group(group).zero_invariant


_STILL_FINITE: dict[str, Callable[[], nn.Module]] = {
    "normalize_over_two_axes": lambda: _Scaled(lambda h: F_.normalize(h, dim=(2, 3))),
    "local_response_norm_k_1": lambda: _Scaled(nn.LocalResponseNorm(1)),
    "where_zero": lambda: _Scaled(lambda h: torch.where(h > 0, h, 0.0)),
    "cosine_layer": _CosineLayer,
    "threshold_layer": lambda: _Scaled(_layer(nn.Threshold(0.1, 20.0))),
}


@pytest.mark.parametrize("name", sorted(_STILL_FINITE))
def test_a_removed_channel_that_stays_finite_stays_zero_invariant(name: str) -> None:
    torch.manual_seed(0)
    model, x = _STILL_FINITE[name]().eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    group = "w:0" if name == "cosine_layer" else "a:out"
    assert plan.group(group).zero_invariant, plan.group(group)
    masked, pruned = _masked_and_pruned(model, plan, x, group)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


# -- two spellings, one plan: functions that are zero at zero, boolean masks of buffers ------


def _plus_channel_sum(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda h: h + f(h).sum(1, keepdim=True)  # a removed channel adds f(0) to every channel


def _trunc_in_place(h: Tensor) -> Tensor:
    t = h * 3.0
    t.trunc_()
    return t


_ZERO_AT_ZERO: dict[str, Callable[[Tensor], Tensor]] = {
    "sign": torch.sign,
    "sgn": torch.sgn,
    "special_erf": torch.special.erf,
    "tanhshrink": F_.tanhshrink,
    "softsign": F_.softsign,
    "positive": torch.positive,
    "deg2rad": torch.deg2rad,
    "fmod_by_3": lambda h: torch.fmod(h, 3.0),
    "expm1": torch.expm1,
    "real": torch.real,
    "trunc_in_place": _trunc_in_place,
    "log1p_in_place": lambda h: h.abs().log1p_(),
}
_NONZERO_AT_ZERO: dict[str, Callable[[Tensor], Tensor]] = {
    "cos": torch.cos,
    "sigmoid": torch.sigmoid,
    "exp_in_place": lambda h: (h * 1.0).exp_(),
    "fmod_by_0": lambda h: torch.fmod(h, 0.0),
}


@pytest.mark.parametrize("name", sorted(_ZERO_AT_ZERO))
def test_a_function_that_is_zero_at_zero_keeps_a_sum_over_channels_zero_invariant(name: str) -> None:
    torch.manual_seed(0)
    model, x = _Scaled(_plus_channel_sum(_ZERO_AT_ZERO[name])).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant, plan.group("a:out")
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_NONZERO_AT_ZERO))
def test_a_function_that_is_not_zero_at_zero_makes_a_sum_over_channels_not_zero_invariant(name: str) -> None:
    torch.manual_seed(0)
    model, x = _Scaled(_plus_channel_sum(_NONZERO_AT_ZERO[name])).eval(), torch.randn(2, 3, 6, 6)
    assert not skg.plan(model, x).group("a:out").zero_invariant


class _MaskBuffer(nn.Module):
    def __init__(self, apply: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.apply_mask = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), apply
        self.register_buffer("mk", torch.tensor([1, 0, 1, 1, 0, 1, 1, 1]).bool())

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.apply_mask(self, torch.relu(self.a(x))))


_MASKINGS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "invert": lambda m, h: h.masked_fill(~m.mk.view(1, -1, 1, 1), 0.0),
    "equals_zero": lambda m, h: h.masked_fill(m.mk.view(1, -1, 1, 1) == 0, 0.0),
    "where_invert": lambda m, h: torch.where(~m.mk.view(1, -1, 1, 1), 0.0, h),
    "logical_not": lambda m, h: h.masked_fill(m.mk.logical_not().view(1, -1, 1, 1), 0.0),
    "where": lambda m, h: torch.where(m.mk.view(1, -1, 1, 1), h, 0.0),
}


@pytest.mark.parametrize("name", sorted(_MASKINGS))
def test_every_spelling_of_a_channel_mask_buffer_is_exact_or_pinned(name: str) -> None:
    torch.manual_seed(0)
    model, x = _MaskBuffer(_MASKINGS[name]).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    if name in ("logical_not", "where"):  # a view of the buffer: rebuilt over it, sliced with the channels
        assert group.prunable and group.zero_invariant, group
    if group.prunable:
        masked, pruned = _masked_and_pruned(model, plan, x)
        assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)
    else:  # ``~mk``, ``mk == 0``: a boolean result of the buffer is a constant (left: docs/planner.md)
        assert "constant" in group.reason


class _BatchNormByHand(nn.Module):
    """Eval-mode batch norm written out over an ``nn.BatchNorm2d``'s statistics and affine."""

    def __init__(self, normalise: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.bn, self.b, self.normalise = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), normalise
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        h = self.a(x) - _per_channel(bn.running_mean)
        return self.b(self.normalise(h, _per_channel(bn.running_var) + 1e-5) * _per_channel(bn.weight) + _per_channel(bn.bias))


def _per_channel(t: Tensor) -> Tensor:
    return t[:, None, None]


@pytest.mark.parametrize(
    "normalise",
    [lambda h, v: h / torch.sqrt(v), lambda h, v: h * torch.rsqrt(v), lambda h, v: h / v.sqrt(), lambda h, v: h * v.pow(-0.5)],
    ids=["div_sqrt", "mul_rsqrt", "div_method_sqrt", "mul_pow"],
)
def test_batch_norm_by_hand_is_zero_invariant_in_every_spelling(normalise: Callable[[Tensor, Tensor], Tensor]) -> None:
    torch.manual_seed(0)
    model, x = _BatchNormByHand(normalise).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant, plan.group("a:out")
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


class _RawParameter(nn.Module):
    def __init__(self, read: Callable[[nn.Module], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.read = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 4, 1), read
        self.bias = nn.Parameter(torch.randn(8))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x) + self.read(self)[:, None, None]))


@pytest.mark.parametrize(
    "read",
    [
        lambda m: m.bias,
        lambda m: m._parameters["bias"],
        lambda m: dict(m.named_parameters())["bias"],
        lambda m: m.get_parameter("bias"),
    ],
    ids=["attribute", "parameters_dict", "named_parameters", "get_parameter"],
)
def test_a_parameter_read_past_torch_fx_plans_as_the_attribute(read: Callable[[nn.Module], Tensor]) -> None:
    torch.manual_seed(0)
    model, x = _RawParameter(read).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant, plan.group("a:out")
    assert any(m.param == "bias" for m in plan.group("a:out").members)
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


def test_a_hugging_face_model_that_takes_use_cache_through_kwargs_plans_without_its_cache() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GraniteMoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model, ids = transformers.GraniteMoeForCausalLM(config).eval(), torch.randint(1, 128, (2, 8))
    plan = skg.plan(model, {"input_ids": ids})  # refused before: "Found DynamicCache in output"
    assert plan.group("model.layers.0.self_attn.q_proj:out").prunable
    small = skg.prune(model, plan, ratio=0.5).model
    assert small(input_ids=ids).logits.shape == (2, 8, 128)


# -- two spellings, one plan: fused projections and embedding tables ---------------------------


class _FusedQKV(nn.Module):
    def __init__(self, split: Callable[[nn.Module, Tensor], tuple[Tensor, ...]]) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.split = 4, 8, split
        self.inp, self.qkv, self.o, self.out = nn.Linear(5, 32), nn.Linear(32, 96), nn.Linear(32, 32), nn.Linear(32, 7)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        b, t, _ = h.shape
        parts = self.split(self, self.qkv(h))
        q, k, v = (p.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for p in parts)
        y = F_.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return self.out(h + self.o(y))


_QKV_SPLITS: dict[str, Callable[[nn.Module, Tensor], tuple[Tensor, ...]]] = {
    "chunk": lambda m, t: t.chunk(3, dim=-1),
    "split_list_of_products": lambda m, t: t.split([m.num_heads * m.head_dim] * 3, dim=-1),
    "split_product": lambda m, t: t.split(m.num_heads * m.head_dim, dim=-1),
}


@pytest.mark.parametrize("name", sorted(_QKV_SPLITS))
def test_every_split_of_a_fused_projection_prunes_its_heads(name: str) -> None:
    torch.manual_seed(0)
    model, x = _FusedQKV(_QKV_SPLITS[name]).double().eval(), torch.randn(2, 6, 5, dtype=torch.float64)
    plan = skg.plan(model, x)
    heads = plan.group("qkv:out")
    assert heads.prunable and heads.size == 4, heads
    masked, pruned = _masked_and_pruned(model, plan, x, "qkv:out")
    assert torch.allclose(masked, pruned, rtol=1e-6, atol=1e-8)


class _Table(nn.Module):
    def __init__(self, look_up: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.emb, self.fc, self.look_up = nn.Embedding(20, 8), nn.Linear(8, 3), look_up

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc(torch.relu(self.look_up(self, ids)))


_LOOK_UPS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "module": lambda m, ids: m.emb(ids),
    "functional": lambda m, ids: F_.embedding(ids, m.emb.weight),
    "index": lambda m, ids: m.emb.weight[ids],
    "index_select": lambda m, ids: m.emb.weight.index_select(0, ids.flatten()).view(*ids.shape, -1),
}


@pytest.mark.parametrize("name", sorted(_LOOK_UPS))
def test_every_spelling_of_an_embedding_look_up_prunes_its_width(name: str) -> None:
    torch.manual_seed(0)
    model, ids = _Table(_LOOK_UPS[name]).eval(), torch.randint(0, 20, (2, 5))
    plan = skg.plan(model, ids)
    width = plan.group("emb:in")  # the table's columns
    assert width.prunable and width.zero_invariant and width.size == 8, width
    masked, pruned = _masked_and_pruned(model, plan, ids, width.name)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


# -- attacks on this round's changes -------------------------------------------------------


def _ri_count_of_other_attributes(m: nn.Module, k: Tensor, q: Tensor) -> Tensor:
    return k.repeat_interleave(m.head_dim // 2 * m.num_kv_heads, dim=1)  # 4 as well, but no head count


_MORE_REPEATS: dict[str, tuple[Callable[[nn.Module, Tensor, Tensor], Tensor], bool]] = {
    "num_heads": (lambda m, k, q: k.repeat_interleave(m.num_heads, dim=1), True),
    "query_length": (lambda m, k, q: k.repeat_interleave(q.shape[1], dim=1), True),
    "expand_to_num_heads": (lambda m, k, q: k.expand(-1, m.num_heads, -1, -1), True),
    "count_of_other_attributes": (_ri_count_of_other_attributes, False),
}


@pytest.mark.parametrize("name", sorted(_MORE_REPEATS))
def test_one_key_value_head_repeated_by_a_head_count_prunes_and_any_other_count_does_not(name: str) -> None:
    repeat, follows = _MORE_REPEATS[name]
    torch.manual_seed(0)
    model, x = _MultiQuery(repeat).eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x)
    heads = plan.group("q:out")
    if not follows:  # pruning heads would leave 4 copies for fewer query heads
        assert not heads.prunable or heads.size == 1, heads
        return
    assert heads.prunable and heads.size == 4, heads
    masked, pruned = _masked_and_pruned(model, plan, x, "q:out")
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)


class _CountShared(_MultiQuery):
    """``num_heads`` counts another layer's axis; the query heads are viewed with -1."""

    def __init__(self) -> None:
        super().__init__(_REPEATS["repeat_interleave_ratio_of_counts"])
        self.g = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (p(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2) for p in (self.k, self.v))
        o = F_.scaled_dot_product_attention(q, self.repeat(self, k, q), self.repeat(self, v, q))
        gate = self.g(x).view(b, t, self.num_heads, 1).sum(2)
        return self.o(o.transpose(1, 2).reshape(b, t, -1)) + gate


def test_a_repeat_count_made_from_an_attribute_another_layer_counts_pins_that_layer() -> None:
    torch.manual_seed(0)
    model, x = _CountShared().eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x)
    for group in plan.prunable:
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[1] = True
        skg.prune(model, plan, masks={group.name: mask}).model(x)  # g:out was prunable: its num_heads moves the repeat
    assert not plan.group("g:out").prunable


class _GatheredConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(6, 4, 1)
        self.w = nn.Parameter(torch.randn(6, 8, 3, 3) * 0.3)
        self.register_buffer("rows", torch.arange(6))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F_.conv2d(torch.relu(self.a(x)), self.w.index_select(0, self.rows), padding=1))


def test_a_conv_weight_gathered_by_rows_keeps_its_kernel_axes() -> None:
    torch.manual_seed(0)
    model, x = _GatheredConv().eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert not plan.group("w:2").prunable and not plan.group("w:3").prunable  # a kernel was prunable


def test_a_resizer_a_user_registers_sees_the_counts_surgery_rewrote() -> None:
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads, self.head_dim = 4, 8
            self.q, self.o = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x: Tensor) -> Tensor:
            b, t, _ = x.shape
            return self.o(torch.relu(self.q(x).view(b, t, self.num_heads, self.head_dim)).reshape(b, t, -1))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = Heads()

        def forward(self, x: Tensor) -> Tensor:
            return self.attn(x)

    seen: list[int] = []
    skg.register_resizer(Heads)(lambda m: seen.append(m.num_heads))
    torch.manual_seed(0)
    model, x = Outer().eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x)
    assert plan.group("attn.q:out").prunable and plan.group("attn.q:out").size == 4, plan.group("attn.q:out")
    small = skg.prune(model, plan, masks={"attn.q:out": torch.tensor([True, False, True, False])}).model
    assert seen[-1] == 2 and small.attn.num_heads == 2  # the resizer ran on the rewritten count


class _WithBuffer(nn.Module):
    """``b(f(a(x), buffer))`` with a per-model buffer ``t``."""

    def __init__(self, f: Callable[[nn.Module, Tensor], Tensor], t: float, layer: nn.Module | None = None) -> None:
        super().__init__()
        self.a, self.b, self.f, self.layer = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), f, layer or nn.Identity()
        self.register_buffer("t", torch.tensor(t))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.f(self, self.a(x)))


def _live_one(h: Tensor, masked: float) -> Tensor:
    return torch.where(h == 0, masked, h * 0 + 1)  # ``masked`` on a removed channel, 1 on live ones


# name -> (model maker, dtype): each computes inf or NaN (or another value) on a masked channel
_ATTACKED_20: dict[str, tuple[Callable[[], nn.Module], torch.dtype]] = {
    "signbit_of_negated": (lambda: _Scaled(lambda h: h + torch.signbit(-h).float().sum(1, keepdim=True)), F32),
    "where_buffer_inf": (lambda: _WithBuffer(lambda m, h: h * torch.where(h == 0, m.t, h), float("inf")), F32),
    "where_buffer_large_f16": (lambda: _WithBuffer(lambda m, h: h * torch.where(h == 0, m.t, h), 1e5), F16),
    "where_new_full_inf": (lambda: _Scaled(lambda h: h * torch.where(h == 0, h.new_full((), float("inf")), h)), F32),
    "where_large_then_scaled": (lambda: _Scaled(lambda h: h * (torch.where(h == 0, 1e38, h) * 1e3)), F32),
    "elu_layer_alpha_overflows_f16": (
        lambda: _WithBuffer(lambda m, h: h * m.layer(_live_one(h, -30.0)), 0.0, nn.ELU(alpha=1e6)),
        F16,
    ),
    "division_by_a_small_buffer": (lambda: _WithBuffer(lambda m, h: h * ((h == 0).float() / m.t), 1e-39), F32),
}


@pytest.mark.parametrize("name", sorted(_ATTACKED_20))
def test_a_removed_channel_that_holds_another_value_is_not_zero_invariant(name: str) -> None:
    make, dtype = _ATTACKED_20[name]
    torch.manual_seed(0)
    model, x = make().to(dtype).eval(), torch.randn(2, 3, 6, 6).to(dtype)
    plan = skg.plan(model, x)
    masked, pruned = _masked_and_pruned(model, plan, x)
    with torch.no_grad():
        assert torch.isfinite(model(x).float()).all() and torch.isfinite(pruned).all()
    assert not torch.isfinite(masked).all() or not torch.allclose(masked, pruned, rtol=1e-3, atol=1e-3)  # a real case
    assert not plan.group("a:out").zero_invariant


@pytest.mark.parametrize("part", ["real", "imag"])
def test_real_and_imag_read_as_attributes_plan_as_the_functions(part: str) -> None:
    plans = []
    for f in (
        lambda h: getattr(torch, part)(torch.view_as_complex(h.view(2, 8, 18, 2))),
        lambda h: getattr(torch.view_as_complex(h.view(2, 8, 18, 2)), part),
    ):
        torch.manual_seed(0)
        model, x = _Scaled(lambda h, f=f: f(h).view(2, 8, 3, 6).repeat(1, 1, 2, 1)).eval(), torch.randn(2, 3, 6, 6)
        plans.append(_signature(skg.plan(model, x)))
    assert plans[0] == plans[1]


class _WidthConv(nn.Conv2d):
    """A conv that keeps its width in an attribute of its own and reshapes with it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.dim = self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        b, _, h, w = y.shape
        return y.view(b, self.dim, h * w).view(b, self.dim, h, w)


@pytest.mark.parametrize("groups", [1, 8])
def test_a_torch_layer_subclass_that_keeps_its_width_in_its_own_attribute_prunes(groups: int) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.conv, self.b = (
                nn.Conv2d(3, 8, 3, padding=1),
                _WidthConv(8, 8, 3, padding=1, groups=groups),
                nn.Conv2d(8, 4, 1),
            )

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.conv(torch.relu(self.a(x))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    for group in plan.prunable:  # the conv's resizer was taken to rewrite self.dim
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[1] = True
        small = skg.prune(model, plan, masks={group.name: mask}).model
        assert small.conv.dim == small.conv.out_channels and small(x).shape == (2, 4, 6, 6)
    assert plan.group("a:out").prunable


def test_a_model_cast_after_planning_is_planned_again_in_its_dtype() -> None:
    """``prune`` plans again a plan made before ``.double()`` / ``.half()`` (its inputs in the
    model's dtype): pruned where the claims hold in the new dtype (torch.export's trace too),
    refused where they do not (an eps of 1e-9 is 0 in float16), the model untouched."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.a(x))
            return self.b(h[0] if isinstance(h, list) else h)  # torch.fx refuses: torch.export traces it

    torch.manual_seed(0)
    model, x = Branchy().eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    model.double()
    assert skg.prune(model, plan, ratio=0.5).model(x.double()).shape == (2, 4, 6, 6)
    model, x = _built(lambda h: h / (_amax(h) + h.new_tensor(1e-9)), F32)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant
    model.half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(skg.PlanError, match="group 'a:out' field zero_invariant: differs"):
        skg.prune(model, plan, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ForwardCalls(nn.Module):
    def __init__(self, call: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.dw, self.gn, self.b = (
            nn.Conv2d(3, 8, 1),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.GroupNorm(2, 8),
            nn.Conv2d(8, 4, 1),
        )
        self.call = call

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.call(self, torch.relu(self.a(x))))


@pytest.mark.parametrize(
    "call",
    [lambda m, h: m.gn(m.dw(h)), lambda m, h: m.gn.forward(m.dw.forward(h)), lambda m, h: m.gn.__call__(m.dw.__call__(h))],
    ids=["call", "forward", "dunder_call"],
)
def test_a_layer_called_through_its_forward_plans_as_a_call(call: Callable[[nn.Module, Tensor], Tensor]) -> None:
    torch.manual_seed(0)
    model, x = _ForwardCalls(call).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable, plan.group("a:out")  # dw.forward traced into F.conv2d(groups=8): pinned
    assert "forward" not in model.dw.__dict__  # the tracer's stand-in is gone
    skg.prune(model, plan, ratio=0.5).model(x)


class _Filled(nn.Module):
    """Scores (B, 4, T, T) from a 1x1 conv, filled where a causal mask (1, 1, T, T) is 0."""

    def __init__(self, after: Callable[[nn.Module, Tensor], Tensor], value: float = float("-inf")) -> None:
        super().__init__()
        self.a, self.bn, self.b, self.after, self.value = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), after, value
        self.gamma = nn.Parameter(torch.rand(4, 1, 1) + 0.5)
        self.register_buffer("causal", torch.tril(torch.ones(1, 1, 5, 5)))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.after(self, self.a(x).masked_fill(self.causal == 0, self.value)))


_FILLED_THEN: dict[str, tuple[Callable[[nn.Module, Tensor], Tensor], float, bool]] = {
    "softmax": (lambda m, s: torch.softmax(s, -1), float("-inf"), True),
    "cast_softmax": (lambda m, s: s.double().softmax(dim=-1), float("-inf"), True),
    "layer_scale_then_exp": (lambda m, s: torch.exp(s * m.gamma), float("-inf"), False),
    "batch_norm_then_sigmoid": (lambda m, s: torch.sigmoid(m.bn(s)), float("-inf"), False),
    "conv_then_nan_to_num": (lambda m, s: torch.nan_to_num(m.b(s.relu()).repeat(1, 2, 1, 1)), float("inf"), False),
}


@pytest.mark.parametrize("name", sorted(_FILLED_THEN))
def test_a_causal_fill_keeps_zero_invariance_only_into_a_softmax(name: str) -> None:
    after, value, exact = _FILLED_THEN[name]
    torch.manual_seed(0)
    model, x = _Filled(after, value).double().eval(), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    plan = skg.plan(model, x)
    scores = next(g for g in plan.groups if any(m.param == "a.weight" and m.axis == 0 for m in g.members))
    assert scores.zero_invariant is exact, scores
    if exact:
        masked, pruned = _masked_and_pruned(model, plan, x)
        assert torch.allclose(masked, pruned, rtol=1e-6, atol=1e-8)


def test_a_forward_called_directly_keeps_its_signature_and_a_hooked_one_is_traced_through() -> None:
    import inspect

    class Net(_ForwardCalls):
        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.a(x))
            if "input" in inspect.signature(self.gn.forward).parameters:  # GroupNorm.forward(self, input)
                h = h * 2.0
            return self.b(self.gn.forward(self.dw.forward(h)))

    torch.manual_seed(0)
    model, x = Net(lambda m, h: h).eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    with torch.no_grad():
        assert torch.allclose(plan_run := skg.prune(model, plan, masks={}).model(x), model(x))  # the same branch
    assert plan_run.shape == (2, 4, 6, 6)
    model.a.register_forward_hook(lambda m, i, o: o * 1.0)
    model.dw.register_forward_hook(lambda m, i, o: o + 1.0)  # never run: dw.forward bypasses it
    hooked = skg.plan(model, x)
    assert hooked.group("a:out").prunable or "hook" in hooked.group("a:out").reason
    assert all("forward" not in m.__dict__ for m in model.modules())


class _ScaledWidth(_WidthConv):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) / math.sqrt(self.dim)  # a value that changes with the width


def test_a_subclass_width_used_as_a_value_is_not_zero_invariant() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.conv, self.b = nn.Conv2d(3, 8, 1), _ScaledWidth(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.conv(torch.relu(self.a(x))))

    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    plan = skg.plan(model, x)
    group = plan.group("conv:out")
    assert not group.zero_invariant, group
    if group.prunable:
        mask = torch.zeros(8, dtype=torch.bool)
        mask[2] = True
        assert skg.prune(model, plan, masks={"conv:out": mask}).model.conv.dim == 7


def test_a_depthwise_conv_under_torch_export_keeps_its_channels_prunable() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x: Tensor) -> Tensor:
            if x.device.type == "cpu":  # torch.fx refuses: torch.export traces it, groups a literal
                x = x * 1.0
            return self.b(self.dw(torch.relu(self.a(x))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 6, 6)
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant, plan.group("a:out")
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.allclose(masked, pruned, rtol=1e-4, atol=1e-5)
