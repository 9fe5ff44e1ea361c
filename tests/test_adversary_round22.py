"""Round 22 of the adversaries (issue 7): sizes computed from a layer's count, head sizes read
off the split axis, depthwise transposed convolutions, hooks no trace sees, computed kernels,
pointwise convolutions over tokens, data-dependent routing planned alike."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg


def _claims(model: nn.Module, x: Tensor, **options: object) -> list[tuple[int, bool]]:
    return [(g.size, g.zero_invariant) for g in skg.plan(model.eval(), x, **options).prunable]


# -- a half of a layer's count (``self.conv.out_channels // 2``) ---------------------------

HALVES: dict[str, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    "chunk": lambda s, h: h.chunk(2, 1),
    "split(conv.out_channels // 2)": lambda s, h: h.split(s.conv.out_channels // 2, dim=1),
    "split([o, o])": lambda s, h: torch.split(h, [s.conv.out_channels // 2] * 2, 1),
    "[:o], [o:]": lambda s, h: (h[:, : s.conv.out_channels // 2], h[:, s.conv.out_channels // 2 :]),
    "[:o], [o:2*o]": lambda s, h: (
        h[:, : s.conv.out_channels // 2],
        h[:, s.conv.out_channels // 2 : 2 * (s.conv.out_channels // 2)],
    ),
    "own attribute": lambda s, h: (h[:, : s.c // 2], h[:, s.c // 2 :]),
    "shape[1] // 2": lambda s, h: (h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2 :]),
}


class Gate(nn.Module):
    """A GLU over a conv's channels, its halves taken by ``spelling``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.c = spelling, 16
        self.conv, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = HALVES[self.spelling](self, self.conv(x))
        return self.out(a * torch.sigmoid(b))


@pytest.mark.parametrize("spelling", list(HALVES))
def test_halves_of_a_layer_count_plan_as_chunk(spelling: str, tmp_path: Path) -> None:
    """``split(self.conv.out_channels // 2)`` pinned the conv ("a number computed from it"):
    the halves shrink together (tied, as ``chunk(2)`` ties them), so the count follows."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    assert _claims(Gate(spelling), x) == _claims(Gate("chunk"), x) == [(8, True)]
    check_oracle(Gate(spelling).eval(), x, tmp_path)


class Quarter(nn.Module):
    """``h[:, :o] * h[:, o:2*o]`` with ``o = out_channels // 4``: no half; it must pin."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, o = self.conv(x), self.conv.out_channels // 4
        return self.out(h[:, :o] * h[:, o : 2 * o])


def test_a_quarter_of_a_layer_count_still_pins() -> None:
    group = skg.plan(Quarter().eval(), torch.randn(2, 3, 6, 6)).group("conv:out")
    assert not group.prunable and "conv.out_channels" in (group.reason or "")


# -- a head size read off the axis it splits (``C // self.num_heads``) --------------------


class Heads(nn.Module):
    """Attention whose heads are split by ``spelling``; ``emb`` makes the residual prunable."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.num_heads = spelling, 2
        self.emb = nn.Linear(5, 16)
        self.q, self.k, self.v, self.proj = (nn.Linear(16, 16) for _ in range(4))
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.emb(x))
        b = x.shape[0]
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.spelling == "-1":
            q, k, v = (t.view(b, t.shape[1], self.num_heads, -1) for t in (q, k, v))
        elif self.spelling == "C // num_heads":  # C of the tensor split
            q, k, v = (t.view(b, t.shape[1], self.num_heads, t.shape[-1] // self.num_heads) for t in (q, k, v))
        elif self.spelling == "k.shape[-1] // heads":  # diffusers: one head size, read off the key
            hd = k.shape[-1] // self.num_heads
            q, k, v = (t.view(b, -1, self.num_heads, hd) for t in (q, k, v))
        else:  # the residual's width: heads and residual then shrink together
            hd = x.shape[-1] // self.num_heads
            q, k, v = (t.view(b, -1, self.num_heads, hd) for t in (q, k, v))
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
        return self.out(x + self.proj(o.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("spelling", ["-1", "C // num_heads", "k.shape[-1] // heads", "x.shape[-1] // heads"])
def test_a_head_size_read_off_the_split_axis_follows(spelling: str, tmp_path: Path) -> None:
    """``t.view(B, N, self.num_heads, C // self.num_heads)`` with ``C`` the width of ``t``
    pinned the heads; the quotient is the head size whatever is pruned, as ``-1`` is. Read off
    another axis as long (the residual), that axis and the heads become one group."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 5)
    claims = _claims(Heads(spelling), x)
    assert claims == ([(2, True)] if spelling == "x.shape[-1] // heads" else [(16, True), (2, True)])
    check_oracle(Heads(spelling).eval(), x, tmp_path)


def test_a_head_size_read_off_the_key_prunes_head_dim_exactly() -> None:
    torch.manual_seed(0)
    model, x = Heads("k.shape[-1] // heads").eval(), torch.randn(2, 5, 5)
    plan = skg.plan(model, x, head_dim=True)
    group = plan.group("q:out:head_dim")
    assert group.prunable and group.zero_invariant
    mask = torch.zeros(group.size, dtype=torch.bool)
    mask[[1, 5]] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[group.name].apply_mask(mask)
    pruned = skg.prune(model, plan, masks={group.name: mask}).model
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-5, atol=1e-6)


