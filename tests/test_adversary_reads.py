"""Adversarial models for size reads (``graph/size_reads.py``), the export probe
(``plan/probe.py``) and parameter views (``RuleContext.param_view``), written the ways people
write PyTorch. Each model: the oracle holds, or the axis is pinned, or ``plan`` refuses cleanly;
and the user's model is bitwise unchanged after plan and prune, classes and ``__dict__`` included.

A model with ``export=True`` adds ``if h.is_cuda: h = h.contiguous()`` (torch.fx cannot trace
it), so it is planned through ``torch.export`` and the probe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_untouched, fingerprint, oracle_or_refusal, realistic_bn, set_extras
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

C = 64  # channels: thresholds at 48 are crossed by every prune that removes a quarter
X4 = (2, 3, 6, 6)
_log = logging.getLogger("adversary")


class Net(nn.Module):
    """conv ``a`` -> BN -> conv ``conv`` -> BN -> ``fn(self, h)`` -> head sized by a dry run.
    ``init(self)`` runs before the dry run (sizes stored on ``self``)."""

    def __init__(self, fn: Callable[..., Tensor], export: bool = False, init: Callable | None = None, **extra: object) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C)
        self.conv, self.bn2 = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C)
        set_extras(self, extra)  # type: ignore[arg-type]
        if init is not None:
            init(self)
        self.fn, self.export = fn, export
        with torch.no_grad():
            out = fn(self, self.body(torch.randn(*X4)))
        self.head = nn.Conv2d(out.shape[1], 4, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], 4)

    def body(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn2(self.conv(torch.relu(self.bn(self.a(x))))))
        if self.export and h.is_cuda:
            h = h.contiguous()
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fn(self, self.body(x)))


def strict_fingerprint(model: nn.Module) -> tuple:
    """``fingerprint`` plus every module's class and ``__dict__`` (keys, value types, plain values)."""

    def plain(v: object) -> object:
        if isinstance(v, (tuple, list)):
            return type(v), tuple(plain(e) for e in v)
        if isinstance(v, (int, float, str, bool, type(None))):
            return type(v), v
        return type(v), id(v)

    dicts = [
        (n, type(m), {k: plain(v) for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers")})
        for n, m in model.named_modules()
    ]
    return fingerprint(model), dicts


def check(model: nn.Module, tmp_path: Path) -> skg.Plan | None:
    """The oracle or a refusal, the model strictly untouched; the plan (None on refusal)."""
    x = torch.randn(*X4, generator=torch.Generator().manual_seed(0))
    realistic_bn(model, x)  # what the oracle does first (deterministic), so the fingerprint sees it
    before = strict_fingerprint(model)
    oracle_or_refusal(model, x, tmp_path)
    after = strict_fingerprint(model)
    assert_untouched(model, before[0], "plan and prune")
    assert after[1] == before[1], "a module's class or __dict__ changed"
    try:
        return skg.plan(model, x)
    except skg.SparseKitError:
        return None


def group(plan: skg.Plan, name: str) -> skg.Group:
    return next(g for g in plan.groups if g.name == name)


# --- size reads: Python on a channel count -------------------------------------------------------


def _thresh_shape(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if h.shape[1] > 48 else h


def _mod16(s: nn.Module, h: Tensor) -> Tensor:
    if s.conv.out_channels % 16 == 0:
        h = h * 2
    return h


def _getattr_read(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.conv.out_channels > 48 else h


def _weight_shape(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.conv.weight.shape[0] > 48 else h


def _weight_size(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.conv.weight.size(0) > 48 else h


def _len_weight(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if len(s.bn2.weight) > 48 else h


def _numel(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.bn2.weight.numel() > 48 else h


def _max_view(s: nn.Module, h: Tensor) -> Tensor:
    return h.view(h.shape[0], max(s.a.out_channels, s.conv.out_channels), -1).mean(-1)


def _other_layers_size(s: nn.Module, h: Tensor) -> Tensor:
    """``a.out_channels`` (another group, same value) shapes ``conv``'s output."""
    return h.reshape(h.shape[0], s.a.out_channels, -1).mean(-1)


def _bn_features_view(s: nn.Module, h: Tensor) -> Tensor:
    """``bn2.num_features`` is ``conv``'s own count: it follows the prune."""
    return h.reshape(h.shape[0], s.bn2.num_features, -1).amax(-1)


def _stored_width(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.width > 48 else h


def _stored_dim(s: nn.Module, h: Tensor) -> Tensor:
    h = h.view(h.shape[0], s.dim, -1).amax(-1)
    return h * 2 if s.dim > 48 else h


def _stored_hidden(s: nn.Module, h: Tensor) -> Tensor:
    h = h.view(h.shape[0], s.hidden_size, -1).amax(-1)
    return h * 2 if s.hidden_size > 48 else h


def _stored_hidden_only_branch(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.hidden_size > 48 else h


def _scale_if_wide(h: Tensor, n: int) -> Tensor:
    return h * 2 if n > 48 else h


def _helper(s: nn.Module, h: Tensor) -> Tensor:
    return _scale_if_wide(h, s.conv.out_channels)


@dataclass
class Cfg:
    width: int


def _dataclass(s: nn.Module, h: Tensor) -> Tensor:
    cfg = Cfg(s.conv.out_channels)
    return h * 2 if cfg.width > 48 else h


def _fstring(s: nn.Module, h: Tensor) -> Tensor:
    _log.debug(f"conv has {s.conv.out_channels} channels")
    return h


def _logging_args(s: nn.Module, h: Tensor) -> Tensor:
    _log.debug("conv has %d channels", s.conv.out_channels)
    return h


def _unused_read(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels  # noqa: F841 - read, never used
    return h


def _is_scripting(s: nn.Module, h: Tensor) -> Tensor:
    if not torch.jit.is_scripting() and s.conv.out_channels > 48:
        h = h * 2
    return h


def _compare_two(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.a.out_channels == s.conv.out_channels else h


def _norm_shape(s: nn.Module, h: Tensor) -> Tensor:
    t = h.flatten(2).transpose(1, 2)
    t = s.norm(t)
    return t * 2 if s.norm.normalized_shape[0] > 48 else t


def _norm_shape_view(s: nn.Module, h: Tensor) -> Tensor:
    t = s.norm(h.flatten(2).transpose(1, 2))
    return t.reshape(t.shape[0], -1, *s.norm.normalized_shape).amax(1)


def _modulelist(s: nn.Module, h: Tensor) -> Tensor:
    for blk in s.blocks:
        h = h + blk(h)
    for i in range(len(s.blocks)):
        h = h * (i + 1)
    return h


def _leaks_read(s: nn.Module, h: Tensor) -> Tensor:
    s.last = s.conv.out_channels  # a cached size: must stay a plain int on the user's model
    return h.reshape(h.shape[0], s.last, -1).amax(-1)


def _range_read(s: nn.Module, h: Tensor) -> Tensor:
    for _ in range(s.conv.out_channels // 32):
        h = h + 1
    return h


def _list_mult(s: nn.Module, h: Tensor) -> Tensor:
    w = torch.tensor([1.0] * s.conv.out_channels).view(1, -1, 1, 1)
    return h * w


def _zeros_add(s: nn.Module, h: Tensor) -> Tensor:
    return h + torch.zeros(1, s.conv.out_channels, 1, 1)


def _new_ones(s: nn.Module, h: Tensor) -> Tensor:
    return h * h.new_ones(s.conv.out_channels).view(1, -1, 1, 1)


def _linspace(s: nn.Module, h: Tensor) -> Tensor:
    """Per-channel values computed from the count: a pruned count gives other values."""
    return h * torch.linspace(0.5, 1.5, s.conv.out_channels).view(1, -1, 1, 1)


def _arange_values(s: nn.Module, h: Tensor) -> Tensor:
    return h + torch.arange(s.conv.out_channels, dtype=h.dtype).view(1, -1, 1, 1) * 0.01


def _arange_shape(s: nn.Module, h: Tensor) -> Tensor:
    return h + torch.arange(h.shape[1], dtype=h.dtype).view(1, -1, 1, 1) * 0.01


def _equal_branches(s: nn.Module, h: Tensor) -> Tensor:
    """Branches 0 and 3 (equal sizes, the probe's same turn) compared: another count must show."""
    hs = [b(h) for b in s.bs]
    if hs[0].shape[1] == hs[3].shape[1]:
        hs[0] = hs[0] * 2
    return torch.cat([x.mean((2, 3)) for x in hs], 1)


class GetattrConv(nn.Conv2d):
    """A layer whose ``width`` comes through ``__getattr__``."""

    def __getattr__(self, name: str) -> object:
        if name == "width":
            return self.out_channels
        return super().__getattr__(name)


class GetattributeConv(nn.Conv2d):
    def __getattribute__(self, name: str) -> object:
        return super().__getattribute__(name)


class SlotConv(nn.Conv2d):
    __slots__ = ("tag",)


def _sub_layer_branch(s: nn.Module, h: Tensor) -> Tensor:
    h = s.sub(h)
    return h * 2 if s.sub.out_channels > 48 else h


def _getattr_width(s: nn.Module, h: Tensor) -> Tensor:
    h = s.sub(h)
    return h * 2 if s.sub.width > 48 else h


def _wrapped(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(fn)
    def inner(s: nn.Module, h: Tensor) -> Tensor:
        return fn(s, h)

    return inner


@_wrapped
def _decorated(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.conv.out_channels > 48 else h


class Heads(nn.Module):
    """timm-style attention: ``if self.num_heads > 2``, views by ``num_heads`` / ``head_dim``."""

    def __init__(self, dim: int = C, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.num_heads > 2:
            q = q * 0.5
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def _heads(s: nn.Module, h: Tensor) -> Tensor:
    return s.attn(h.flatten(2).transpose(1, 2)).mean(1)


# --- parameter views ---------------------------------------------------------------------------


def _w() -> nn.Parameter:
    return nn.Parameter(torch.randn(C, C, 3, 3) * 0.05)


def _detach_clone(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.detach().clone(), padding=1)


def _data_t_linear(s: nn.Module, h: Tensor) -> Tensor:
    return F.linear(h.mean((2, 3)), s.lw.data.T)


def _to_dtype(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.to(h.dtype), padding=1)


def _float(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.float(), padding=1)


def _half_float(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.half().float(), padding=1)


def _contiguous_view(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.flat.contiguous().view(C, C, 3, 3), padding=1)


def _times_one(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w * 1.0, padding=1)


def _flip_out(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.flip(0), padding=1)


def _flip_in(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.flip(1), padding=1)


def _t_matmul(s: nn.Module, h: Tensor) -> Tensor:
    return h.mean((2, 3)) @ s.fc.weight.t()


def _permute_transposed(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv_transpose2d(h, s.w.permute(1, 0, 2, 3), padding=1)


def _mT(s: nn.Module, h: Tensor) -> Tensor:  # noqa: N802
    return F.linear(h.mean((2, 3)), s.lw.mT)


def _bias_detach(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w, s.b.detach(), padding=1)


def _data_tt(s: nn.Module, h: Tensor) -> Tensor:
    return (
        F.conv2d(h, s.w.data.T.T, padding=1)
        if s.w.dim() == 2
        else F.conv2d(h, s.w.transpose(0, 1).transpose(0, 1).data, padding=1)
    )


def _tied_detach(s: nn.Module, h: Tensor) -> Tensor:
    z = h.mean((2, 3))
    return s.fc(z) + F.linear(z, s.fc.weight.detach())


def _slice_of_view(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.detach()[: C // 2], padding=1)


def _double(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h.double(), s.w.to(torch.float64), padding=1).float()


def _clone_inplace(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.clone().mul_(0.5), padding=1)


def _last_channel_zeroed(s: nn.Module, h: Tensor) -> Tensor:
    w = s.w.clone()
    w[-1] = 0
    return F.conv2d(h, w, padding=1)


def _roll(s: nn.Module, h: Tensor) -> Tensor:
    return F.conv2d(h, s.w.roll(1, 0), padding=1)


def _view_used_twice(s: nn.Module, h: Tensor) -> Tensor:
    w = s.w.detach()
    return F.conv2d(h, w, padding=1) + F.conv2d(h, w.transpose(0, 1), padding=1)


def _lw() -> nn.Parameter:
    return nn.Parameter(torch.randn(C, 32) * 0.1)  # (in, out): used as ``w.T``


# (id, fn, extras factory, init, export variants, default run)
Case = tuple[str, Callable[..., Tensor], Callable[[], dict], Callable | None, tuple[bool, ...], bool]
CASES: list[Case] = [
    ("thresh_shape", _thresh_shape, dict, None, (True,), False),
    ("mod16", _mod16, dict, None, (False, True), True),
    ("getattr_read", _getattr_read, dict, None, (False, True), False),
    ("weight_shape", _weight_shape, dict, None, (False, True), True),
    ("weight_size", _weight_size, dict, None, (False, True), False),
    ("len_weight", _len_weight, dict, None, (False, True), False),
    ("numel", _numel, dict, None, (False, True), False),
    ("max_view", _max_view, dict, None, (False, True), False),
    ("other_layers_size", _other_layers_size, dict, None, (False, True), True),
    ("bn_features_view", _bn_features_view, dict, None, (False, True), False),
    ("stored_width", _stored_width, dict, lambda s: setattr(s, "width", s.conv.out_channels), (False, True), False),
    ("stored_dim", _stored_dim, dict, lambda s: setattr(s, "dim", s.conv.out_channels), (False, True), True),
    ("stored_hidden", _stored_hidden, dict, lambda s: setattr(s, "hidden_size", s.conv.out_channels), (False, True), False),
    (
        "stored_hidden_only_branch",
        _stored_hidden_only_branch,
        dict,
        lambda s: setattr(s, "hidden_size", s.conv.out_channels),
        (False,),
        False,
    ),
    ("helper", _helper, dict, None, (False, True), False),
    ("dataclass", _dataclass, dict, None, (False,), False),
    ("is_scripting", _is_scripting, dict, None, (False,), False),
    ("fstring", _fstring, dict, None, (False, True), False),
    ("logging_args", _logging_args, dict, None, (False,), False),
    ("unused_read", _unused_read, dict, None, (False,), False),
    ("compare_two", _compare_two, dict, None, (False, True), True),
    ("norm_shape", _norm_shape, lambda: {"norm": nn.LayerNorm(C)}, None, (False, True), False),
    ("norm_shape_view", _norm_shape_view, lambda: {"norm": nn.LayerNorm(C)}, None, (False,), False),
    ("modulelist", _modulelist, lambda: {"blocks": nn.ModuleList(nn.Conv2d(C, C, 1) for _ in range(2))}, None, (False,), False),
    ("leaks_read", _leaks_read, dict, None, (False,), True),
    ("range_read", _range_read, dict, None, (False, True), False),
    ("list_mult", _list_mult, dict, None, (False,), False),
    ("zeros_add", _zeros_add, dict, None, (False, True), False),
    (
        "equal_branches",
        _equal_branches,
        lambda: {"bs": nn.ModuleList(nn.Conv2d(C, 16, 1) for _ in range(4))},
        None,
        (True,),
        True,
    ),
    ("new_ones", _new_ones, dict, None, (False, True), False),
    ("linspace", _linspace, dict, None, (False, True), True),
    ("arange_values", _arange_values, dict, None, (False, True), False),
    ("arange_shape", _arange_shape, dict, None, (False, True), False),
    ("sub_getattribute", _sub_layer_branch, lambda: {"sub": GetattributeConv(C, C, 1)}, None, (False,), False),
    ("sub_slots", _sub_layer_branch, lambda: {"sub": SlotConv(C, C, 1)}, None, (False,), False),
    ("sub_getattr_width", _getattr_width, lambda: {"sub": GetattrConv(C, C, 1)}, None, (False, True), True),
    ("decorated", _decorated, dict, None, (False,), False),
    ("heads", _heads, lambda: {"attn": Heads()}, None, (False, True), False),
    # parameter views
    ("detach_clone", _detach_clone, lambda: {"w": _w()}, None, (False, True), True),
    ("data_t_linear", _data_t_linear, lambda: {"lw": _lw()}, None, (False, True), True),
    ("to_dtype", _to_dtype, lambda: {"w": _w()}, None, (False,), False),
    ("float", _float, lambda: {"w": _w()}, None, (False,), False),
    ("half_float", _half_float, lambda: {"w": _w()}, None, (False,), False),
    ("contiguous_view", _contiguous_view, lambda: {"flat": nn.Parameter(torch.randn(C, C * 9) * 0.05)}, None, (False,), False),
    ("times_one", _times_one, lambda: {"w": _w()}, None, (False,), False),
    ("flip_out", _flip_out, lambda: {"w": _w()}, None, (False, True), True),
    ("flip_in", _flip_in, lambda: {"w": _w()}, None, (False,), True),
    ("roll", _roll, lambda: {"w": _w()}, None, (False,), False),
    ("t_matmul", _t_matmul, lambda: {"fc": nn.Linear(C, 32)}, None, (False,), False),
    ("permute_transposed", _permute_transposed, lambda: {"w": _w()}, None, (False, True), False),
    ("mT", _mT, lambda: {"lw": _lw()}, None, (False,), False),
    ("bias_detach", _bias_detach, lambda: {"w": _w(), "b": nn.Parameter(torch.randn(C) * 0.1)}, None, (False,), False),
    ("data_tt", _data_tt, lambda: {"w": _w()}, None, (False,), False),
    ("tied_detach", _tied_detach, lambda: {"fc": nn.Linear(C, C)}, None, (False,), True),
    ("slice_of_view", _slice_of_view, lambda: {"w": _w()}, None, (False,), False),
    ("double", _double, lambda: {"w": _w()}, None, (False,), False),
    ("clone_inplace", _clone_inplace, lambda: {"w": _w()}, None, (False,), False),
    ("last_channel_zeroed", _last_channel_zeroed, lambda: {"w": _w()}, None, (False,), True),
    ("view_used_twice", _view_used_twice, lambda: {"w": _w()}, None, (False,), False),
]

XFAIL: dict[str, str] = {}


def _params() -> list:
    out = []
    for name, fn, extras, init, paths, default in CASES:
        for export in paths:
            marks = [] if default and (export is False or len(paths) == 1) else [pytest.mark.slow]
            key = f"{name}-{'export' if export else 'fx'}"
            if key in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[key]))
            out.append(pytest.param(fn, extras, init, export, id=key, marks=marks))
    return out


@pytest.mark.parametrize(("fn", "extras", "init", "export"), _params())
def test_adversary(
    fn: Callable[..., Tensor], extras: Callable[[], dict], init: Callable | None, export: bool, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = Net(fn, export=export, init=init, **extras())
    if export:  # torch.fx fails on the device check; torch.export runs, or plan refuses (``w.data``)
        try:
            assert is_exported(trace_graph(model.eval(), torch.randn(*X4)))
        except skg.SparseKitError:
            with pytest.raises(skg.SparseKitError):
                skg.plan(model, torch.randn(*X4))
    check(model, tmp_path)


# --- regressions for what the cases above found ---------------------------------------------------


def _plan(fn: Callable[..., Tensor], export: bool, **extra: object) -> skg.Plan:
    model = Net(fn, export=export, **extra).eval()
    return skg.plan(model, torch.randn(*X4))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_another_layers_size_shaping_an_axis_prunes_both_together(export: bool) -> None:
    """``h.reshape(b, self.a.out_channels, -1)`` on ``conv``'s output (both 64): surgery rewrites
    ``a.out_channels`` to ``a``'s new count, so ``conv:out`` must lose as many (one group)."""
    plan = _plan(_other_layers_size, export)
    merged = [g for g in plan.prunable if {m.param for m in g.members} >= {"a.weight", "conv.weight"}]
    pinned = {g.name for g in plan.groups if not g.prunable}
    assert merged or {"a:out", "conv:out"} <= pinned, plan.groups


def test_max_of_two_sizes_pins_both_under_export() -> None:
    """torch.export swaps ``max`` for its own function (``_tensor_min_max``): its comparison is the model's."""
    plan = _plan(_max_view, True)
    for name in ("a:out", "conv:out"):
        assert not group(plan, name).prunable and "a comparison" in group(plan, name).reason


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_comparing_two_sizes_pins_both(export: bool) -> None:
    plan = _plan(_compare_two, export)
    for name in ("a:out", "conv:out"):
        assert not group(plan, name).prunable, name


def test_a_models_own_size_attribute_in_a_branch_pins() -> None:
    """``self.dim`` (a ``SIZE_ATTRIBUTES`` name, not a layer's) read by ``if self.dim > 48``."""
    plan = _plan(_stored_dim, False, init=lambda s: setattr(s, "dim", C))
    assert not group(plan, "conv:out").prunable and "dim" in group(plan, "conv:out").reason


# --- the zoo: no new pins -----------------------------------------------------------------------

ZOO_TV = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"]
ZOO_HF = ["llama", "gpt2", "bert", "vit"]


def _zoo(name: str) -> tuple[nn.Module, object]:
    if name in ZOO_HF:
        from sparsekit_graph.zoo import hf_model

        return hf_model(name)
    tv = pytest.importorskip("torchvision")
    return tv.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 64, 64)


@contextlib.contextmanager
def _without_reads_and_views() -> Iterator[None]:
    """The planner as before size reads and parameter views (the probe stays)."""
    from sparsekit_graph.graph import context, size_reads, trace

    @contextlib.contextmanager
    def nothing(model: nn.Module, modules: object) -> Iterator[object]:
        yield size_reads._Log({})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "recording_size_reads", nothing)
        mp.setattr(context.RuleContext, "param_view", lambda self, perm: False)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_TV + ZOO_HF)
def test_zoo_gets_no_new_pins(name: str) -> None:
    """Every group prunable without size reads and parameter views stays prunable with them,
    and the model is untouched (classes and ``__dict__`` included)."""
    pytest.importorskip("transformers") if name in ZOO_HF else None
    model, x = _zoo(name)
    model.eval()
    before = strict_fingerprint(model)
    with _without_reads_and_views():
        old = skg.plan(model, x)
    new = skg.plan(model, x)
    after = strict_fingerprint(model)
    assert_untouched(model, before[0], "plan")
    assert after[1] == before[1], "a module's class or __dict__ changed"
    lost = {g.name for g in old.prunable} - {g.name for g in new.prunable}
    assert not lost, {g.name: g.reason for g in new.groups if g.name in lost}


@pytest.mark.parametrize("fn", [_fstring, _logging_args, _unused_read], ids=["fstring", "logging", "unused"])
def test_a_size_only_shown_does_not_pin(fn: Callable[..., Tensor]) -> None:
    """A read Python only formats or never uses (``graph/size_flow.py`` proves it from the
    bytecode) plans as if it were not there."""
    assert group(_plan(fn, False), "conv:out").prunable


class Compiled(nn.Module):
    """A ``torch.compile``-d forward that branches on a layer's size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.Conv2d(C, 4, 1)

    @torch.compile
    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if self.conv.out_channels > 48:
            h = h * 2
        return self.head(h)


@pytest.mark.slow
def test_compiled_forward_branching_on_a_size(tmp_path: Path) -> None:
    plan = check(Compiled(), tmp_path)
    assert plan is None or not group(plan, "conv:out").prunable
