"""Over-pins removed (issue 7: "pinning is not a way out"): each spelling below was pinned
although its exact plan is knowable. Each test checks the group is prunable now and the oracle
holds (masked dense == pruned for zero-invariant groups), and that the relatives which would
not follow a pruned count stay pinned."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

C = 8
X4 = (2, 3, 8, 8)


def cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


# -- a depthwise conv whose group count is read off a tensor ------------------------------------


class DepthwiseRead(nn.Module):
    """cbr ``a`` -> ``F.conv2d(h, dw, groups=<count>)`` -> conv ``b``; cbr ``g`` gives a second tensor."""

    def __init__(self, count: Callable[[Tensor, Tensor], object], per_group: int = 1, transposed: bool = False) -> None:
        super().__init__()
        self.a, self.g, self.count, self.transposed = cbr(3, C), cbr(3, C), count, transposed
        self.dw = nn.Parameter(torch.randn(C, per_group, 3, 3) * 0.3)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.a(x), self.g(x)
        conv = F.conv_transpose2d if self.transposed else F.conv2d
        return self.b(conv(h, self.dw, padding=1, groups=self.count(h, g)) + g)


def _decided(h: Tensor, g: Tensor) -> object:
    n = h.shape[1]
    if n < 4:  # Python decides on the count: the traced branch would not follow a pruned one
        raise ValueError(n)
    return n


GROUPS_READ: dict[str, tuple[Callable[[Tensor, Tensor], object], dict[str, object], bool]] = {
    "shape": (lambda h, g: h.shape[1], {}, True),
    "size_dim": (lambda h, g: h.size(1), {}, True),
    "size_then_index": (lambda h, g: h.size()[1], {}, True),
    "other_tensor": (lambda h, g: g.shape[1], {}, True),  # g's channels and h's become one count
    "decided_in_python": (_decided, {}, False),
    "half_the_channels": (lambda h, g: h.shape[1] // 2, {"per_group": 2}, False),
    "transposed": (lambda h, g: h.shape[1], {"transposed": True}, True),  # depthwise as well (round 22)
}


@pytest.mark.parametrize("name", sorted(GROUPS_READ))
def test_groups_read_off_the_input(name: str, tmp_path: Path) -> None:
    """``groups=h.shape[1]`` of a depthwise conv, plain or transposed, follows the pruned count
    (prunable, the oracle holds); a count Python decided on or a grouped (not depthwise) conv pins."""
    count, kw, prunable = GROUPS_READ[name]
    torch.manual_seed(0)
    model, x = DepthwiseRead(count, **kw).eval(), torch.randn(*X4)  # type: ignore[arg-type]
    plan = skg.plan(model, x)
    group = next(g for g in plan.groups if any(m.param == "a.0.weight" and m.axis == 0 for m in g.members))
    assert group.prunable == prunable, group.reason
    if prunable:
        assert group.zero_invariant and {m.param for m in group.members} >= {"dw", "a.0.weight", "g.0.weight", "b.weight"}
    check_oracle(model, x, tmp_path, min_drop=0.0, require=prunable)


# -- nn.Unflatten ---------------------------------------------------------------------------------


class ToMap(nn.Module):
    """Linear -> ReLU -> ``unflatten`` to a map -> BN -> conv; as a layer or a method call."""

    def __init__(self, sizes: tuple[int, ...], module: bool) -> None:
        super().__init__()
        self.sizes, self.module = sizes, module
        width = 1
        for s in sizes:
            width *= s if s > 0 else 1
        features = C * 4 if -1 in sizes else width
        self.fc, self.unflatten = nn.Linear(6, features), nn.Unflatten(1, sizes)
        channels = (features // width) if -1 in sizes else sizes[0]
        self.bn = nn.BatchNorm2d(channels) if -1 not in sizes else nn.Identity()
        self.c = nn.Conv2d(channels if -1 not in sizes else sizes[0], 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        return self.c(self.bn(self.unflatten(h) if self.module else h.unflatten(1, self.sizes)))


@pytest.mark.parametrize("sizes", [(C, 1, 1), (C, 2, 2)], ids=["c11", "c22"])
def test_unflatten_layer_follows_the_channels(sizes: tuple[int, ...], tmp_path: Path) -> None:
    """``nn.Unflatten(1, (C, h, w))``: its outermost size is the layer's, rewritten by surgery."""
    torch.manual_seed(0)
    model, x = ToMap(sizes, module=True).eval(), torch.randn(2, 6)
    group = skg.plan(model, x).group("fc:out")
    assert group.prunable and group.zero_invariant, group.reason
    assert [s.attr for s in group.sizes] == ["unflattened_size"]
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    kept = result.model.fc.out_features // (sizes[1] * sizes[2])
    assert result.model.unflatten.unflattened_size == (kept, *sizes[1:])


