"""Models written the ways strangers write PyTorch: every one is exact or pinned, never wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import nn

import sparsekit_graph as skg


class ConvBlock(nn.Module):
    """conv-BN-ReLU -> ``body`` -> 1x1 conv -> head; ``body`` is the spelling under test."""

    def __init__(self, body, c: int = 8) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, 4, 1)
        self.body = body

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        return self.b(self.body(h))


SPELLINGS = {
    "permute_dims_kw": lambda h: h.permute(dims=(0, 2, 3, 1)).permute(0, 3, 1, 2),
    "permute_varargs": lambda h: h.permute(0, 2, 3, 1).permute(*(0, 3, 1, 2)),
    "torch_permute": lambda h: torch.permute(h, (0, 2, 3, 1)).permute([0, 3, 1, 2]),
    "cat_axis": lambda h: torch.cat([h, h], axis=1)[:, : h.shape[1]] if False else torch.cat([h, h], axis=1).chunk(2, 1)[0],
    "concat_dim": lambda h: torch.concat((h, h), dim=1).chunk(2, dim=1)[1],
    "reshape_kw": lambda h: h.reshape(shape=(h.shape[0], h.shape[1], -1)).reshape(h.shape),
    "view_varargs": lambda h: h.view(h.size(0), h.size(1), -1).view(h.size()),
    "transpose_swap": lambda h: torch.swapaxes(h.transpose(1, 2), 2, 1),
    "T_T": lambda h: h.T.T,
    "mT": lambda h: h.mT.mT,
    "data_detach": lambda h: h.data + h.detach(),
    "contiguous_fn": lambda h: torch.Tensor.contiguous(h) if False else h.contiguous().clone(),
    "inplace": lambda h: h.mul_(2).relu_(),
    "mul_kw": lambda h: torch.mul(input=h, other=h),
    "add_alpha": lambda h: torch.add(h, h, alpha=2),
    "sigmoid_gate": lambda h: h * torch.sigmoid(h.mean(axis=(2, 3), keepdims=True)),
    "mean_input_kw": lambda h: h * torch.mean(input=h, dim=(2, 3), keepdim=True),
    "chunk_slice_cat": lambda h: torch.cat(torch.cat([h, h, h, h], 1).chunk(4, 1)[1:], 1).chunk(3, 1)[0],
    "split_list": lambda h: torch.cat(h.split([3, 5], dim=1), dim=1),
    "pad_channels": lambda h: F.pad(h, (0, 0, 0, 0, 2, 2))[:, 2:-2] if False else F.pad(h, (1, 1, 1, 1))[..., 1:-1, 1:-1],
}


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_spelling_is_exact(name: str, tmp_path: Path) -> None:
    model = ConvBlock(_Fn(SPELLINGS[name]))
    check_oracle(model, torch.randn(2, 3, 6, 6), tmp_path, min_drop=0.0, require=False)


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


def _plan(body, c: int = 8) -> skg.Plan:
    return skg.plan(ConvBlock(_Fn(body), c), torch.randn(2, 3, 6, 6))


def _key(plan: skg.Plan) -> list[tuple]:
    members = lambda g: tuple((m.param, m.axis, m.start, m.stop) for m in g.members)  # noqa: E731
    return [(g.size, g.prunable, g.zero_invariant, members(g)) for g in plan.groups]


@pytest.mark.parametrize(
    "a, b",
    [
        (lambda h: h.permute(0, 2, 3, 1).permute(0, 3, 1, 2), lambda h: h.permute(dims=(0, 2, 3, 1)).permute(dims=[0, 3, 1, 2])),
        (lambda h: h.mean((2, 3), True) * h, lambda h: h.mean(axis=(2, 3), keepdims=True) * h),
        (lambda h: torch.mean(h, (2, 3), True) * h, lambda h: torch.mean(input=h, dim=(2, 3), keepdim=True) * h),
        (lambda h: torch.cat([h, h], 1).chunk(2, 1)[0], lambda h: torch.cat(tensors=[h, h], axis=1).chunk(chunks=2, dim=1)[0]),
        (lambda h: h.sum(1, keepdim=True) * h, lambda h: torch.sum(h, axis=1, keepdims=True) * h),
        (lambda h: h.transpose(1, 3).transpose(1, 3), lambda h: torch.swapaxes(torch.transpose(h, 3, 1), 1, 3)),
    ],
    ids=["permute", "mean_method", "mean_function", "cat_chunk", "sum", "transpose"],
)
def test_two_spellings_give_one_plan(a, b) -> None:
    assert _key(_plan(a)) == _key(_plan(b))


def test_sum_of_sigmoid_is_not_zero_invariant() -> None:
    """A removed channel adds sigmoid(0) = 0.5 to the sum."""
    plan = _plan(lambda h: h * torch.sigmoid(h).sum(1, keepdim=True))
    assert not plan.group("a:out").zero_invariant
    plan = _plan(lambda h: h * torch.relu(h).sum(1, keepdim=True))
    assert plan.group("a:out").zero_invariant


def test_sum_over_size_is_not_zero_invariant() -> None:
    """``h.sum(1) / h.size(1)`` is a mean: the divisor changes with the channel count."""
    assert not _plan(lambda h: h * (h.sum(1, keepdim=True) / h.size(1))).group("a:out").zero_invariant
    assert not _plan(lambda h: h * (h.sum(1, keepdim=True) / h.shape[1])).group("a:out").zero_invariant
    assert _plan(lambda h: h.view(h.size(0), h.size(1), -1).view(h.shape)).group("a:out").zero_invariant


def test_l2_norm_over_channels_is_zero_invariant(tmp_path: Path) -> None:
    model = ConvBlock(_Fn(lambda h: F.normalize(h, dim=1) + h / (h.norm(dim=1, keepdim=True) + 1e-3)))
    plan = skg.plan(model, torch.randn(2, 3, 6, 6))
    assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant
    check_oracle(model, torch.randn(2, 3, 6, 6), tmp_path, min_drop=0.0)


class OptionA(nn.Module):
    """The CIFAR ResNet "option A" shortcut: subsample and zero-pad the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pad3d = nn.ConstantPad3d((0, 0, 0, 0, 2, 2), 0.0)
        self.head = nn.Linear(20, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        short = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4), "constant", 0)
        y = torch.relu(self.conv(h) + short)
        z = self.pad3d(y)
        return self.head(z.mean((2, 3)))