# -- depthwise transposed convolutions -----------------------------------------------------


class Upsample(nn.Module):
    """DLA / CenterNet IDAUp: a depthwise ``ConvTranspose2d`` (``groups == in_channels``)."""

    def __init__(self, multiplier: int = 1, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8 * multiplier, 4, 2, 1, groups=8)
        self.out = nn.Conv2d(8 * multiplier, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))
        if self.functional:
            h = F.conv_transpose2d(h, self.up.weight, self.up.bias, stride=2, padding=1, groups=h.shape[1])
        else:
            h = self.up(h)
        return self.out(F.relu(h))


@pytest.mark.parametrize(("multiplier", "functional"), [(1, False), (2, False), (1, True)])
def test_a_depthwise_transposed_conv_prunes_per_channel(multiplier: int, functional: bool, tmp_path: Path) -> None:
    """A depthwise transposed conv made one group of all its channels (size 1); it is a
    depthwise conv: input channel ``j`` with its ``multiplier`` outputs is one channel."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    assert _claims(Upsample(multiplier, functional), x) == [(8, True)]
    result = check_oracle(Upsample(multiplier, functional).eval(), x, tmp_path)
    if not functional:
        up = result.model.up
        assert up.groups == up.in_channels == up.weight.shape[0] and up.out_channels == up.weight.shape[1] * up.groups


# -- hooks no trace follows ----------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)
        self.gate = nn.Parameter(torch.rand(8))

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        h = F.relu(self.c1(x))
        if gate is not None:
            h = h * gate.view(1, -1, 1, 1)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


HOOKS: dict[str, Callable[[nn.Module], object]] = {
    "forward hook reading a weight": lambda m: m.register_forward_hook(lambda mod, a, out: out + mod.c1.weight.abs().mean()),
    "pre-hook passing a parameter": lambda m: m.register_forward_pre_hook(
        lambda mod, a, kw: (a, {**kw, "gate": mod.gate}), with_kwargs=True
    ),
}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_the_models_own_hooks_pin_everything(hook: str) -> None:
    """Hooks of the model itself ran in eager but in no trace: a hook reading ``c1.weight`` gave
    a wrong zero-invariant claim, a pre-hook passing ``gate`` a prune that failed."""
    torch.manual_seed(0)
    model = Net().eval()
    HOOKS[hook](model)
    plan = skg.plan(model, torch.randn(2, 3, 6, 6))
    assert not plan.prunable
    assert all("forward hooks of the model itself" in (g.reason or "") for g in plan.groups)


def test_a_pre_hook_changing_the_input_is_named_in_the_refusal() -> None:
    model = Net().eval()
    model.register_forward_pre_hook(lambda m, a: (a[0].permute(0, 3, 1, 2),))
    with pytest.raises(skg.TraceError, match="pre-hooks of the model itself"):
        skg.plan(model, torch.randn(2, 6, 6, 3))


class LazyHook(Net):
    """Registers a hook on ``c1`` on its first call (as libraries install capture hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.installed = False

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        if not self.installed:
            self.c1.register_forward_hook(lambda m, a, o: o - o.mean(1, keepdim=True))
            self.installed = True
        return super().forward(x, gate)


def test_a_hook_the_forward_registers_pins_as_one_there_before() -> None:
    """The first trace registered it, planning removed it again, and ``c1`` planned as if it
    ran none (0.4% off after pruning); a model run once before planning pinned ``c1``."""
    x = torch.randn(2, 3, 6, 6)
    fresh = skg.plan(LazyHook().eval(), x)
    ran = LazyHook().eval()
    ran(x)
    assert fresh.model_dump(exclude={"inputs"}) == skg.plan(ran, x).model_dump(exclude={"inputs"})
    assert not fresh.group("c1:out").prunable and "hooks of Conv2d c1" in (fresh.group("c1:out").reason or "")


# -- a conv weight computed in forward -----------------------------------------------------


class Separable(nn.Module):
    """A kernel made as an outer product of column and row filters."""

    def __init__(self) -> None:
        super().__init__()
        self.kh, self.kw = nn.Parameter(torch.randn(8, 3, 3, 1) * 0.3), nn.Parameter(torch.randn(8, 3, 1, 3) * 0.3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(F.conv2d(x, self.kh @ self.kw, padding=1)).mean((2, 3)))


class Tucker(nn.Module):
    """LyCORIS-style: a conv's weight plus a Tucker delta from einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.t = nn.Parameter(torch.randn(2, 2, 3, 3) * 0.3)
        self.up, self.down = nn.Parameter(torch.randn(8, 2) * 0.3), nn.Parameter(torch.randn(2, 3) * 0.3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        delta = torch.einsum("ijkl,pi,jr->prkl", self.t, self.up, self.down)
        return self.fc(F.relu(F.conv2d(x, self.conv.weight + delta, self.conv.bias, padding=1)).mean((2, 3)))


@pytest.mark.parametrize("make", [Separable, Tucker])
def test_a_computed_kernels_spatial_axes_are_no_channels(make: type[nn.Module], tmp_path: Path) -> None:
    """The kernel axes of a weight computed in forward were prunable zero-invariant groups;
    pruning one shrank the kernel (3-6% off behind a global pool)."""
    torch.manual_seed(0)
    plan = skg.plan(make().eval(), torch.randn(2, 3, 6, 6))
    assert [g.size for g in plan.prunable] == [8]
    assert sum("kernel axis" in (g.reason or "") for g in plan.groups) == 2
    check_oracle(make().eval(), torch.randn(2, 3, 6, 6), tmp_path)


# -- a kernel-1 convolution over tokens ----------------------------------------------------


class SpatialGate(nn.Module):
    """gMLP's spatial gating unit: tokens mixed by ``Conv1d(n, n, 1)`` (its features the conv's
    spatial axis) or by a ``Linear`` over the transposed tokens."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv, self.p1, self.p2 = conv, nn.Linear(8, 16), nn.Linear(8, 8)
        self.tok = nn.Conv1d(16, 16, 1) if conv else nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.p1(x).chunk(2, dim=-1)
        v = self.tok(v) if self.conv else self.tok(v.transpose(1, 2)).transpose(1, 2)
        return x + self.p2(u * v)