def test_unflatten_with_an_inferred_size_plans_like_the_method() -> None:
    """With a ``-1`` the layer's literal sizes stay literals, as the method call's do."""
    x = torch.randn(2, 6)
    layer, method = ToMap((2, -1, 1), module=True), ToMap((2, -1, 1), module=False)
    method.load_state_dict(layer.state_dict())
    a, b = skg.plan(layer, x), skg.plan(method, x)
    assert [(g.name, g.prunable, g.zero_invariant, g.size) for g in a.groups] == [
        (g.name, g.prunable, g.zero_invariant, g.size) for g in b.groups
    ]


# -- a size read kept in a local, then only shown --------------------------------------------------

_log = logging.getLogger("overpins")
_BUF = io.StringIO()


def _print_local(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    print(n)
    return h


def _print_local_stderr(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    label = f"conv width {n}"
    print(label, n, file=sys.stderr)
    return h


def _log_local(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    _log.debug("conv width %d", n)
    return h


def _write_stdout(s: nn.Module, h: Tensor) -> Tensor:
    sys.stdout.write(str(s.conv.out_channels))
    return h


def _write_local(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    sys.stderr.write(f"{n}\n")
    return h


LOCAL_SHOWN = [_print_local, _print_local_stderr, _log_local, _write_stdout, _write_local]


def _print_then_index(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    print(n)
    return h * ((0.5,) * 100)[n]


def _redirect_then_print(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    with contextlib.redirect_stdout(_BUF):  # printed into a buffer the model reads back
        print(n)
    return h * 2 if _BUF.getvalue().endswith("64\n") else h


def _call_then_print(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    _swap_stdout()  # any call while the local holds the read may redirect the output
    print(n)
    sys.stdout = sys.__stdout__
    return h * 2 if _BUF.getvalue().endswith("64\n") else h


def _swap_stdout() -> None:
    sys.stdout = _BUF


def _write_count_used(s: nn.Module, h: Tensor) -> Tensor:
    k = sys.stdout.write(str(s.conv.out_channels))  # the count written is the read's length
    return h * 2 if k == 2 else h


def _warn_local(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    warnings.warn(f"conv width {n}", stacklevel=1)  # the default action keeps the text in __warningregistry__
    return h


LOCAL_REACHING = [_print_then_index, _redirect_then_print, _call_then_print, _write_count_used, _warn_local]


class Reads(nn.Module):
    """conv ``a`` -> BN -> conv ``conv`` (64 channels) -> BN -> ``fn(self, h)`` -> 1x1 head."""

    def __init__(self, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.bn, self.conv = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3)
        self.bn2, self.head, self.fn = nn.BatchNorm2d(64), nn.Conv2d(64, 4, 1), fn

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fn(self, torch.relu(self.bn2(self.conv(torch.relu(self.bn(self.a(x))))))))


def _conv_group(fn: Callable[[nn.Module, Tensor], Tensor]) -> tuple[nn.Module, skg.Group]:
    torch.manual_seed(0)
    model = Reads(fn).eval()
    return model, skg.plan(model, torch.randn(2, 3, 6, 6)).group("conv:out")


@pytest.mark.parametrize("fn", LOCAL_SHOWN, ids=lambda f: f.__name__.strip("_"))
def test_a_read_kept_in_a_local_and_shown_does_not_pin(fn: Callable[[nn.Module, Tensor], Tensor], tmp_path: Path) -> None:
    """``n = conv.out_channels; print(n)``, ``sys.stdout.write(str(n))``: planned as with no read."""
    _, base = _conv_group(lambda s, h: h)
    model, group = _conv_group(fn)
    assert group.prunable and group.zero_invariant, group.reason
    assert group == base
    check_oracle(model, torch.randn(2, 3, 6, 6), tmp_path)


@pytest.mark.filterwarnings("ignore:conv width")
@pytest.mark.parametrize("fn", LOCAL_REACHING, ids=lambda f: f.__name__.strip("_"))
def test_a_read_kept_in_a_local_that_may_come_back_pins(fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    """Used after it was shown, shown into a redirected stdout, a call between the read and the
    print, the count ``write`` returns used, or given to ``warnings.warn``: pinned."""
    before = sys.stdout
    try:
        _, group = _conv_group(fn)
    finally:
        sys.stdout = before
        _BUF.seek(0)
        _BUF.truncate()
    assert not group.prunable and "conv.out_channels" in (group.reason or ""), group.reason


# -- as many heads as each head is wide -------------------------------------------------------------


class EqualHeads(nn.Module):
    """Attention with ``num_heads == head_dim == 4``, heads split by ``split`` (a spelling)."""

    def __init__(self, split: str, heads: int = 4, head_dim: int = 4) -> None:
        super().__init__()
        d = heads * head_dim
        self.num_heads, self.head_dim, self.split = heads, head_dim, split
        self.inp, self.q, self.k, self.v, self.o = (nn.Linear(6, d), *(nn.Linear(d, d) for _ in range(4)))
        self.out = nn.Linear(d, 3)

    def heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        if self.split == "view":
            t = t.view(b, n, self.num_heads, self.head_dim)
        elif self.split == "reshape":
            t = t.reshape(b, n, self.num_heads, -1)
        elif self.split == "unflatten":
            t = t.unflatten(-1, (self.num_heads, self.head_dim))
        else:  # literal sizes: nothing says which 4 is the head count
            t = t.view(b, n, 4, 4)
        return t.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        q, k, v = (self.heads(p(h)) for p in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.out(h + self.o(o))


@pytest.mark.parametrize("split", ["view", "reshape", "unflatten", "literal"])
def test_heads_as_wide_as_their_count(split: str, tmp_path: Path) -> None:
    """Where each size says which attribute it was read from, 4 heads of 4 plan as 4 heads of 6
    (prunable heads, ``num_heads`` rewritten, the oracle holds); two literal 4s stay pinned."""
    torch.manual_seed(0)
    model, x = EqualHeads(split).eval(), torch.randn(2, 5, 6)
    plan = skg.plan(model, x)
    heads = next(g for g in plan.groups if any(m.param == "q.weight" and m.axis == 0 for m in g.members))
    if split == "literal":
        assert not heads.prunable, heads.reason
        check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
        return
    wider = skg.plan(EqualHeads(split, head_dim=6), x)
    wide = next(g for g in wider.groups if any(m.param == "q.weight" and m.axis == 0 for m in g.members))
    assert heads.prunable and heads.zero_invariant and heads.size == 4, heads.reason
    assert (heads.size, [(r.attr, r.per_channel) for r in heads.sizes]) == (
        wide.size,
        [(r.attr, r.per_channel) for r in wide.sizes],
    )
    result = check_oracle(model, x, tmp_path)
    assert result.model.num_heads == result.report.kept[heads.name] < 4


# -- a literal inside a computed size ---------------------------------------------------------------

MERGED: dict[str, Callable[[Tensor, int, int, int], Tensor]] = {
    "reshape_b_times_4": lambda q, b, n, d: q.reshape(b * 4, n, d),
    "view_b_times_4": lambda q, b, n, d: q.contiguous().view(b * 4, n, d),
    "reshape_4_times_b": lambda q, b, n, d: q.reshape(4 * b, n, d),
    "reshape_b_times_2_times_2": lambda q, b, n, d: torch.reshape(q, (b * 2 * 2, n, d)),
    "reshape_inferred": lambda q, b, n, d: q.reshape(-1, n, d),  # -1 follows a pruned count
}


class LiteralInProduct(EqualHeads):
    """``q.reshape(b * 4, n, d)`` (a spelling of ``MERGED``): a literal head count inside a
    computed size, beside ``view(b, n, self.num_heads, self.head_dim)`` and ``reshape(b *
    self.num_heads, n, d)`` of the keys and values."""

    def __init__(self, merge: str) -> None:
        super().__init__("view", head_dim=6)
        self.merge = merge

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        q = MERGED[self.merge](q, b, n, self.head_dim)
        att = torch.bmm(q, k.reshape(b * self.num_heads, n, self.head_dim).transpose(1, 2)).softmax(-1)
        o = torch.bmm(att, v.reshape(b * self.num_heads, n, self.head_dim)).view(b, self.num_heads, n, self.head_dim)
        return self.out(h + self.o(o.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("merge", sorted(MERGED))
@pytest.mark.parametrize("batch", [2, 4], ids=["b2", "b4"])  # b4: the batch is as long as the head count
def test_a_literal_inside_a_computed_size_pins(merge: str, batch: int, tmp_path: Path) -> None:
    """``b * 4`` does not follow the head count (the 4 is the code's): the heads pin, naming the
    reshape; ``reshape(-1, n, d)`` infers it, so the heads stay prunable and the oracle holds."""
    torch.manual_seed(0)
    model, x = LiteralInProduct(merge).eval(), torch.randn(batch, 5, 6)
    plan = skg.plan(model, x)
    heads = next(g for g in plan.groups if any(m.param == "q.weight" and m.axis == 0 for m in g.members))
    inferred = merge == "reshape_inferred"
    assert heads.prunable == inferred, heads.reason
    if not inferred:
        assert "constant factor in a computed size" in (heads.reason or ""), heads.reason
    result = check_oracle(model, x, tmp_path, min_drop=0.0, require=inferred)
    if inferred:
        assert result.model.num_heads == result.report.kept[heads.name] < 4
