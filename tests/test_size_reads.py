"""Size attributes of layers read by the model's code (``graph/size_reads.py``).

Neither tracer sees ``self.conv.out_channels``: it is a plain int. A branch on one must pin
the group it sizes at plan time (the pruned model would take another branch), and a literal
counts as a layer's attribute only where the code read it. Each model runs on the torch.fx
path, and with a device check in ``forward`` (torch.fx cannot trace it) on torch.export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_untouched, check_oracle, fingerprint, set_extras
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

C = 8
X4 = (2, 3, 6, 6)
PATHS = [pytest.param(False, id="fx"), pytest.param(True, id="export")]


class Two(nn.Module):
    """conv ``a`` (group ``a:out``, untouched by the spellings) -> conv ``c`` (group ``c:out``)
    -> ``fn(self, h)`` -> head sized by a dry run; ``export`` adds a device check torch.fx
    cannot trace."""

    def __init__(self, fn: Callable[..., Tensor], export: bool, **extra: nn.Module) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C)
        self.c, self.bn2 = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C)
        set_extras(self, extra)
        self.fn, self.export = fn, export
        with torch.no_grad():
            out = fn(self, self._body(torch.randn(*X4)))
        self.head = nn.Conv2d(out.shape[1], 4, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], 4)

    def _body(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn2(self.c(torch.relu(self.bn(self.a(x))))))  # (B, C, H, W)
        if self.export and h.is_cuda:
            h = h.contiguous()
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fn(self, self._body(x)))


def _asserts(s: nn.Module, h: Tensor) -> Tensor:
    assert s.bn2.num_features == h.shape[1]
    return h


def _loops(s: nn.Module, h: Tensor) -> Tensor:
    for i in range(s.c.out_channels // 4):
        h = h + i
    return h


def _loops_whole(s: nn.Module, h: Tensor) -> Tensor:
    for _ in range(s.c.out_channels):
        h = h + 1
    return h


def _loops_norm(s: nn.Module, h: Tensor) -> Tensor:
    h = s.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    for _ in range(s.norm.normalized_shape[0]):
        h = h * 0.5
    return h


def _linear_branch(s: nn.Module, h: Tensor) -> Tensor:
    h = torch.relu(s.fc(h.mean((2, 3))))
    return h * 2 if s.fc.out_features > 4 else h


# (spelling, extra layers, the group it must pin, the attribute its reason names)
PINS = [
    pytest.param(lambda s, h: h * 2 if s.c.out_channels == C else h, {}, "c:out", "c.out_channels", id="equal"),
    pytest.param(_linear_branch, {"fc": nn.Linear(C, 6)}, "fc:out", "fc.out_features", id="linear-greater"),
    pytest.param(_asserts, {}, "c:out", "bn2.num_features", id="assert"),
    pytest.param(_loops, {}, "c:out", "c.out_channels", id="range-floordiv"),
    pytest.param(_loops_norm, {"norm": nn.LayerNorm(C)}, "c:out", "norm.normalized_shape", id="normalized-shape"),
]
# More spellings: torch.fx in the default run, torch.export (~3 s each) in the slow step.
SLOW_ON_EXPORT = [
    pytest.param(lambda s, h: h * 2 if s.c.out_channels != 64 else h, {}, "c:out", "c.out_channels", id="other-branch"),
    pytest.param(lambda s, h: h * 2 if s.c.in_channels == C else h, {}, "a:out", "c.in_channels", id="in-channels"),
    pytest.param(_loops_whole, {}, "c:out", "c.out_channels", id="range"),
    pytest.param(lambda s, h: h * int(s.c.out_channels**0.5), {}, "c:out", "c.out_channels", id="int"),
    # ``h if s.c.out_channels else -h`` decides nothing (a count stays >= 1): tests/test_export_lengths.py
    pytest.param(lambda s, h: h if s.c.out_channels - 1 else -h, {}, "c:out", "c.out_channels", id="bool-minus-one"),
]


def _cases() -> list:
    """Every spelling on both paths; the extra spellings' torch.export runs are slow."""
    out = []
    for export in (False, True):
        for p in PINS + SLOW_ON_EXPORT:
            marks = [pytest.mark.slow] if export and p in SLOW_ON_EXPORT else []
            out.append(pytest.param(*p.values, export, marks=marks, id=f"{p.id}-{'export' if export else 'fx'}"))
    return out