def test_a_kernel_1_conv_keeps_its_spatial_axis(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    assert _claims(SpatialGate(True), x) == _claims(SpatialGate(False), x) == [(8, True)]
    check_oracle(SpatialGate(True).eval(), x, tmp_path, min_drop=0.0)


class TokenConv(nn.Module):
    """Features (``p1``'s outputs) along the spatial axis of a conv over 16 tokens."""

    def __init__(self, **conv: int) -> None:
        super().__init__()
        self.p1, self.tok = nn.Linear(8, 8), nn.Conv1d(16, 16, **{"kernel_size": 1, **conv})
        self.out = nn.Linear(self.tok(torch.zeros(1, 16, 8)).shape[-1], 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.tok(F.relu(self.p1(x))))


@pytest.mark.parametrize("conv", [{}, {"stride": 2}, {"padding": 1}, {"kernel_size": 3, "padding": 1}])
def test_only_a_position_preserving_conv_keeps_its_spatial_axis(conv: dict[str, int]) -> None:
    group = skg.plan(TokenConv(**conv).eval(), torch.randn(2, 16, 8)).group("p1:out")
    assert group.prunable is (not conv), group
    assert conv == {} or "spatial axis of Conv1d tok" in (group.reason or "")


# -- data-dependent routing: planned alike on every call ------------------------------------


class SparseMoE(nn.Module):
    """Top-2 routing, tokens dispatched by ``torch.where(idx == e)`` (torch.export's trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(16, 3)
        self.w1 = nn.ModuleList(nn.Linear(16, 24) for _ in range(3))
        self.w2 = nn.ModuleList(nn.Linear(24, 16) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        w, idx = self.gate(x).softmax(-1).topk(2, dim=-1)
        out = torch.zeros_like(x)
        for e in range(3):
            tok, slot = torch.where(idx == e)
            out.index_add_(0, tok, w[tok, slot, None] * self.w2[e](F.relu(self.w1[e](x[tok]))))
        return self.head(x + out)


def test_data_dependent_sizes_plan_alike_every_time(tmp_path: Path) -> None:
    """On meta inputs (``prune`` plans again on them) the sizes of ``x[tok]`` are torch's guesses,
    which differed from run to run: the expert groups' zero-invariance flipped, and ``prune``
    refused most plans ``plan`` had just made for the unchanged model."""
    torch.manual_seed(1)
    model, x = SparseMoE().eval(), torch.randn(12, 16)
    plan = skg.plan(model, x)
    assert [(g.size, g.zero_invariant) for g in plan.prunable] == [(24, True)] * 3
    for seed in range(3):
        torch.manual_seed(seed)
        assert skg.plan(model, plan.example_inputs(model)).groups == plan.groups
    check_oracle(model, x, tmp_path)


# -- a slice read only for its shape -------------------------------------------------------

TIME_CHANNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "ones_like(y[:, :1])": lambda y: torch.ones_like(y[:, :1]),
    "full_like(y[:, 0:1])": lambda y: torch.full_like(y[:, 0:1], 1.0),
    "ones_like(y[:, 0])": lambda y: torch.ones_like(y[:, 0]).unsqueeze(1),
    "y.new_ones(...)": lambda y: y.new_ones(y.shape[0], 1, *y.shape[2:]),
}


class ConcatTime(nn.Module):
    """torchdiffeq's ``ConcatConv2d``: a time channel ``ones_like(y[:, :1]) * t`` joins ``y``."""

    def __init__(self, spelling: str, export: bool = False) -> None:
        super().__init__()
        self.spelling, self.export = spelling, export
        self.stem, self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(9, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            assert isinstance(x, torch.Tensor)  # sends tracing to torch.export
        y = F.relu(self.stem(x))
        return self.head(F.relu(self.conv(torch.cat([TIME_CHANNELS[self.spelling](y) * 0.5, y], 1))))


@pytest.mark.parametrize("export", [False, True])
@pytest.mark.parametrize("spelling", list(TIME_CHANNELS))
def test_a_slice_read_for_its_shape_leaves_the_channels(spelling: str, export: bool, tmp_path: Path) -> None:
    """``ones_like(y[:, :1])`` pinned ``y``'s channels ("slicing"); any channel gives its shape."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    assert _claims(ConcatTime(spelling, export), x) == [(8, True), (8, True)]
    check_oracle(ConcatTime(spelling, export).eval(), x, tmp_path)


class Wide(nn.Module):
    def __init__(self, value: bool) -> None:
        super().__init__()
        self.value, self.stem, self.head = value, nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(12, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.stem(x))
        return self.head(torch.cat([y, y[:, :4] * 0 + 1 if self.value else torch.ones_like(y[:, :4])], 1))


def test_a_shape_read_keeps_as_many_channels_and_a_value_read_pins() -> None:
    x = torch.randn(2, 3, 6, 6)
    shaped = skg.plan(Wide(False).eval(), x).group("stem:out")
    assert shaped.prunable and shaped.min_keep == 4
    assert not skg.plan(Wide(True).eval(), x).group("stem:out").prunable


# -- heads split back after bmm --------------------------------------------------------------


class BmmAttention(nn.Module):
    """Heads merged into the batch for ``bmm`` and split back (``view(B, H, N, N)``), with a
    ``head_dim`` attribute the forward never reads."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, 16 // heads
        self.q, self.k, self.v, self.proj = (nn.Linear(16, 16) for _ in range(4))
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            t.reshape(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x))
        )
        b, h, n, d = q.shape
        a = torch.bmm(q.reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2)).view(b, h, n, n)
        o = torch.bmm(a.softmax(-1).flatten(0, 1), v.flatten(0, 1)).view(b, h, n, d)
        return self.out(x + self.proj(o.transpose(1, 2).reshape(b, n, -1)))


