"""Adversary round 19: what a removed channel holds in floating point.

A masked channel is zero where it is made; the ops after it give it values that only the
model's dtype knows. Each forward below was planned zero-invariant for ``a:out`` while the
masked dense model computes inf or NaN on the masked channel (an eps that rounds to zero, a
reciprocal that overflows, an exp that underflows, ``log1p(-1)``, a narrowing cast, a norm
with eps 0) and the next layer's zeroed columns keep it (``0 * inf``): the pruned model is
finite and the masked one is not. ``graph/masked_values.py`` computes the channel's values as
torch does; ``singular.py``'s signs, where those are not known, no longer trust a product or
an exp of unknown magnitude to stay positive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import PerChannel as _Scaled
from torch import Tensor, nn

import sparsekit_graph as skg

F16, F32 = torch.float16, torch.float32


def _var(h: Tensor) -> Tensor:
    return h.var((2, 3), keepdim=True)


def _m(h: Tensor) -> Tensor:
    return h.abs().mean((2, 3), keepdim=True)


def _e(h: Tensor) -> Tensor:
    return torch.exp(-h.abs())


class _OverTokens(nn.Module):
    """Features (B, T, 8) normalised over the tokens, each feature alone."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.a, self.n, self.b = nn.Linear(5, 8), norm, nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.n(self.a(x).transpose(1, 2)).transpose(1, 2))


class _Fn(nn.Module):
    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.f = f

    def forward(self, h: Tensor) -> Tensor:
        return self.f(h)


class _GroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.n, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(8, 8, eps=0.0), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.n(self.a(x))))


_IMAGE, _TOKENS = (2, 3, 6, 6), (2, 6, 5)
# name -> (model maker, input shape, dtype): each computes inf or NaN on a masked channel
_NAN_WHEN_MASKED: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]] = {
    "normalize_eps_underflows_f16": (lambda: _Scaled(lambda h: F.normalize(h.flatten(2), dim=-1).view_as(h)), _IMAGE, F16),
    "normalize_eps_underflows_f32": (
        lambda: _Scaled(lambda h: F.normalize(h.flatten(2), dim=-1, eps=1e-50).view_as(h)),
        _IMAGE,
        F32,
    ),
    "clamp_min_eps_f16": (
        lambda: _Scaled(lambda h: h * torch.rsqrt(h.pow(2).mean((2, 3), keepdim=True).clamp(min=1e-12))),
        _IMAGE,
        F16,
    ),
    "clamp_min_norm_f16": (lambda: _Scaled(lambda h: h / h.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12)), _IMAGE, F16),
    "reciprocal_overflows_f16": (lambda: _Scaled(lambda h: h * (_var(h) + 1e-5).reciprocal()), _IMAGE, F16),
    "one_over_overflows_f16": (lambda: _Scaled(lambda h: h * (1.0 / (_var(h) + 1e-5))), _IMAGE, F16),
    "power_minus_one_overflows_f16": (lambda: _Scaled(lambda h: h * (_var(h) + 1e-5) ** -1), _IMAGE, F16),
    "reciprocal_overflows_f32": (lambda: _Scaled(lambda h: h * (_var(h) + 1e-40).reciprocal()), _IMAGE, F32),
    "square_underflows_f16": (lambda: _Scaled(lambda h: h / (_m(h) + 1e-4) ** 2), _IMAGE, F16),
    "product_underflows": (lambda: _Scaled(lambda h: h / ((_m(h) + 1e-30) * 1e-30)), _IMAGE, F32),
    "exp_underflows": (lambda: _Scaled(lambda h: h / torch.exp(-1.0 / (_m(h) + 1e-6))), _IMAGE, F32),
    "sigmoid_underflows": (lambda: _Scaled(lambda h: h / torch.sigmoid(-1.0 / (_m(h) + 1e-6))), _IMAGE, F32),
    "log1p_of_minus_one": (lambda: _Scaled(lambda h: torch.log1p(-_e(h))), _IMAGE, F32),
    "special_log1p_of_minus_one": (lambda: _Scaled(lambda h: torch.special.log1p(-_e(h))), _IMAGE, F32),
    "atanh_of_one": (lambda: _Scaled(lambda h: torch.atanh(_e(h))), _IMAGE, F32),
    "logit_of_one": (lambda: _Scaled(lambda h: torch.logit(_e(h))), _IMAGE, F32),
    "ndtri_of_one": (lambda: _Scaled(lambda h: torch.special.ndtri(_e(h))), _IMAGE, F32),
    "erfinv_of_one": (lambda: _Scaled(lambda h: torch.erfinv(_e(h))), _IMAGE, F32),
    "xlog1py_ones_like": (lambda: _Scaled(lambda h: torch.special.xlog1py(torch.ones_like(h), -_e(h))), _IMAGE, F32),
    "half_cast_of_eps": (lambda: _Scaled(lambda h: h / (h.float().var((2, 3), keepdim=True) + 1e-10).half()), _IMAGE, F16),
    "to_cast_of_eps": (
        lambda: _Scaled(lambda h: h / (h.float().var((2, 3), keepdim=True) + 1e-10).to(torch.float16)),
        _IMAGE,
        F16,
    ),
    "type_as_cast_of_eps": (lambda: _Scaled(lambda h: h / (h.float().var((2, 3), keepdim=True) + 1e-10).type_as(h)), _IMAGE, F16),
    "cast_overflows": (
        lambda: _Scaled(lambda h: h * torch.rsqrt(h.float().var((2, 3), keepdim=True) + 1e-10).half()),
        _IMAGE,
        F16,
    ),
    "group_norm_eps_0": (_GroupNorm, _IMAGE, F32),
    "layer_norm_eps_0_over_tokens": (lambda: _OverTokens(nn.LayerNorm(6, eps=0.0)), _TOKENS, F32),
    "layer_norm_eps_underflows_over_tokens": (lambda: _OverTokens(nn.LayerNorm(6, eps=1e-50)), _TOKENS, F32),
    "rms_norm_eps_0_over_tokens": (lambda: _OverTokens(nn.RMSNorm(6, eps=0.0)), _TOKENS, F32),
    "f_rms_norm_eps_underflows": (lambda: _OverTokens(_Fn(lambda h: F.rms_norm(h, (6,), eps=1e-50))), _TOKENS, F32),
    "f_layer_norm_eps_underflows": (lambda: _OverTokens(_Fn(lambda h: F.layer_norm(h, (6,), eps=1e-50))), _TOKENS, F32),
}
# The same forms where floating point keeps the channel finite: still zero-invariant.
_FINITE_WHEN_MASKED: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]] = {
    "instance_norm_by_hand": (lambda: _Scaled(lambda h: h / (_var(h) + 1e-5).sqrt()), _IMAGE, F32),
    "rms_scale_clamp_f32": (
        lambda: _Scaled(lambda h: h * torch.rsqrt(h.pow(2).mean((2, 3), keepdim=True).clamp(min=1e-12))),
        _IMAGE,
        F32,
    ),
    "normalize_f32": (lambda: _Scaled(lambda h: F.normalize(h.flatten(2), dim=-1).view_as(h)), _IMAGE, F32),
    "reciprocal_f32": (lambda: _Scaled(lambda h: h * (_var(h) + 1e-5).reciprocal()), _IMAGE, F32),
    "square_f32": (lambda: _Scaled(lambda h: h / (_m(h) + 1e-4) ** 2), _IMAGE, F32),
    "half_cast_f16": (lambda: _Scaled(lambda h: h / (h.float().var((2, 3), keepdim=True) + 1e-3).half()), _IMAGE, F16),
    "layer_norm_over_tokens": (lambda: _OverTokens(nn.LayerNorm(6)), _TOKENS, F32),
    "rms_norm_default_eps_over_tokens": (lambda: _OverTokens(nn.RMSNorm(6)), _TOKENS, F32),
}