@pytest.mark.parametrize(("fn", "extra", "group", "attr", "export"), _cases())
def test_control_flow_on_a_layer_size_pins_its_group(
    fn: Callable[..., Tensor], extra: dict, group: str, attr: str, export: bool, tmp_path: Path
) -> None:
    """The plan pins the group the attribute sizes, naming layer and attribute; every group it
    calls prunable prunes at 0.5 and matches the masked model; the model is left untouched."""
    model, x = Two(fn, export, **extra), torch.randn(*X4)
    assert is_exported(trace_graph(model, x)) is export
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    assert type(model.c) is nn.Conv2d and type(model.bn2) is nn.BatchNorm2d  # classes restored
    g = plan.group(group)
    assert not g.prunable and attr in (g.reason or "") and "control flow" in (g.reason or ""), g
    assert plan.prunable, "the other conv stays prunable"
    check_oracle(model, x, tmp_path, min_drop=0.0)


def _view_read(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.shape[0], s.c.out_channels, -1).mean(-1)  # (B, C)


def _zeros_read(s: nn.Module, h: Tensor) -> Tensor:
    return h.mean((2, 3)) + h.new_zeros(h.shape[0], s.c.out_channels)


@pytest.mark.parametrize(
    ("fn", "export"),
    [
        pytest.param(_view_read, False, id="view-fx"),
        pytest.param(_view_read, True, id="view-export"),
        pytest.param(_zeros_read, False, id="new-zeros-fx"),
        pytest.param(_zeros_read, True, id="new-zeros-export"),  # graph/fresh_sizes.py
    ],
)
def test_a_layer_size_read_to_build_a_size_follows(fn: Callable[..., Tensor], export: bool, tmp_path: Path) -> None:
    """``h.view(b, self.c.out_channels, -1)``: the attribute sizes a tensor that follows the
    pruned channels, so the group stays prunable and prunes (exact on the masked model)."""
    model, x = Two(fn, export), torch.randn(*X4)
    plan = skg.plan(model, x)
    assert plan.group("c:out").prunable, plan.group("c:out")
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    assert result.model.c.out_channels == C // 2


def _view_literal(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.shape[0], C, -1).mean(-1)  # the literal 8 equals s.c.out_channels and s.dim


@pytest.mark.parametrize("export", PATHS)
def test_a_literal_equal_to_an_unread_size_attribute_never_prunes_wrongly(export: bool, tmp_path: Path) -> None:
    """``view(b, 8, -1)`` written as a literal beside ``self.dim = 8`` (a size attribute the
    forward never reads) and ``c.out_channels = 8``: the literal does not follow a pruned
    count, so the group pins (or, under export, prunes only where the pruned model is exact)."""
    model, x = Two(_view_literal, export), torch.randn(*X4)
    model.dim = C
    if not export:
        g = skg.plan(model, x).group("c:out")
        assert not g.prunable and "constant size" in (g.reason or ""), g
    check_oracle(model, x, tmp_path, min_drop=0.0)


def test_a_size_used_as_a_number_costs_zero_invariance_only(tmp_path: Path) -> None:
    """``h * (1 / self.c.out_channels)``: a value, not control flow; the group stays prunable
    but is not zero-invariant (pruning changes the number)."""
    model, x = Two(lambda s, h: h * (1 / s.c.out_channels), False), torch.randn(*X4)
    g = skg.plan(model, x).group("c:out")
    assert g.prunable and not g.zero_invariant, g
    check_oracle(model, x, tmp_path, min_drop=0.0)


