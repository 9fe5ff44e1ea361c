"""Spellings of one size read give one plan (issue 7: two spellings of one op, one plan).

``len(t)`` is ``t.shape[0]`` (``param_reads._len`` while torch.fx traces: a Proxy for a traced
value, a ``SizeRead`` for a model tensor reached as a plain tensor), ``t.nelement()`` and
``torch.numel(t)`` are ``t.numel()``, ``t.ndimension()`` / ``t.dim()`` / ``len(t.shape)`` are
``t.ndim``, and ``t.size()[1]`` / ``t.size(1)`` are ``t.shape[1]``: each pair plans alike (the
plan's dump, group names left out) on the torch.fx path and on the torch.export path (round 3's
``Net`` with ``export=True``). The pairs where the old planner pinned or, worse, missed a use
also run the oracle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from test_adversary_round3 import C, Net, X
from test_spellings_reads import dump
from torch import Tensor, nn

import sparsekit_graph as skg

Fn = Callable[[nn.Module, Tensor], Tensor]


def _w(s: nn.Module) -> Tensor:
    """The conv's weight as a plain tensor (not a Proxy under torch.fx)."""
    return next(s.conv.parameters())


def _t(h: Tensor) -> Tensor:
    return h.transpose(0, 1)  # axis 0 is the channels


# (plain spelling, other spelling): each pair must plan alike
PAIRS: dict[str, tuple[Fn, Fn]] = {
    "weight_len": (lambda s, h: s.conv(h) / s.conv.weight.shape[0], lambda s, h: s.conv(h) / len(s.conv.weight)),
    "weight_nelement": (lambda s, h: s.conv(h) / s.conv.weight.numel(), lambda s, h: s.conv(h) / s.conv.weight.nelement()),
    "weight_torch_numel": (lambda s, h: s.conv(h) / s.conv.weight.numel(), lambda s, h: s.conv(h) / torch.numel(s.conv.weight)),
    "param_len": (lambda s, h: s.conv(h) / _w(s).shape[0], lambda s, h: s.conv(h) / len(_w(s))),
    "param_nelement": (lambda s, h: s.conv(h) / _w(s).numel(), lambda s, h: s.conv(h) / _w(s).nelement()),
    "param_len_branch": (
        lambda s, h: s.conv(h) * (2 if _w(s).shape[0] == C else 1),
        lambda s, h: s.conv(h) * (2 if len(_w(s)) == C else 1),
    ),
    "len": (lambda s, h: h / h.shape[0], lambda s, h: h / len(h)),
    "len_of_channels": (lambda s, h: h / _t(h).shape[0], lambda s, h: h / len(_t(h))),
    "len_branch": (lambda s, h: h * 2 if _t(h).shape[0] == C else h, lambda s, h: h * 2 if len(_t(h)) == C else h),
    "len_range": (
        lambda s, h: sum(h[:, i : i + 1] for i in range(_t(h).shape[0])),
        lambda s, h: sum(h[:, i : i + 1] for i in range(len(_t(h)))),
    ),
    "len_reshape": (lambda s, h: h.reshape(h.shape[0], -1).reshape(h.shape), lambda s, h: h.reshape(len(h), -1).reshape(h.shape)),
    "len_list": (
        lambda s, h: h + torch.tensor([1.0] * _t(h).shape[0]).view(1, -1, 1, 1),
        lambda s, h: h + torch.tensor([1.0] * len(_t(h))).view(1, -1, 1, 1),
    ),
    "nelement": (lambda s, h: h / h.numel(), lambda s, h: h / h.nelement()),
    "torch_numel": (lambda s, h: h / h.numel(), lambda s, h: h / torch.numel(h)),
    "dim": (lambda s, h: h / h.ndim, lambda s, h: h / h.dim()),
    "ndimension": (lambda s, h: h / h.ndim, lambda s, h: h / h.ndimension()),
    "len_of_shape": (lambda s, h: h / h.ndim, lambda s, h: h / len(h.shape)),
    "size_index": (lambda s, h: h / h.shape[1], lambda s, h: h / h.size()[1]),
    "size_dim": (lambda s, h: h / h.shape[1], lambda s, h: h / h.size(1)),
}
# pairs the planner got wrong before param_reads._len / the nelement and ndimension aliases
# (over-pins, and ``len(w) == C`` on a plain tensor unseen: conv:out claimed prunable)
FIXED = ("weight_len", "weight_nelement", "param_len_branch", "len_of_channels", "nelement", "ndimension")


def _plan(fn: Fn, export: bool) -> tuple[nn.Module, skg.Plan]:
    model = Net(fn, export=export, conv=nn.Conv2d(C, C, 1)).eval()
    return model, skg.plan(model, torch.randn(*X))


def _spellings() -> list[pytest.ParameterSet]:
    out = []
    for pair in PAIRS:
        out.append(pytest.param(pair, False, id=f"{pair}-fx"))
        out.append(pytest.param(pair, True, id=f"{pair}-export", marks=[pytest.mark.slow]))
    return out


@pytest.mark.parametrize(("pair", "export"), _spellings())
def test_size_read_spellings_plan_alike(pair: str, export: bool) -> None:
    plain, other = PAIRS[pair]
    assert _alike(_plan(other, export)[1]) == _alike(_plan(plain, export)[1])


def _alike(plan: skg.Plan) -> str:
    """The plan's ``dump`` with source lines left out of reasons (the two spellings sit on two
    lines: ``in <lambda> (test_size_read_spellings.py:46)``)."""
    return re.sub(r"\.py:\d+\)", ".py)", repr(dump(plan)))


@pytest.mark.parametrize("pair", FIXED)
def test_the_other_spelling_prunes_exactly(pair: str, tmp_path: Path) -> None:
    """Plan, prune and compare with the dense model (``check_oracle``) for the spelling fixed."""
    model, _ = _plan(PAIRS[pair][1], export=False)
    check_oracle(model, torch.randn(*X), tmp_path, min_drop=0.0, require=False)


def test_len_of_a_plain_weight_in_a_branch_pins() -> None:
    """``2 if len(w) == 16 else 1`` with ``w = next(conv.parameters())``: the traced code holds
    one branch, so ``conv:out`` pins (it was planned prunable and zero-invariant: unseen)."""
    _, plan = _plan(PAIRS["param_len_branch"][1], export=False)
    g = plan.group("conv:out")
    assert not g.prunable and "control flow" in (g.reason or "")