def _masked_and_pruned(model: nn.Module, plan: skg.Plan, x: Tensor) -> tuple[Tensor, Tensor]:
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 4, 6]] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model.eval()
    with torch.no_grad():
        return dense(x).float(), pruned(x).float()


def _built(case: tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]) -> tuple[nn.Module, Tensor]:
    make, shape, dtype = case
    torch.manual_seed(0)
    return make().to(dtype).eval(), torch.randn(shape).to(dtype)


@pytest.mark.parametrize("name", sorted(_FINITE_WHEN_MASKED))
def test_a_channel_that_stays_finite_when_masked_stays_zero_invariant(name: str) -> None:
    model, x = _built(_FINITE_WHEN_MASKED[name])
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant, plan.group("a:out")
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert torch.isfinite(masked).all()
    tolerance = 1e-2 if x.dtype == F16 else 1e-4
    assert (masked - pruned).abs().max() <= tolerance * masked.abs().max()


# -- head_dim=True: a (heads, head_dim) tensor flattened onto the merged heads --------------

_MERGED: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "scale_flatten": lambda m, o: o * m.s3.flatten(),
    "bias_flatten": lambda m, o: o + m.s3.flatten(),
    "buffer_flatten": lambda m, o: o + m.b3.flatten(),
    "scale_reshape": lambda m, o: o * m.s3.reshape(-1),
    "scale_view": lambda m, o: o * m.s3.view(1, 1, -1),
    "scale_before_flatten": lambda m, o: (o.unflatten(-1, (m.num_heads, m.head_dim)) * m.s3).flatten(2),
}