class Attention(nn.Module):
    """A hand-written attention that branches on its own head count."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.branch = 2, 4, branch
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # (B, H, L, D)
        if self.branch and self.num_heads > 1:
            a = a * 2
        return self.proj(a.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


@pytest.mark.parametrize("branch", [False, True], ids=["plain", "branch"])
def test_a_custom_layer_branching_on_its_head_count_pins_the_heads(branch: bool, tmp_path: Path) -> None:
    """A module's own size attribute (``self.num_heads``) that decides a branch pins the heads it
    counts; without the branch the heads prune."""
    model, x = Attention(branch), torch.randn(2, 5, C)
    plan = skg.plan(model, x)
    heads = [g for g in plan.groups if any(m.param == "proj.weight" and m.axis == 1 for m in g.members)]
    assert heads and heads[0].prunable is not branch, heads
    if branch:
        assert "num_heads" in (heads[0].reason or ""), heads[0]
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


@dataclasses.dataclass
class Width:
    """A plain config (``config_reads``): surgery rewrites ``hidden_size`` where a view reads it."""

    hidden_size: int = C


class ConfigBranch(nn.Module):
    """Linear (group ``fc:out``) -> ``view(..., 1, config.hidden_size)`` -> head, on (B, L, 6);
    ``branch`` adds ``if config.hidden_size == 8``."""

    def __init__(self, branch: bool, export: bool) -> None:
        super().__init__()
        self.config, self.branch, self.export = Width(), branch, export
        self.fc, self.head = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, C)
        if self.export and h.is_cuda:
            h = h.contiguous()
        if self.branch and self.config.hidden_size == C:
            h = h * 2
        return self.head(h.view(*h.shape[:-1], 1, self.config.hidden_size).flatten(2))


@pytest.mark.parametrize("export", PATHS)
@pytest.mark.parametrize("branch", [False, True], ids=["view-only", "branch"])
def test_control_flow_on_a_config_size_pins_the_group_it_sizes(branch: bool, export: bool, tmp_path: Path) -> None:
    """``config.hidden_size`` sizes the view (prunable: surgery rewrites it); a branch on it
    as well would flip in the pruned model, so the group pins, naming the attribute."""
    model, x = ConfigBranch(branch, export), torch.randn(2, 5, 6)
    g = skg.plan(model, x).group("fc:out")
    assert g.prunable is not branch, g
    if branch:
        assert "config.hidden_size" in (g.reason or "") and "control flow" in (g.reason or ""), g
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class Refused(nn.Module):
    """Reads a layer's size, then branches on data: neither tracer can follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.conv.out_channels == C and h.sum() > 0:
            h = h * 2
        return self.head(h)


def test_a_refused_plan_restores_every_layer_class() -> None:
    """A trace that fails midway leaves the model as it was: classes, ``__dict__``, tensors."""
    model, x = Refused(), torch.randn(*X4)
    before, attrs = fingerprint(model), dict(model.conv.__dict__)
    with pytest.raises(skg.SparseKitError):
        skg.plan(model, x)
    assert type(model.conv) is nn.Conv2d and model.conv.__dict__ == attrs
    assert type(model.conv.out_channels) is int
    assert_untouched(model, before, "refused plan")


class OwnWidth(nn.Module):
    """``view(..., 1, self.dim)`` (a module's own ``SIZE_ATTRIBUTES``); ``branch`` adds ``if self.dim == 8``."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.dim, self.branch = C, branch
        self.fc, self.head = nn.Linear(6, C), nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))  # (B, L, C)
        if self.branch and self.dim == C:
            h = h * 2
        return self.head(h.view(*h.shape[:-1], 1, self.dim).flatten(2))


@pytest.mark.parametrize("branch", [False, True], ids=["view-only", "branch"])
def test_control_flow_on_a_modules_own_size_pins(branch: bool, tmp_path: Path) -> None:
    """``self.dim`` sizes the view (prunable: surgery rewrites it); a branch on it pins."""
    model, x = OwnWidth(branch), torch.randn(2, 5, 6)
    g = skg.plan(model, x).group("fc:out")
    assert g.prunable is not branch and [(r.owner, r.attr) for r in g.sizes] == [("", "dim")], g
    if branch:
        assert "control flow on dim = 8" in (g.reason or ""), g
    result = check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
    assert result.model.dim == (C if branch else C // 2)


class TupleNorm(nn.Module):
    """OLMo's weightless LayerNorm: ``F.layer_norm`` by its own ``normalized_shape`` tuple;
    ``branch`` adds ``if self.normalized_shape == (8,)``."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.normalized_shape, self.branch = (C,), branch

    def forward(self, x: Tensor) -> Tensor:
        x = x * 2 if self.branch and self.normalized_shape == (C,) else x
        return nn.functional.layer_norm(x, self.normalized_shape)


