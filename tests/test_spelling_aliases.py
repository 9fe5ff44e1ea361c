"""Aliases and ATen spellings of ops that have a rule plan like the plain spelling (issue 7:
"two spellings of one op give the same plan"; a pin for a spelling that has a rule is a bug).

``torch.layer_norm`` and kin are the ``F.*`` norms, ``torch.ops.aten._softmax`` / ``convolution``
(with or without an overload) the softmax and convolution, ``torch.linalg.matmul`` the matmul,
``torch.inner`` a ``tensordot`` of the last axes, ``vstack`` / ``dstack`` / ``column_stack`` a
``cat`` after lifting their inputs, and ``linalg_vector_norm`` under torch.export the vector norm
of torch.fx, ``torch.div(1.0, h)`` (a number where the function takes a tensor) ``1.0 / h``.
Each spelling gives the plain spelling's plan and passes the oracle; ``out=``
(a buffer written in place, which no rule models) pins, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import Body, check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

aten = torch.ops.aten
X4 = (2, 3, 6, 6)
Fn = Callable[[nn.Module, Tensor], Tensor]


def _extras() -> dict[str, nn.Module | nn.Parameter]:
    return {
        "c": nn.Conv2d(8, 6, 3, padding=1),
        "ct": nn.ConvTranspose2d(8, 6, 2, stride=2),
        "ln": nn.LayerNorm(8),
        "gn": nn.GroupNorm(4, 8),
        "bn2": nn.BatchNorm2d(8),
        "W": nn.Parameter(torch.randn(8, 5)),
    }


def _last(fn: Callable[[nn.Module, Tensor], Tensor]) -> Fn:
    """``fn`` on channels-last tokens, back to channels first."""
    return lambda s, h: fn(s, h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _tokens(fn: Callable[[nn.Module, Tensor], Tensor]) -> Fn:
    """``fn`` on (B, H*W, C) tokens, back to a (B, C', H, W) map."""
    return lambda s, h: fn(s, h.flatten(2).transpose(1, 2)).transpose(1, 2).unflatten(2, h.shape[2:])


def _exported(fn: Fn) -> Fn:
    """``fn`` in a forward torch.fx cannot trace (a branch on ``is_cuda``): torch.export plans it."""
    return lambda s, h: fn(s, h.contiguous() if h.is_cuda else h)


def _conv(s: nn.Module, h: Tensor, op: Callable[..., Tensor]) -> Tensor:
    return op(h, s.c.weight, s.c.bias, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)


def _conv_t(s: nn.Module, h: Tensor, op: Callable[..., Tensor]) -> Tensor:
    return op(h, s.ct.weight, s.ct.bias, [2, 2], [0, 0], [1, 1], True, [0, 0], 1)


def _bn(s: nn.Module, h: Tensor, op: Callable[..., Tensor]) -> Tensor:
    m = s.bn2
    return op(h, m.weight, m.bias, m.running_mean, m.running_var, False, 0.1, 1e-5, False)


FAMILIES: dict[str, list[Fn]] = {
    "softmax": [
        lambda s, h: h.softmax(1),
        lambda s, h: aten._softmax(h, 1, False),
        lambda s, h: aten._softmax.default(h, 1, False),
        lambda s, h: aten.softmax(h, 1),
        lambda s, h: torch._softmax(h, 1, False),
    ],
    "log_softmax": [lambda s, h: F.log_softmax(h, 1), lambda s, h: aten._log_softmax(h, 1, False)],
    "convolution": [
        lambda s, h: s.c(h),
        lambda s, h: _conv(s, h, aten.convolution),
        lambda s, h: _conv(s, h, aten.convolution.default),
        lambda s, h: _conv(s, h, torch.convolution),
    ],
    "conv_transpose": [
        lambda s, h: s.ct(h),
        lambda s, h: _conv_t(s, h, aten.convolution),
        lambda s, h: _conv_t(s, h, torch.convolution),
    ],
    "layer_norm": [
        _last(lambda s, t: F.layer_norm(t, s.ln.normalized_shape, s.ln.weight, s.ln.bias)),
        _last(lambda s, t: torch.layer_norm(t, s.ln.normalized_shape, s.ln.weight, s.ln.bias)),
        _last(lambda s, t: torch.layer_norm(t, s.ln.normalized_shape, s.ln.weight, s.ln.bias, 1e-5, False)),
    ],
    "group_norm": [
        lambda s, h: F.group_norm(h, 4, s.gn.weight, s.gn.bias),
        lambda s, h: torch.group_norm(h, 4, s.gn.weight, s.gn.bias),
    ],
    "batch_norm": [
        lambda s, h: s.bn2(h),
        lambda s, h: F.batch_norm(h, s.bn2.running_mean, s.bn2.running_var, s.bn2.weight, s.bn2.bias, False),
        lambda s, h: _bn(s, h, torch.batch_norm),
    ],
    "instance_norm": [
        lambda s, h: F.instance_norm(h, weight=s.gn.weight, bias=s.gn.bias),
        lambda s, h: torch.instance_norm(h, s.gn.weight, s.gn.bias, None, None, True, 0.1, 1e-5, False),
    ],
    "matmul": [
        _tokens(lambda s, t: torch.matmul(t, s.W)),
        _tokens(lambda s, t: t @ s.W),
        _tokens(lambda s, t: torch.linalg.matmul(t, s.W)),
        _tokens(lambda s, t: torch.inner(t, s.W.T)),
        _tokens(lambda s, t: torch.tensordot(t, s.W, dims=([2], [0]))),
    ],
    "cat_batch": [
        lambda s, h: torch.cat([h, h * 2], 0),
        lambda s, h: torch.vstack([h, h * 2]),
        lambda s, h: torch.row_stack((h, h * 2)),
    ],
    "cat_channels": [
        lambda s, h: torch.cat([h, h * 2], 1),
        lambda s, h: torch.hstack([h, h * 2]),
        lambda s, h: torch.column_stack([h, h * 2]),
    ],
    "cat_rows": [lambda s, h: torch.cat([h, h * 2], 2), lambda s, h: torch.dstack([h, h * 2])],
    "ravel": [
        lambda s, h: h.flatten().view_as(h),
        lambda s, h: h.ravel().view_as(h),
        lambda s, h: torch.ravel(h).view_as(h),
    ],
    "number_first": [  # a Python number where the function takes a tensor: torch wraps it
        lambda s, h: 1.0 / (2 + h.abs()) - 1 * h + 2 * h,
        lambda s, h: torch.div(1.0, 2 + h.abs()) - torch.mul(1, h) + torch.multiply(2, h),
        lambda s, h: torch.true_divide(1.0, torch.add(2, h.abs())) + torch.sub(0, h) + torch.mul(2, h),
    ],
    "l2_norm": [
        lambda s, h: h / (1 + h.pow(2).sum(1, keepdim=True).sqrt()),
        lambda s, h: h / (1 + torch.linalg.vector_norm(h, dim=1, keepdim=True)),
        lambda s, h: h / (1 + h.norm(dim=1, keepdim=True)),
        lambda s, h: h / (1 + torch.norm(h, p=2, dim=1, keepdim=True)),
        _exported(lambda s, h: h / (1 + h.pow(2).sum(1, keepdim=True).sqrt())),
        _exported(lambda s, h: h / (1 + torch.linalg.vector_norm(h, dim=1, keepdim=True))),
        _exported(lambda s, h: h / (1 + h.norm(dim=1, keepdim=True))),
        _exported(lambda s, h: h / (1 + torch.norm(h, p=2, dim=1, keepdim=True))),
    ],
}


def _key(plan: skg.Plan) -> list[tuple]:
    return [(g.name, g.prunable, g.zero_invariant, g.size, sorted((m.param, m.axis) for m in g.members)) for g in plan.groups]


def _body(fn: Fn) -> nn.Module:
    torch.manual_seed(0)
    return Body(fn, **_extras()).eval()


@pytest.mark.parametrize(
    ("family", "i"), [pytest.param(f, i, id=f"{f}-{i}") for f, fns in FAMILIES.items() for i in range(1, len(fns))]
)
def test_a_spelling_plans_like_the_plain_one(family: str, i: int, tmp_path: Path) -> None:
    """Spelling ``i`` of ``family`` gives spelling 0's plan, whose group of the conv ``a`` is
    prunable, and passes the oracle."""
    x = torch.randn(*X4)
    plain, other = _body(FAMILIES[family][0]), _body(FAMILIES[family][i])
    first = skg.plan(plain, x)
    conv = next(g for g in first.groups if any(m.param == "a.weight" and m.axis == 0 for m in g.members))
    assert conv.prunable, conv.reason
    second = skg.plan(other, x)
    reasons = {g.name: g.reason for g in second.groups if not g.prunable}
    assert _key(second) == _key(first), reasons
    check_oracle(other, x, tmp_path, min_drop=0.0, require=any(g.zero_invariant for g in first.prunable))


def test_l2_norm_over_channels_is_zero_invariant_on_both_paths() -> None:
    """A removed zero channel adds 0 to the sum of squares: torch.fx's ``vector_norm`` and
    torch.export's ``aten.linalg_vector_norm`` both keep ``a:out`` zero-invariant."""
    for fn in (FAMILIES["l2_norm"][1], FAMILIES["l2_norm"][5]):
        group = skg.plan(_body(fn), torch.randn(*X4)).group("a:out")
        assert group.prunable and group.zero_invariant, group.reason


class Lifted(nn.Module):
    """Linear -> ReLU -> two copies of ``h`` joined by ``join`` -> Linear over the copies' axis
    ``last`` moved last; ``x`` may be one sample (1-D) or a batch."""

    def __init__(self, join: Callable[[Tensor, Tensor], Tensor], width: int) -> None:
        super().__init__()
        self.fc, self.join, self.head = nn.Linear(6, 8), join, nn.Linear(width, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        return self.head(self.join(h, h * 2))


LIFTS: dict[str, tuple[tuple[int, ...], int, Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "vstack_1d": ((6,), 8, lambda a, b: torch.stack([a, b], 0), lambda a, b: torch.vstack([a, b])),
    "row_stack_1d": ((6,), 8, lambda a, b: torch.stack([a, b]), lambda a, b: torch.row_stack([a, b])),
    "column_stack_1d": ((6,), 2, lambda a, b: torch.stack([a, b], 1), lambda a, b: torch.column_stack([a, b])),
    "hstack_1d": ((6,), 16, lambda a, b: torch.cat([a, b]), lambda a, b: torch.hstack([a, b])),
    "dstack_2d": ((3, 6), 2, lambda a, b: torch.stack([a, b], 2), lambda a, b: torch.dstack([a, b])),
    "column_stack_2d": ((3, 6), 16, lambda a, b: torch.cat([a, b], 1), lambda a, b: torch.column_stack([a, b])),
}


@pytest.mark.parametrize("name", sorted(LIFTS))
def test_a_stacking_spelling_that_adds_axes_plans_like_stack(name: str, tmp_path: Path) -> None:
    """``vstack`` of 1-D tensors is ``stack(.., 0)``, ``dstack`` of 2-D ones ``stack(.., 2)``,
    ``column_stack`` of 1-D ones ``stack(.., 1)``: the new axis pins, the others follow."""
    shape, width, plain, other = LIFTS[name]
    a, b = Lifted(plain, width).eval(), Lifted(other, width).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(*shape)
    assert torch.equal(a(x), b(x))
    first, second = skg.plan(a, x), skg.plan(b, x)
    assert _key(second) == _key(first), {g.name: g.reason for g in second.groups}
    check_oracle(b, x, tmp_path, min_drop=0.0, require=first.group("fc:out").prunable)


OUT_WRITES: dict[str, Fn] = {
    "add": lambda s, h: torch.add(h, h * 2, out=torch.empty_like(h)),
    "cat": lambda s, h: torch.cat([h, h], 1, out=h.new_empty(h.shape[0], 2 * h.shape[1], *h.shape[2:])),
    "sigmoid_into_zeros": lambda s, h: h * torch.sigmoid(h, out=torch.zeros_like(h)),
}


@pytest.mark.parametrize("name", sorted(OUT_WRITES))
def test_a_result_written_into_a_given_tensor_pins_saying_so(name: str, tmp_path: Path) -> None:
    """``torch.add(a, b, out=buf)``: later reads of ``buf`` see values no link explains (a
    ``zeros_like`` buffer no longer holds zeros), so the op pins and the reason names ``out=``."""
    model, x = _body(OUT_WRITES[name]), torch.randn(*X4)
    group = skg.plan(model, x).group("a:out")
    assert not group.prunable and "out=" in (group.reason or ""), group.reason
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)