class _ScaledHeads(nn.Module):
    def __init__(self, merged: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.merged = 4, 8, merged
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.s3 = nn.Parameter(torch.rand(4, 8) + 0.5)
        self.register_buffer("b3", torch.rand(4, 8))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.o(self.merged(self, o))


@pytest.mark.parametrize("name", sorted(_MERGED))
def test_a_head_dim_group_prunes_with_a_per_head_dim_tensor_flattened_onto_the_merged_heads(name: str, tmp_path) -> None:
    model, x = nn.Sequential(nn.Linear(32, 32), _ScaledHeads(_MERGED[name]), nn.Linear(32, 5)).eval(), torch.randn(2, 6, 32)
    plan = skg.plan(model, x, head_dim=True)
    group = plan.group("1.q:out:head_dim")
    assert group.prunable, group.reason
    if name != "buffer_flatten":
        assert "1.s3" in {m.param for m in group.members}, "the scale's head_dim columns go with the group"
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[2, 5]] = True
    pruned = skg.prune(model, plan, masks={"1.q:out:head_dim": mask}).model.eval()
    if group.zero_invariant:
        dense = copy.deepcopy(model)
        skg.bind(plan, dense)["1.q:out:head_dim"].apply_mask(mask)
        with torch.no_grad():
            d, p = dense(x), pruned(x)
        assert (d - p).abs().max() <= 1e-4 * d.abs().max()
    skg.prune(model, plan, ratio=0.5)  # every group at once


# -- transformers' output-capturing hooks -------------------------------------------------


def test_output_hidden_states_plans_as_without_and_leaves_no_hooks() -> None:
    """transformers installs its output-capturing hooks on the first call that asks, with a
    flag attribute. The trace took the flag back but left the hooks, so the probe's copy
    installed them twice: hidden states counted twice, every group pinned for "pruning changed
    the output shapes"."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    torch.manual_seed(0)
    model, ids = transformers.LlamaForCausalLM(config).eval(), torch.randint(1, 97, (2, 6))
    hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    plain = {g.name for g in skg.plan(model, {"input_ids": ids}).prunable}
    hidden = skg.plan(model, {"input_ids": ids, "output_hidden_states": True})
    assert hooks() == 0
    assert {g.name for g in hidden.prunable} == plain - {"model.layers.0.self_attn.o_proj:out"}, "the hidden size is an output"
    name = "model.layers.0.mlp.gate_proj:out"
    small = skg.prune(model, hidden, masks={name: torch.arange(48) % 3 == 1}).model
    with torch.no_grad():
        assert len(small(input_ids=ids, output_hidden_states=True).hidden_states) == 3
        assert len(model(input_ids=ids, output_hidden_states=True).hidden_states) == 3


# -- two spellings, one plan ----------------------------------------------------------------

_SAME_VALUE: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "var_mean": (lambda h: h / (_var(h) + 1e-5).sqrt(), lambda h: h / (torch.var_mean(h, (2, 3), keepdim=True)[0] + 1e-5).sqrt()),
    "max_values": (
        lambda h: h / (h.abs().amax((2, 3), keepdim=True) + 1e-5),
        lambda h: h / (h.abs().flatten(2).max(-1, keepdim=True).values[..., None] + 1e-5),
    ),
    "tensor_eps": (lambda h: h / (_var(h) + 1e-5).sqrt(), lambda h: h / (_var(h) + torch.tensor(1e-5)).sqrt()),
    "sum_over_count": (
        lambda h: h / (h.pow(2).mean((2, 3), keepdim=True) + 1e-5).sqrt(),
        lambda h: h / (h.pow(2).sum((2, 3), keepdim=True) / 36 + 1e-5).sqrt(),
    ),
    "square": (lambda h: h / (_m(h) + 1e-4) ** 2, lambda h: h / (_m(h) + 1e-4).square()),
    "narrow_whole": (lambda h: torch.relu(h)[:, 0 : h.shape[1]], lambda h: torch.relu(h).narrow(1, 0, h.shape[1])),
    "narrow_copy_whole": (lambda h: torch.relu(h)[:, 0 : h.shape[1]], lambda h: torch.relu(h).narrow_copy(1, 0, h.shape[1])),
}


@pytest.mark.parametrize("name", sorted(_SAME_VALUE))
def test_two_spellings_of_one_divisor_or_slice_give_one_plan(name: str) -> None:
    x = torch.randn(*_IMAGE)
    one, other = (skg.plan(_Scaled(f).eval(), x).group("a:out") for f in _SAME_VALUE[name])
    assert (one.prunable, one.zero_invariant) == (other.prunable, other.zero_invariant) == (True, True)


# -- round 19's own changes, attacked: an unknown value is no finite one ----------------------


class _ExpOfBuffer(nn.Module):
    """``exp(k - 1000 m)`` with a buffer ``k = 190``: exp(190) is inf once m is masked."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("k", torch.tensor(190.0))

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(h * torch.exp(self.k - 1000 * _m(h)))