@pytest.mark.parametrize("branch", [False, True], ids=["plain", "branch"])
def test_a_size_tuple_read_stays_on_the_fx_path(branch: bool, tmp_path: Path) -> None:
    """A tuple read (``SizeTuple``) reaches torch.fx's graph as its elements (torch.fx cannot
    rebuild the subclass: the model fell back to torch.export): the width prunes with the
    attribute rewritten, or pins where the code branches on it."""
    model, x = nn.Sequential(nn.Linear(6, C), TupleNorm(branch), nn.Linear(C, 3)), torch.randn(2, 5, 6)
    assert not is_exported(trace_graph(model, x))
    g = skg.plan(model, x).group("0:out")
    assert g.prunable is not branch and {(r.owner, r.attr) for r in g.sizes} == {("1", "normalized_shape")}, g
    if branch:
        assert "control flow on 1.normalized_shape" in (g.reason or ""), g
    result = check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
    assert result.model[1].normalized_shape == ((C,) if branch else (C // 2,))


class PairBias(nn.Module):
    """timm's ``RelPosBias`` in small: a table (positions, heads) gathered and viewed by its
    ``bias_shape`` (tokens, tokens, heads), which its resizer recomputes from the table."""

    def __init__(self, tokens: int, heads: int) -> None:
        super().__init__()
        self.bias_shape = (tokens, tokens, heads)
        self.table = nn.Parameter(torch.randn(2 * tokens - 1, heads))
        self.register_buffer("index", torch.randint(0, 2 * tokens - 1, (tokens * tokens,)))

    def get_bias(self, literal: bool) -> Tensor:
        shape = (self.bias_shape[0], self.bias_shape[1], 2) if literal else self.bias_shape
        return self.table[self.index].view(shape).permute(2, 0, 1)  # (heads, tokens, tokens)


@skg.register_resizer(PairBias)
def _pair_bias(m: PairBias) -> None:
    m.bias_shape = (*m.bias_shape[:-1], m.table.shape[-1])


class BiasedAttention(nn.Module):
    """Attention adding ``self.bias.get_bias()``, a method call (no module call: torch.fx's
    module stack never names the bias layer); ``literal`` views it by a hard-coded head count."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.literal = 2, 4, literal
        self.qkv, self.proj, self.bias = nn.Linear(C, 3 * C), nn.Linear(C, C), PairBias(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) + self.bias.get_bias(self.literal)).softmax(-1) @ v  # (B, H, L, D)
        return self.proj(a.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


@pytest.mark.parametrize("literal", [False, True], ids=["read", "literal"])
def test_a_size_read_from_a_resizing_layer_follows_it(literal: bool, tmp_path: Path) -> None:
    """``view(self.bias_shape)`` in a layer with a resizer: the head count it holds follows the
    table (CoAtNet's heads pinned while this read was lost); the same view by a hard-coded 2
    beside ``num_heads = 2`` still pins the heads."""
    model, x = BiasedAttention(literal), torch.randn(2, 4, C)
    plan = skg.plan(model, x)
    heads = next(g for g in plan.groups if any(m.param == "proj.weight" and m.axis == 1 for m in g.members))
    assert heads.prunable is not literal, heads
    if literal:
        assert "constant size" in (heads.reason or ""), heads
    else:
        assert any(m.param == "bias.table" and m.axis == 1 for m in heads.members), heads
    result = check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
    assert result.model.bias.bias_shape[-1] == result.model.bias.table.shape[-1] == (2 if literal else 1)


class Segments(nn.Module):
    """Two convs (and ``pad`` constant channels) concatenated into one depthwise conv called
    functionally with ``groups=self.dw.groups``: the attribute is the sum of the segments."""

    def __init__(self, pad: int, export: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.pad, self.export = pad, export
        self.dw = nn.Conv2d(10 + pad, 10 + pad, 3, padding=1, groups=10 + pad)
        self.head = nn.Conv2d(10 + pad, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        if self.pad:
            h = nn.functional.pad(h, (0, 0, 0, 0, 0, self.pad))
        if self.export and h.is_cuda:
            h = h.contiguous()
        h = nn.functional.conv2d(h, self.dw.weight, self.dw.bias, padding=self.dw.padding, groups=self.dw.groups)
        return self.head(torch.relu(h))


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("export", PATHS)
def test_a_size_attribute_summing_segments_of_one_axis_prunes_each(pad: int, export: bool, tmp_path: Path) -> None:
    """``F.conv2d(cat([a, b, pad]), w, groups=self.dw.groups)``: ``groups`` counts one axis made
    of segments; each segment lowers it by what it removes (a pinned one by nothing), so neither
    a pinned padding nor a segment of another size pins the rest (``shared_sizes.segment_sizes``).
    Before, the padding's pin spread to ``a`` and ``b`` through the shared attribute. Under
    torch.export the count is a literal no rule can follow: the depthwise call pins (safe)."""
    model, x = Segments(pad, export), torch.randn(*X4)
    plan = skg.plan(model, x)
    if export:
        assert "literal group count" in (plan.group("a:out").reason or ""), plan.group("a:out")
        return
    assert plan.group("a:out").prunable and plan.group("b:out").prunable, plan.groups
    assert not [t for t in plan.ties if {p.group for p in t.parts} >= {"a:out", "b:out"}], plan.ties
    result = check_oracle(model, x, tmp_path)
    kept = result.model.a.out_channels + result.model.b.out_channels + pad
    assert result.model.dw.groups == kept == result.model.dw.in_channels < 10 + pad
