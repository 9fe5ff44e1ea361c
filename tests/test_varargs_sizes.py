"""A fresh tensor sized by varargs that hold a traced length: Bloom's attention bias (issue 7).

``torch.zeros(B * h, L, L)`` with ``B, L`` read off the input failed torch.fx (it takes a Proxy
in a size tuple, not among varargs), so the model went to ``torch.export``, whose literal
reshapes pinned the heads. While tracing, ``graph/tensor_data`` hands such sizes to torch as
one tuple, which torch.fx records.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph

X = (2, 5, 16)


class BiasedAttention(nn.Module):
    """qkv -> heads -> ``baddbmm(bias, q, k^T, beta=0, alpha=d ** -0.5)`` -> softmax -> out."""

    def __init__(self, bias: str) -> None:
        super().__init__()
        self.qkv, self.o, self.num_heads, self.head_dim, self.bias = nn.Linear(16, 48), nn.Linear(16, 16), 4, 4, bias

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (t.reshape(b * self.num_heads, n, self.head_dim) for t in (q, k, v))
        if self.bias == "plain":
            att = torch.bmm(q, k.transpose(1, 2)) * self.head_dim**-0.5
        else:
            sizes = {"model_size": (b * self.num_heads, n, n), "literal_size": (b * 4, n, n)}
            size = sizes.get(self.bias, (q.shape[0], n, n))
            bias = torch.zeros(*size, dtype=q.dtype) if self.bias != "read_size" else torch.zeros(*size)
            att = torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.0, alpha=self.head_dim**-0.5)
        out = torch.bmm(att.softmax(-1), v).view(b, self.num_heads, n, self.head_dim)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


def _heads(model: nn.Module) -> skg.Group:
    plan = skg.plan(model, torch.randn(*X))
    return next(g for g in plan.groups if any(m.param == "qkv.weight" and m.axis == 0 for m in g.members))


@pytest.mark.parametrize("bias", ["read_size", "model_size"])
def test_a_varargs_size_holding_a_traced_length_is_traced_by_torch_fx(bias: str) -> None:
    assert not is_exported(trace_graph(BiasedAttention(bias).eval(), torch.randn(*X)))


def test_a_zeros_bias_sized_by_reads_plans_like_no_bias(tmp_path: Path) -> None:
    plain, biased = _heads(BiasedAttention("plain").eval()), _heads(BiasedAttention("read_size").eval())
    assert plain.prunable and (biased.prunable, biased.zero_invariant, biased.size) == (True, plain.zero_invariant, plain.size)
    check_oracle(BiasedAttention("read_size").eval(), torch.randn(*X), tmp_path, min_drop=0.0)


def test_a_zeros_bias_sized_by_batch_times_heads_plans_like_no_bias(tmp_path: Path) -> None:
    """``torch.zeros(b * self.num_heads, n, n)``: a product of a read and a size attribute
    follows the model (``size_args.product_follows``), as ``q.shape[0]`` does."""
    plain, biased = _heads(BiasedAttention("plain").eval()), _heads(BiasedAttention("model_size").eval())
    assert plain.prunable and (biased.prunable, biased.zero_invariant, biased.size) == (True, plain.zero_invariant, plain.size)
    check_oracle(BiasedAttention("model_size").eval(), torch.randn(*X), tmp_path, min_drop=0.0)


def test_a_zeros_bias_sized_by_batch_times_a_literal_pins_the_heads() -> None:
    """``torch.zeros(b * 4, n, n)``: the 4 the code wrote stays 4 when heads go, so the bias
    cannot follow the pruned heads: they pin (a fresh tensor of a constant length)."""
    heads = _heads(BiasedAttention("literal_size").eval())
    assert not heads.prunable and "fresh tensor" in (heads.reason or "")