def test_channel_padding_is_modelled(tmp_path: Path) -> None:
    model = OptionA()
    plan = skg.plan(model, torch.randn(2, 3, 8, 8))
    stem = plan.group("stem:out")
    assert stem.prunable, stem.reason
    check_oracle(model, torch.randn(2, 3, 8, 8), tmp_path, min_drop=0.0)


class TransposedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 10)
        self.w = nn.Parameter(torch.randn(4, 10))  # used as w.T

    def forward(self, x):
        return F.linear(torch.relu(self.fc(x)), self.w.T.T) + 0 * F.linear(torch.relu(self.fc(x)).T.T, self.w)


def test_parameter_through_transpose(tmp_path: Path) -> None:
    model = TransposedWeight()
    plan = skg.plan(model, torch.randn(3, 6))
    assert plan.group("fc:out").prunable
    check_oracle(model, torch.randn(3, 6), tmp_path, min_drop=0.0)


class FlattenSpatial(nn.Module):
    """A 1-channel conv, or a channels-last permute, flattened into a Linear."""

    def __init__(self, channels_last: bool, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc = nn.Linear(c * 16, 5)
        self.channels_last = channels_last

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if self.channels_last:
            h = h.permute(0, 2, 3, 1)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("channels_last, c", [(False, 1), (True, 4), (True, 1)])
def test_spatial_axes_never_become_groups(channels_last: bool, c: int, tmp_path: Path) -> None:
    model = FlattenSpatial(channels_last, c)
    x = torch.randn(2, 3, 4, 4)
    plan = skg.plan(model, x)
    for g in plan.prunable:
        assert any(m.param == "conv.weight" and m.axis == 0 for m in g.members), g
    if c > 1:
        assert plan.group("conv:out").prunable  # channels-last: the channel axis carries through flatten
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class MyLN(nn.LayerNorm):
    pass


class MyLinear(nn.Linear):
    pass


class SeqLN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2, self.fc3 = MyLinear(8, 16), MyLN(16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):  # (B, L, C)
        return self.fc3(F.gelu(self.fc2(self.ln(self.fc1(x)))))


def test_layer_subclasses_use_their_parents_rules(tmp_path: Path) -> None:
    model = SeqLN()
    x = torch.randn(2, 5, 8)
    plan = skg.plan(model, x)
    assert {m.param for m in plan.group("fc1:out").members} >= {"fc1.weight", "ln.weight", "fc2.weight"}
    assert not plan.group("fc1:out").zero_invariant
    assert plan.group("fc2:out").zero_invariant
    check_oracle(model, x, tmp_path, min_drop=0.0)


class Unknown(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


@torch.fx.wrap
def _opaque(h: torch.Tensor) -> torch.Tensor:
    """A user function torch.fx keeps as one call: no rule can know which axes it mixes."""
    return h.flip(1)


def test_unknown_op_pins_and_says_so() -> None:
    plan = _plan(lambda h: _opaque(h))
    g = plan.group("a:out")
    assert not g.prunable and "_opaque" in (g.reason or "")


@pytest.fixture
def own_rules() -> object:
    """Rules a test replaces on purpose are put back afterwards (the registry is global)."""
    from sparsekit_graph.graph import rules

    saved = dict(rules._OP_RULES), dict(rules._MODULE_RULES)
    yield
    for table, old in zip((rules._OP_RULES, rules._MODULE_RULES), saved):
        table.clear()
        table.update(old)
    rules.module_rule_for.cache_clear()


def test_unmodelled_argument_pins(own_rules: object) -> None:
    """``F.pad`` with reflect mode on channels cannot be pruned; nor can a rule's unread argument."""

    @skg.register_function_rule(torch.roll, replace=True)
    def _roll(ctx: skg.RuleContext) -> None:  # reads only the input: shifts/dims unmodelled
        ctx.same(ctx.axes(ctx.input), ctx.out())

    g = _plan(lambda h: torch.roll(h, 1, 1)).group("a:out")
    assert not g.prunable and "shifts" in (g.reason or "")


def test_rule_leaving_an_axis_unlinked_pins(own_rules: object) -> None:
    @skg.register_function_rule(torch.flip, replace=True)
    def _flip(ctx: skg.RuleContext) -> None:  # forgets to link anything
        ctx.axes(ctx.input), ctx.arg("dims")

    g = _plan(lambda h: torch.flip(h, [1])).group("a:out")
    assert not g.prunable and "unlinked" in (g.reason or "")


class Products(nn.Module):
    """The same layer as ``nn.Linear``, ``F.linear``, ``@`` with ``.T``, ``torch.matmul`` or ``addmm``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(6, 8), nn.Linear(5, 2)
        self.w, self.b = nn.Parameter(torch.randn(5, 8)), nn.Parameter(torch.randn(5))
        self.how = how

    def forward(self, x):
        h = torch.relu(self.fc(x))
        y = {
            "linear": lambda: F.linear(h, self.w, self.b),
            "matmul_T": lambda: h @ self.w.T + self.b,
            "matmul_fn": lambda: torch.matmul(h, self.w.t()) + self.b,
            "addmm": lambda: torch.addmm(self.b, h, self.w.mT),
        }[self.how]()
        return self.head(torch.relu(y))


@pytest.mark.parametrize("how", ["matmul_T", "matmul_fn", "addmm"])
def test_products_are_linear_layers(how: str, tmp_path: Path) -> None:
    x = torch.randn(4, 6)
    model = Products(how)
    assert _key(skg.plan(model, x)) == _key(skg.plan(Products("linear"), x))
    assert skg.plan(model, x).group("w:0").prunable
    check_oracle(model, x, tmp_path, min_drop=0.0)


class Attention(nn.Module):
    def __init__(self, gate: bool) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(8, 8), nn.Linear(8, 8)
        self.gate = gate

    def forward(self, x):  # (B, L, 8)
        q, k = self.q(x), self.k(x)
        if self.gate:
            q, k = torch.sigmoid(q), torch.sigmoid(k)
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.o(a @ self.v(x))


def test_contraction_of_activations(tmp_path: Path) -> None:
    """q @ k^T sums over the q/k channels: exact if zeros survive to the product, not after sigmoid."""
    x = torch.randn(2, 5, 8)
    plan = skg.plan(Attention(gate=False), x)
    qk = plan.group("q:out")
    assert qk.prunable and qk.zero_invariant and {"q.weight", "k.weight"} <= {m.param for m in qk.members}
    assert not skg.plan(Attention(gate=True), x).group("q:out").zero_invariant
    check_oracle(Attention(gate=False), x, tmp_path, min_drop=0.0)


def test_function_form_inplace_ops_share_the_rule(tmp_path: Path) -> None:
    plan = _plan(lambda h: torch.relu_(torch.sigmoid_(h.clone())) * h)
    assert plan.group("a:out").prunable
    check_oracle(ConvBlock(_Fn(lambda h: torch.relu_(h * 1.0) + h)), torch.randn(2, 3, 6, 6), tmp_path, min_drop=0.0)


def test_slice_assignment_pins_what_it_writes() -> None:
    """torch.fx cannot trace ``out[:, :4] = ...``; torch.export can: the write (``copy_`` into
    a slice) has no rule, so every channel it touches is pinned, naming the op."""

    def write(h):
        out = torch.zeros_like(h)
        out[:, :4] = h[:, :4]
        return out

    plan = _plan(write)
    assert not plan.prunable
    assert any("copy_" in (g.reason or "") or "slicing" in (g.reason or "") for g in plan.groups)


# -- found by attacking the planner as a stranger would ------------------------------------


class LinearIntoLength(nn.Module):
    """A Linear makes the length axis of a Conv1d or a pool: that axis is spatial, never a group (a
    kernel-1 conv maps each position to itself: that one passes it through, round 22)."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.lin, self.conv, self.pool = nn.Linear(6, 10), nn.Conv1d(3, 4, 3, padding=1), pool

    def forward(self, x):  # (B, 3, 6)
        h = self.lin(x)
        return self.conv(F.max_pool1d(h, 1) if self.pool else h)


@pytest.mark.parametrize("pool", [False, True])
def test_length_axes_of_convs_and_pools_are_pinned(pool: bool) -> None:
    model = LinearIntoLength(pool)
    plan = skg.plan(model, torch.randn(2, 3, 6))
    assert not plan.group("lin:out").prunable and "spatial" in (plan.group("lin:out").reason or "")
    skg.prune(model, plan, ratio=0.5)


def _sum_after(body, c: int = 8) -> skg.Plan:
    """conv -> relu -> body(h) -> h.sum(1) -> 1x1 conv: zero-invariant only if ``body`` keeps zeros."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(1, 4, 1)
            self.register_buffer("shift", torch.rand(1, c, 1, 1))
            self.clip = nn.Hardtanh(0.5, 2.0, inplace=True)

        def forward(self, x):
            h = F.relu(self.a(x))
            h = body(self, h)
            return self.o(h.sum(1, keepdim=True))

    return skg.plan(Net(), torch.randn(2, 3, 6, 6))


def _augmented(self, h):
    g = h
    g += 1
    return h


@pytest.mark.parametrize(
    "body",
    [
        lambda self, h: (h - self.shift).abs(),  # a buffer is not zeroed by masking
        _augmented,  # g += 1 on an alias of h
        lambda self, h: (h.permute(0, 2, 3, 1).exp_(), h)[1],  # in place through a view
        lambda self, h: (h.data.add_(1), h)[1],  # in place through .data
        lambda self, h: (self.clip(h), h)[1],  # a layer with inplace=True and f(0) != 0
        lambda self, h: F.hardtanh(h, 0.5, 2.0),
    ],
    ids=["buffer", "augmented", "view-inplace", "data-inplace", "module-inplace", "hardtanh-bounds"],
)
def test_zero_breakers_found(body) -> None:
    assert not _sum_after(body).group("a:out").zero_invariant
    assert _sum_after(lambda self, h: (h.relu_(), h)[1]).group("a:out").zero_invariant


def test_forward_hooks_pin_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model[2].register_forward_pre_hook(lambda mod, i: (i[0].flip(1),))
    plan = skg.plan(model, torch.randn(2, 3, 6, 6))
    assert not plan.group("0:out").prunable and "hooks" in (plan.group("0:out").reason or "")
    assert plan.group("2:out").prunable is False  # the hooked layer's own channels are pinned too


def test_unviewable_channel_orders_pin_and_check(tmp_path: Path) -> None:
    model = ConvBlock(_Fn(lambda h: torch.cat(h.split(4, 1)[::-1], 1)))
    plan = skg.plan(model, torch.randn(2, 3, 6, 6))
    plan.check(model)
    skg.prune(model, plan, ratio=0.5)


def test_cat_of_a_chunk_tuple_is_read(tmp_path: Path) -> None:
    """``torch.cat(h.chunk(2, 1), 1)`` and ``torch.cat([c[0], c[1]], 1)`` are one plan."""
    a = _plan(lambda h: torch.cat(h.chunk(2, 1), 1))
    b = _plan(lambda h: (lambda c: torch.cat([c[0], c[1]], 1))(h.chunk(2, 1)))
    assert _key(a) == _key(b) and a.group("a:out").prunable