@pytest.mark.parametrize("heads", [2, 4])
def test_heads_split_back_after_bmm_are_heads_whatever_a_head_size_equals(heads: int, tmp_path: Path) -> None:
    """With 4 heads of 4, ``view(B, H, N, N)``'s H equalled the layer's head size and pinned as
    one ("head_dim at view"); it is the heads merged before ``bmm``."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    assert _claims(BmmAttention(heads), x) == [(heads, True)]
    check_oracle(BmmAttention(heads).eval(), x, tmp_path, min_drop=0.0)


# -- parameters no traced path reads ---------------------------------------------------------


class Routed(nn.Module):
    """An ``nn.ModuleDict`` routed by a string input: one route per call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleDict({"a": nn.Conv2d(8, 6, 1), "b": nn.Conv2d(8, 6, 3, padding=1)})
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor, route: str = "a") -> Tensor:
        return self.fc(self.heads[route](F.relu(self.stem(x))).mean((2, 3)))


def test_parameters_no_traced_path_reads_are_named() -> None:
    """The plan saw route ``a`` only; pruning ``stem`` left ``heads.b`` reading 8 channels of 6,
    without a word. ``plan`` warns, naming them (once: ``prune``'s second plan is quiet)."""
    model, inputs = Routed().eval(), {"x": torch.randn(2, 3, 8, 8), "route": "a"}
    with pytest.warns(skg.UnreadParameters, match=r"heads\.b\.weight, heads\.b\.bias"):
        plan = skg.plan(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", skg.UnreadParameters)
        skg.prune(model, plan, ratio=0.5)
        skg.plan(Gate("chunk").eval(), torch.randn(2, 3, 6, 6))  # every parameter read: quiet


class SliceIntoLayer(nn.Module):
    """A slice fed to a layer: asking whether its users read only its shape bound the layer's
    call without its module, and the layer pinned ("arguments could not be read")."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 6, 1), nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.b(F.relu(self.a(x))[:, :4]))


def test_a_slice_fed_to_a_layer_leaves_the_layer_readable() -> None:
    plan = skg.plan(SliceIntoLayer().eval(), torch.randn(2, 3, 5, 5))
    assert not any("could not be read" in (g.reason or "") for g in plan.groups), plan.groups


class SelectedMean(nn.Module):
    """A mean over rows a gate selects, flattened with the channels: a size that depends on
    the data (torch.export), which folds the channel count into the value."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.w1, self.w2 = nn.Linear(16, 3), nn.Linear(16, 24), nn.Linear(24, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.w1(x))
        return self.w2(h).sum() + h[self.gate(x)[:, 0] > 0].flatten().mean()


def test_prune_plans_again_on_the_inputs_plan_was_given() -> None:
    """``prune`` planned again on meta inputs, where data-dependent sizes are torch's guesses:
    the plan differed from ``plan``'s and ``prune`` refused every plan of the unchanged model.
    A plan keeps the inputs it was made with, in this process (no part of its value)."""
    torch.manual_seed(0)
    model, x = SelectedMean().eval(), torch.randn(12, 16)
    plan = skg.plan(model, x)
    assert [(g.name, g.zero_invariant) for g in plan.prunable] == [("w1:out", False), ("w2:out", True)]
    assert plan.example_inputs(model)[0] is x and skg.Plan.from_json(plan.model_dump_json()) == plan
    mask = torch.zeros(24, dtype=torch.bool)
    mask[::3] = True
    skg.prune(model, plan, masks={"w1:out": mask}).model(x)


def test_a_hook_registered_and_removed_around_a_layer_pins_it() -> None:
    class Around(Net):
        def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
            handle = self.c1.register_forward_hook(lambda m, a, o: o - o.mean(1, keepdim=True))
            h = F.relu(self.c1(x))
            handle.remove()
            return self.fc(F.relu(self.c2(h)).mean((2, 3)))

    plan = skg.plan(Around().eval(), torch.randn(2, 3, 6, 6))
    assert not plan.group("c1:out").prunable and "hooks of Conv2d c1" in (plan.group("c1:out").reason or "")


class SideBound(nn.Module):
    """A slice at another layer's count: pruning ``side`` would move the bound."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.side = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.out, self.out2 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, o = self.conv(x), self.side.out_channels
        return self.out(h[:, :o] * torch.sigmoid(h[:, o:])) + self.out2(F.relu(self.side(x)))


def test_a_slice_bound_read_off_another_layer_pins_that_layer() -> None:
    plan = skg.plan(SideBound().eval(), torch.randn(2, 3, 6, 6))
    side = plan.group("side:out")
    assert not side.prunable and "side.out_channels" in (side.reason or "")


def test_a_mask_broadcast_over_the_heads_folds_no_head_count() -> None:
    """GPT-2 without an ``attention_mask``: its causal mask ``(B, 1, L, L)`` broadcast over the
    heads kept its extent while the scores lost a head, which the export probe read as the head
    count folded into values (zero-invariance lost; masked and pruned agree exactly)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=100, n_positions=64)
    model, ids = transformers.GPT2LMHeadModel(config).eval(), torch.randint(3, 100, (2, 8))
    plan = skg.plan(model, {"input_ids": ids})
    heads = plan.group("transformer.h.0.attn.c_proj:out")
    assert heads.prunable and heads.zero_invariant
    mask = torch.zeros(4, dtype=torch.bool)
    mask[1] = True
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[heads.name].apply_mask(mask)
    pruned = skg.prune(model, plan, masks={heads.name: mask}).model
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
