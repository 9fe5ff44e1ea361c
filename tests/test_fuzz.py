"""The DESIGN.md oracle on random architectures (hypothesis); shrunk failures become regressions.

Hypothesis draws DAGs of common CNN blocks (``random_nets``); each must pass the oracle.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn


@dataclass(frozen=True)
class Op:
    kind: str
    src: int
    other: int = -1
    out: int = 0
    k: int = 1
    groups: int = 1


class RandomNet(nn.Module):
    """Applies ``ops`` in order to a growing list of tensors; the last one feeds the head."""

    def __init__(self, in_ch: int, ops: list[Op], head: str, channels: int, spatial: int, classes: int = 5) -> None:
        super().__init__()
        self.ops = ops
        self.head_kind = head
        self.layers = nn.ModuleDict()
        chans = [in_ch]
        for i, op in enumerate(ops):
            c = chans[op.src]
            if op.kind == "conv":
                self.layers[str(i)] = nn.Conv2d(c, op.out, op.k, padding=op.k // 2, groups=op.groups, bias=op.k == 1)
                chans.append(op.out)
            elif op.kind == "bnact":
                self.layers[str(i)] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU() if op.k == 1 else nn.Hardswish())
                chans.append(c)
            elif op.kind == "se":
                hidden = max(1, c // 4)
                self.layers[str(i)] = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c, 1))
                chans.append(c)
            elif op.kind == "cat":
                chans.append(c + chans[op.other])
            elif op.kind == "chunk":
                chans.append(c // 2)
            else:  # add, shuffle, pool
                chans.append(c)
        self.flat = channels * spatial * spatial if head == "flatten" else channels
        self.head = nn.Linear(self.flat, classes)

    def forward(self, x):
        ts = [x]
        for i, op in enumerate(self.ops):
            t = ts[op.src]
            if op.kind in ("conv", "bnact"):
                t = self.layers[str(i)](t)
            elif op.kind == "se":
                t = t * torch.sigmoid(self.layers[str(i)](t.mean((2, 3), keepdim=True)))
            elif op.kind == "add":
                t = t + ts[op.other]
            elif op.kind == "cat":
                t = torch.cat([t, ts[op.other]], dim=1)
            elif op.kind == "chunk":
                t = t.chunk(2, dim=1)[op.k]
            elif op.kind == "shuffle":
                n, c, h, w = t.size()
                t = t.view(n, op.groups, c // op.groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            elif op.kind == "pool":
                t = F.max_pool2d(t, 2) if op.k == 1 else F.avg_pool2d(t, 2)
            ts.append(t)
        out = ts[-1]
        if self.head_kind == "flatten":
            return self.head(torch.flatten(out, 1))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@dataclass(frozen=True)
class NetSpec:
    """A random architecture, printable (hypothesis shows this when a net fails)."""

    ops: tuple[Op, ...]
    head: str
    size: int
    out_channels: int
    out_spatial: int

    def build(self) -> tuple[RandomNet, torch.Tensor]:
        torch.manual_seed(0)
        model = RandomNet(3, list(self.ops), self.head, self.out_channels, self.out_spatial)
        return model, torch.randn(2, 3, self.size, self.size)


@st.composite
def random_nets(draw: st.DrawFn, max_ops: int = 14) -> NetSpec:
    """A random net of up to ``max_ops`` blocks (under 20 layers)."""
    size = draw(st.sampled_from([4, 8]))
    shapes = [(3, size)]  # (channels, spatial) per tensor
    ops: list[Op] = [Op("conv", 0, out=draw(st.sampled_from([4, 6, 8, 12])), k=draw(st.sampled_from([1, 3])))]
    shapes.append((ops[0].out, size))
    for _ in range(draw(st.integers(1, max_ops))):
        src = draw(st.integers(1, len(shapes) - 1))
        c, s = shapes[src]
        same = [i for i, sh in enumerate(shapes) if sh == (c, s) and i != src and i > 0]
        same_s = [i for i, sh in enumerate(shapes) if sh[1] == s and i > 0]
        kind = draw(st.sampled_from(["conv", "conv", "bnact", "add", "cat", "chunk", "shuffle", "se", "pool", "dwconv", "gconv"]))
        if kind == "conv":
            op = Op("conv", src, out=draw(st.sampled_from([4, 6, 8, 12, 16])), k=draw(st.sampled_from([1, 3])))
        elif kind == "dwconv":
            op = Op("conv", src, out=c * draw(st.sampled_from([1, 2])), k=3, groups=c)
        elif kind == "gconv":
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
            op = Op("conv", src, out=g * draw(st.sampled_from([1, 2, 3])), k=draw(st.sampled_from([1, 3])), groups=g)
        elif kind == "bnact":
            op = Op("bnact", src, k=draw(st.sampled_from([1, 2])))
        elif kind == "add" and same:
            op = Op("add", src, other=draw(st.sampled_from(same)))
        elif kind == "cat":
            op = Op("cat", src, other=draw(st.sampled_from(same_s)))
        elif kind == "chunk" and c % 2 == 0 and c >= 4:
            op = Op("chunk", src, k=draw(st.integers(0, 1)))
        elif kind == "shuffle" and c % 2 == 0:
            op = Op("shuffle", src, groups=draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0])))
        elif kind == "se":
            op = Op("se", src)
        elif kind == "pool" and s >= 2:
            op = Op("pool", src, k=draw(st.integers(1, 2)))
        else:
            op = Op("bnact", src)
        ops.append(op)
        out_c = {"conv": op.out, "cat": c + shapes[op.other][0] if op.kind == "cat" else 0, "chunk": c // 2}.get(op.kind, c)
        shapes.append((out_c, s // 2 if op.kind == "pool" else s))
    head = draw(st.sampled_from(["flatten", "pool"]))
    c, s = shapes[-1]
    return NetSpec(tuple(ops), head, size, c, s)


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _oracle(spec: NetSpec) -> None:
    model, x = spec.build()
    result = check_oracle(model, x, Path(tempfile.mkdtemp()), min_drop=0.0, require=False)
    assert result.report.params_after <= result.report.params_before


@settings(max_examples=50, **SETTINGS)
@given(random_nets())
def test_random_nets_pass_the_oracle(net) -> None:
    _oracle(net)


@pytest.mark.slow
@settings(max_examples=500, **SETTINGS)
@given(random_nets())
def test_random_nets_pass_the_oracle_500(net) -> None:
    _oracle(net)