def _inplace_reciprocal(h: Tensor) -> Tensor:
    d = _var(h) + 1e-5
    d.reciprocal_()
    return h * d


def _inplace_square(h: Tensor) -> Tensor:
    d = 8 * _m(h) - 256.0  # masked: 256 ** 2 = 65536, inf in float16; kept: (256 - 8 m) ** 2 <= 65504
    d *= d
    return h * (d * 1e-4)


_ATTACKED: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]] = {
    "cumprod_of_a_large_value": (lambda: _Scaled(lambda h: h * (1 / (_m(h) + 1e-7)).expand_as(h).cumprod(-1)), _IMAGE, F32),
    "inplace_reciprocal_f16": (lambda: _Scaled(_inplace_reciprocal), _IMAGE, F16),
    "inplace_square_f16": (lambda: _Scaled(_inplace_square), _IMAGE, F16),
    "exp_of_a_buffer_minus_m": (_ExpOfBuffer, _IMAGE, F32),
    "exp_inf_at_one_position": (
        lambda: _Scaled(lambda h: h * torch.exp(torch.tensor([0.0, 0, 0, 0, 0, 100]) - 1000 * _m(h))),
        _IMAGE,
        F32,
    ),
    "expand_as_then_sum_f16": (
        lambda: _Scaled(lambda h: h * (1 / (_m(h) + 2e-5)).expand_as(h).sum((2, 3), keepdim=True)),
        _IMAGE,
        F16,
    ),
}


@pytest.mark.parametrize("name", sorted({**_NAN_WHEN_MASKED, **_ATTACKED}))
def test_a_channel_that_becomes_inf_or_nan_when_masked_is_not_zero_invariant(name: str) -> None:
    """``_ATTACKED``: values ``masked_values`` did not compute at first were taken as finite (a
    cumulative product, an in-place write, ``exp`` of what a buffer holds, an inf at one
    position, an ``expand_as`` that dropped a known value)."""
    model, x = _built({**_NAN_WHEN_MASKED, **_ATTACKED}[name])
    with torch.no_grad():
        assert torch.isfinite(model(x)).all(), "the model itself is finite"
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    assert group.prunable and not group.zero_invariant, group
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert not torch.isfinite(masked).all() and torch.isfinite(pruned).all(), "the case computes inf or NaN masked"


@pytest.mark.parametrize(
    "f",
    [
        lambda h: h / (_var(h).clamp_min(1e-5)).sqrt(),
        lambda h: h / torch.clamp_min(_var(h), 1e-5).sqrt(),
        lambda h: h / h.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12),
        lambda h: h / (_var(h).clamp(min=1e-5)).sqrt(),
    ],
    ids=["clamp_min_method", "clamp_min_function", "norm_clamp_min", "clamp"],
)
def test_every_spelling_of_a_clamped_divisor_stays_zero_invariant(f: Callable[[Tensor], Tensor]) -> None:
    model, x = _Scaled(f).eval(), torch.randn(*_IMAGE)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert (masked - pruned).abs().max() <= 1e-4 * masked.abs().max()


class _Chain(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.a, self.b, self.blocks = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), blocks

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        for _ in range(self.blocks):
            h = h + 0.1 * torch.tanh(h)
        return self.b(h)


def test_a_chain_of_residual_blocks_is_walked_once_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """``h = h + 0.1 * tanh(h)`` twenty times took 109 s: each add walked both its operands
    again (2^20 walks), as only proofs were kept on the nodes."""
    from sparsekit_graph.graph import zeros

    walked = []
    walk = zeros._zero_breaker
    monkeypatch.setattr(zeros, "_zero_breaker", lambda *a: walked.append(a[0]) or walk(*a))
    plan = skg.plan(_Chain(20).eval(), torch.randn(1, 3, 8, 8))
    assert plan.group("a:out").zero_invariant
    assert len(walked) <= 8 * len({id(n) for n in walked}), "a node walked again and again"


def test_torchvision_stochastic_depth_keeps_zero_invariance() -> None:
    """torchvision's EfficientNet: ``StochasticDepth`` calls ``torchvision.ops.stochastic_depth``,
    which the fail-closed check took for an op that may overflow (5 groups lost their claim)."""
    torchvision = pytest.importorskip("torchvision")

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
            self.c = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
            self.sd = torchvision.ops.StochasticDepth(0.2, "row")

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.b(self.sd(self.c(h)) + h)

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(1, 3, 8, 8)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant
    masked, pruned = _masked_and_pruned(model, plan, x)
    assert (masked - pruned).abs().max() <= 1e-4 * masked.abs().max()
