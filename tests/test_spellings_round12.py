"""Round 12 of stranger spellings: each pair is one computation, so one plan, and that plan is exact.

- Conjugation on a real tensor is the identity: ``W.mH``, ``W.H``, ``W.adjoint()``,
  ``W.conj().T``, ``resolve_conj`` / ``resolve_neg`` / ``conj_physical`` plan as ``W.mT`` /
  ``W.T`` / the tensor itself (``graph/same_as.py``); on a complex tensor they keep their op.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from test_spellings_reads import dump
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.normalize import bind_call


class Pooled(nn.Module):
    """conv -> spatial mean -> ``read(self.W)`` as a matrix product -> a head."""

    def __init__(self, read: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.read = read
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.W = nn.Parameter(torch.randn(5, 8))
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.read(self, torch.relu(self.a(x)).mean((2, 3)))))


WEIGHT_READS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "mT": lambda s, h: h @ s.W.mT,
    "mH": lambda s, h: h @ s.W.mH,
    "H": lambda s, h: h @ s.W.H,
    "adjoint": lambda s, h: h @ s.W.adjoint(),
    "torch_adjoint": lambda s, h: h @ torch.adjoint(s.W),
    "conj_T": lambda s, h: h @ s.W.conj().T,
    "resolve_conj": lambda s, h: h @ torch.resolve_conj(s.W).T,
    "resolve_neg_mT": lambda s, h: h @ s.W.resolve_neg().mT,
    "conj_physical": lambda s, h: h @ torch.conj_physical(s.W).mT,
    "activation_mH": lambda s, h: (h.mH.mH @ s.W.T).conj(),
}
X = torch.randn(2, 3, 6, 6)


@pytest.mark.parametrize("name", sorted(WEIGHT_READS))
def test_conjugation_of_a_real_tensor_plans_as_its_transpose(name: str, tmp_path: Path) -> None:
    want = dump(skg.plan(Pooled(WEIGHT_READS["mT"]), X))
    plan = skg.plan(Pooled(WEIGHT_READS[name]), X)
    assert dump(plan) == want
    groups = {g.name: g for g in plan.groups}
    assert groups["a:out"].prunable and groups["a:out"].zero_invariant and groups["W:0"].prunable
    check_oracle(Pooled(WEIGHT_READS[name]), X, tmp_path, min_drop=0.0)


def test_conjugation_of_a_complex_tensor_keeps_its_op() -> None:
    z = torch.randn(3, 4, dtype=torch.complex64)
    assert bind_call(torch.adjoint, (z,), {}).op is torch.adjoint
    assert bind_call("conj", (z,), {}).op is torch.conj
    assert bind_call(torch.adjoint, (torch.randn(3, 4),), {}).op is torch.Tensor.mT
    assert bind_call("conj", (torch.randn(3, 4),), {}).op is torch.Tensor.contiguous
