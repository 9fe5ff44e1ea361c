"""Needless pins of round 7 (issue 7): two spellings of one op give one plan.

Each model is ``tests/test_adversary_round4.Net``: a conv ``a`` (group ``a:out``, 12 channels) ->
BN -> ReLU -> the spelling -> a 1x1 conv head. ``_holds`` prunes every prunable group to one
channel and compares with the masked dense model where zero-invariance is claimed; the plain
spelling and the other one must give the same groups (size, prunable, zero_invariant, members).
Spellings that keep a pin on purpose assert its reason (docs/planner.md says why).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adversary_round4 import C, Net, X, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg

Fn = Callable[[nn.Module, Tensor], Tensor]


def _same_plan(plain: Fn, other: Fn, **extra: object) -> skg.Plan:
    """Both spellings prune (``_holds``) and plan alike; the plan of ``other``."""
    a, b = _holds(Net(plain, **extra)), _holds(Net(other, **extra))
    assert a.group("a:out").prunable, a.group("a:out")
    assert _signature(a) == _signature(b)
    return b


def _buffer() -> dict[str, object]:
    return {"g": torch.rand(C) + 0.5}


def _clone_set(h: Tensor) -> Tensor:
    h = h.clone()
    h[..., :2] = 0.0
    return h


def _clone_setitem(h: Tensor) -> Tensor:
    h = h.clone()
    h.__setitem__((..., slice(0, 2)), 0.0)
    return h


def _augmented_pow(h: Tensor) -> Tensor:
    h = h * 1.0
    h **= 2
    return h


def _dunder_ipow(h: Tensor) -> Tensor:
    h = h * 1.0
    h.__ipow__(2)
    return h


# --- 1, 2: ops on a buffer alone, rebuilt through the normaliser ---------------------------------

_BUFFER_SPELLINGS = {
    "rdiv": (lambda s, h: h * s.g.reciprocal().view(1, -1, 1, 1), lambda s, h: h * (1 / s.g).view(1, -1, 1, 1)),
    "pow": (lambda s, h: h * s.g.pow(2).view(1, -1, 1, 1), lambda s, h: h * (s.g**2).view(1, -1, 1, 1)),
    "rsub": (lambda s, h: h * torch.rsub(s.g, 1).view(1, -1, 1, 1), lambda s, h: h * (1 - s.g).view(1, -1, 1, 1)),
    "contiguous": (lambda s, h: h * (s.g * 2).view(1, -1, 1, 1), lambda s, h: h * (s.g * 2).contiguous().view(1, -1, 1, 1)),
}


@pytest.mark.parametrize("name", list(_BUFFER_SPELLINGS))
def test_ops_on_a_buffer_plan_as_their_plain_spelling(name: str) -> None:
    plain, other = _BUFFER_SPELLINGS[name]
    _same_plan(plain, other, **_buffer())


def test_a_buffer_written_in_place_still_pins() -> None:
    """The version counter, not the returned object, says a call wrote: ``g.mul_(2)`` pins."""

    def fn(s: nn.Module, h: Tensor) -> Tensor:
        t = s.g * 1.0
        t.mul_(2)  # a temporary written in place: a constant, as before
        return h * s.g.view(1, -1, 1, 1) * t.view(1, -1, 1, 1)

    group = skg.plan(Net(fn, **_buffer()).eval(), torch.randn(*X)).group("a:out")
    assert not group.prunable and "constant" in (group.reason or ""), group


# --- 3: sizes as torch.Size / traced tuples -------------------------------------------------------

_SIZE_SPELLINGS = {
    "zeros-of-a-tuple": (lambda s, h: h + h.new_zeros(h.shape[:2] + (1, 1)), lambda s, h: h + torch.zeros(h.shape[:2] + (1, 1))),
    "expand-of-a-tuple": (
        lambda s, h: h[:, :, :1, :1].expand(h.shape) * h,
        lambda s, h: h[:, :, :1, :1].expand(h.shape[:2] + h.shape[2:]) * h,
    ),
    "expand-a-buffer": (
        lambda s, h: s.g.view(1, -1, 1, 1).expand(h.shape) * h,
        lambda s, h: s.g.view(1, -1, 1, 1).expand(h.shape[:2] + h.shape[2:]) * h,
    ),
}


@pytest.mark.parametrize("name", list(_SIZE_SPELLINGS))
def test_sizes_as_traced_tuples_plan_as_their_plain_spelling(name: str) -> None:
    plain, other = _SIZE_SPELLINGS[name]
    _same_plan(plain, other, **_buffer())


def test_a_view_by_torch_size_keeps_its_pin() -> None:
    """``torch.Size([b, c, 36])`` turns each length into a plain int before any op sees it."""
    model = Net(lambda s, h: h.view(torch.Size([h.shape[0], h.shape[1], 36])).view(h.shape)).eval()
    group = skg.plan(model, torch.randn(*X)).group("a:out")
    assert not group.prunable and "control flow" in (group.reason or ""), group


# --- 4: writes spelled as dunders ------------------------------------------------------------------

_WRITE_SPELLINGS = {
    "setitem": (lambda s, h: _clone_set(h), lambda s, h: _clone_setitem(h)),
    "ipow": (lambda s, h: _augmented_pow(h), lambda s, h: _dunder_ipow(h)),
}


@pytest.mark.parametrize("name", list(_WRITE_SPELLINGS))
def test_writes_spelled_as_dunders_plan_as_their_plain_spelling(name: str) -> None:
    plain, other = _WRITE_SPELLINGS[name]
    _same_plan(plain, other)


# --- 6: a weight reaching bmm through unsqueeze and expand ---------------------------------------


def _tokens(h: Tensor) -> Tensor:
    return h.flatten(2).transpose(1, 2)  # (B, 36, C)


def test_a_weight_through_unsqueeze_and_expand_plans_as_matmul() -> None:
    w = {"w": nn.Parameter(torch.randn(C, 5))}
    plain = _holds(Net(lambda s, h: torch.matmul(_tokens(h), s.w).transpose(1, 2)[..., None], **w))
    other = _holds(
        Net(lambda s, h: torch.bmm(_tokens(h), s.w.unsqueeze(0).expand(h.shape[0], -1, -1)).transpose(1, 2)[..., None], **w)
    )
    assert plain.group("w:1").prunable and _signature(plain) == _signature(other)


# --- 7: local response norm, renorm, cdist, diag_embed ---------------------------------------------


@pytest.mark.parametrize("layer", [True, False], ids=["module", "function"])
def test_local_response_norm_pins_its_window_and_prunes_without_one(layer: bool) -> None:
    """A window over more than one channel moves when a channel goes: pinned for ``size > 1``."""

    def lrn(size: int) -> Net:
        if layer:
            return Net(lambda s, h: s.lrn(h), lrn=nn.LocalResponseNorm(size))
        return Net(lambda s, h: F.local_response_norm(h, size))

    group = skg.plan(lrn(3).eval(), torch.randn(*X)).group("a:out")
    assert not group.prunable and "cross-channel window of 3" in (group.reason or ""), group
    assert _holds(lrn(1)).group("a:out").prunable


@pytest.mark.parametrize("dim", [1, 0, 2], ids=["channels", "batch", "rows"])
def test_renorm_prunes(dim: int) -> None:
    group = _holds(Net(lambda s, h: torch.renorm(h, 2, dim, 1.0))).group("a:out")
    assert group.prunable and group.zero_invariant


def test_cdist_and_diag_embed_prune() -> None:
    for fn in (
        lambda s, h: torch.cdist(_tokens(h), _tokens(h))[:, None],
        lambda s, h: torch.diag_embed(h.mean((2, 3))).sum(-1)[:, :, None, None] * h,
    ):
        assert _holds(Net(fn)).group("a:out").prunable
    group = skg.plan(Net(lambda s, h: torch.diag_embed(h.mean((2, 3)), 1)[:, :-1, :-1, None]).eval(), torch.randn(*X))
    assert not group.group("a:out").prunable


# --- 5, 8, 9: pins kept on purpose (docs/planner.md, Open work) ------------------------------------


class _Heads(nn.Module):
    """Three heads of four merged by ``merge(a, b, l)`` from (B, H, L, D) to (B, L, H * D)."""

    def __init__(self, merge: Callable[[Tensor, int, int], Tensor]) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.merge = 3, 4, merge
        self.inp, self.out, self.head = nn.Linear(5, C), nn.Linear(C, C), nn.Linear(C, 3)
        self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)

    def forward(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        h = torch.relu(self.inp(x))
        q, k, v = (f(h).view(b, length, self.num_heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = (q @ k.transpose(-1, -2) / 2).softmax(-1) @ v
        return self.head(self.out(self.merge(a, b, length)) + h)


@pytest.mark.parametrize("merge", [lambda a, b, n: torch.cat(a.unbind(1), -1), lambda a, b, n: torch.cat(a.unbind(dim=1), dim=2)])
def test_heads_merged_by_cat_of_unbind_plan_as_reshape(merge: Callable[[Tensor, int, int], Tensor]) -> None:
    """``torch.cat(o.unbind(1), -1)`` is ``o.transpose(1, 2).reshape(b, l, -1)``: the heads prune."""
    torch.manual_seed(0)
    x = torch.randn(2, 7, 5)
    plain = skg.plan(_Heads(lambda a, b, n: a.transpose(1, 2).reshape(b, n, -1)).eval(), x)
    model = _Heads(merge).eval()
    plan = skg.plan(model, x)
    assert plain.group("q:out").prunable and _signature(plain) == _signature(plan)
    heads = plan.group("q:out")
    mask = torch.tensor([False, True, False])
    pruned = skg.prune(model, plan, masks={heads.name: mask}).model.eval()
    dense = copy.deepcopy(model).eval()
    skg.bind(plan, dense)[heads.name].apply_mask(mask)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)
    assert pruned.q.out_features == 8 and skg.prune(model, plan, ratio=0.5).model(x).shape == (2, 7, 3)


@pytest.mark.parametrize(
    "merge",
    [lambda a, b, n: torch.cat(a.unbind(1)[::-1], -1), lambda a, b, n: torch.cat([t for t in a.unbind(1)], -1)],
    ids=["reversed", "parts-one-by-one"],
)
def test_parts_of_an_unbind_taken_apart_keep_their_pin(merge: Callable[[Tensor, int, int], Tensor]) -> None:
    """Parts joined out of order are no merge; parts taken one by one come from a Python loop over
    the heads, which the pruned model would run fewer times."""
    plan = skg.plan(_Heads(merge).eval(), torch.randn(2, 7, 5))
    assert not plan.group("q:out").prunable and "unbinding" in (plan.group("q:out").reason or "")


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 3), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("returns", [False, True], ids=["observes", "replaces"])
def test_a_forward_hook_keeps_its_pin(returns: bool) -> None:
    """A hook returning None may still write into the output in place: no proof it only observes."""
    model, seen = _Hooked().eval(), []
    model.a.register_forward_hook(lambda m, i, o: o * 2 if returns else seen.append(o.shape))
    group = skg.plan(model, torch.randn(*X)).group("a:out")
    assert not group.prunable and "forward hooks of Conv2d a" in (group.reason or ""), group
    assert len(model.a._forward_hooks) == 1


class _Normed(nn.Module):
    """conv ``a`` -> BN -> ReLU -> conv ``b`` (3x3) -> ReLU -> 1x1 head, ``a`` and ``b`` parametrized."""

    def __init__(self, parametrize: Callable[[nn.Module], nn.Module]) -> None:
        super().__init__()
        self.a, self.bn = parametrize(nn.Conv2d(3, C, 3, padding=1)), nn.BatchNorm2d(C)
        self.b, self.head = parametrize(nn.Conv2d(C, 8, 3, padding=1)), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.bn(self.a(x))))))


@pytest.mark.parametrize(
    "parametrize",
    [nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm],
    ids=["weight_norm", "spectral_norm"],
)
def test_normed_weights_prune(parametrize: Callable[[nn.Module], nn.Module]) -> None:
    """spectral_norm's ``u`` follows the rows and ``v`` the columns (a block of ``kh * kw`` per
    input channel): the masked model's ``sigma`` exactly, so ``a``'s channels prune exactly."""
    torch.manual_seed(0)
    model = _Normed(parametrize).train()
    for _ in range(2):
        model(torch.randn(*X))  # the power iteration moves u and v away from their start
    plan = _holds(model)
    group = next(g for g in plan.groups if g.size == C)
    spectral = parametrize is nn.utils.parametrizations.spectral_norm
    assert group.prunable and group.zero_invariant is spectral, group  # weight_norm: a zeroed row's norm is 0
    if spectral:
        blocks = {m.param: m.block for m in group.members}
        assert blocks["a.parametrizations.weight.0._u"] == 1 and blocks["b.parametrizations.weight.0._v"] == 9


def test_orthogonal_weights_keep_their_pin() -> None:
    """Every entry of the orthogonalised weight depends on every entry of ``original``."""
    model = _Normed(nn.utils.parametrizations.orthogonal).eval()
    group = next(g for g in skg.plan(model, torch.randn(*X)).groups if g.size == C)
    assert not group.prunable and "_Orthogonal" in (group.reason or ""), group  # traced: its op has no rule
