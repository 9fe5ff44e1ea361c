"""What the fused Euclidean prox (``engine/batch.py``) does per call, worked out once per layout.

Everything here depends only on which coupling uses which parameter, not on values, so it is built
with the layout and cached with it: the one-use vectors (BatchNorm scales and shifts, biases), the
first reads, the waves (couplings that share no parameter, each after every earlier coupling it
shares one with), each wave's re-reads, and each wave's partial sums as one flat list with the block
each entry adds to. A wave's shrink factors then take a fixed handful of kernels (one ``cat`` of its
partial sums, one ``index_add_`` into float64 sums, the factors, one ``split`` per factor) however many
couplings it holds, instead of a few per coupling: on ResNet-50's plan (37 groups, 15 waves) this
is most of the calling thread's own work, which no worker thread can take over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .sweeps import Param

__all__ = ["Plan", "Wave", "build", "factors"]

_TINY = torch.finfo(torch.float32).tiny

Read = tuple[int, int]  # (parameter index in the layout, use index: 0 its first coupling's, 1 the later one's)


@dataclass
class Wave:
    """Couplings that share no parameter, and where their partial sums come from."""

    couplings: list[int]
    sizes: list[int]  # blocks per coupling
    parts: list[Read]  # every coupling's partial sums, coupling by coupling (a vector's: its squares)
    index: Tensor  # (sum of the parts' lengths,) int64: the block of the wave each entry adds to
    from_m: list[Read]  # later uses of a weight whose M was kept (small: no read of the weight)
    reread: list[Read]  # later uses of a weight read again (a 1x1 conv), weighted by the earlier scale
    offsets: list[int]  # per entry of ``parts``: the wave's block it starts at (its coupling's first)


@dataclass
class Plan:
    vectors: list[int]  # one-use vectors: squared in one kernel, scaled in one kernel
    first: list[Read]  # every other parameter's first use: nothing is written before the end
    waves: list[Wave]
    writes: list[int]  # every parameter but the vectors
    order: list[int]  # couplings wave by wave (their thresholds are concatenated in this order)
    uses_of: list[list[Read]]  # per coupling, its uses


def build(params: list[Param], n: int, device: torch.device) -> Plan:
    """The plan of ``params`` (a layout of ``n`` couplings), index tensors on ``device``."""
    vectors = [k for k, p in enumerate(params) if p.mat is None and p.uses[0].x.shape[0] == 1 and p.uses[0].x.shape[2] == 1]
    vec = set(vectors)
    uses_of: list[list[Read]] = [[] for _ in range(n)]
    for k, p in enumerate(params):
        for j, u in enumerate(p.uses):
            uses_of[u.coupling].append((k, j))
    level = [0] * n
    for ci, uses in enumerate(uses_of):
        for k, j in uses:
            if j == 1:  # uses are in coupling order: the parameter's first use is an earlier coupling's
                level[ci] = max(level[ci], level[params[k].uses[0].coupling] + 1)
    by_level: list[list[int]] = [[] for _ in range(max(level, default=-1) + 1)]
    for ci, lv in enumerate(level):
        by_level[lv].append(ci)
    waves = []
    for wave in by_level:
        parts = [r for ci in wave for r in uses_of[ci]]
        sizes = [params[uses_of[ci][0][0]].uses[uses_of[ci][0][1]].x.shape[1] for ci in wave]
        index: list[int] = []
        offsets: list[int] = []
        start = 0
        for ci, size in zip(wave, sizes):
            index += [start + b for _ in uses_of[ci] for b in range(size)]
            offsets += [start] * len(uses_of[ci])
            start += size
        later = [(k, j) for k, j in parts if j == 1 and k not in vec]
        kept_m = [_kept_m(params[k]) for k, _ in later]
        waves.append(
            Wave(
                wave,
                sizes,
                parts,
                torch.tensor(index, dtype=torch.int64, device=device),
                [r for r, m in zip(later, kept_m) if m],
                [r for r, m in zip(later, kept_m) if not m],
                offsets,
            )
        )
    first = [(k, 0) for k in range(len(params)) if k not in vec]
    writes = [k for k in range(len(params)) if k not in vec]
    return Plan(vectors, first, waves, writes, [ci for w in by_level for ci in w], uses_of)


def _kept_m(p: Param) -> bool:
    """Whether ``p``'s later use comes from its ``M`` (a weight with a run ``K > 1``), not a second read."""
    return p.mat is not None and p.mat.shape[2] > 1


def factors(
    wave: Wave, parts: Sequence[Tensor], tau: Tensor, floor: float
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[Tensor]]:
    """The wave's shrink factors from its partial sums (float32, in ``wave.parts`` order) and its
    thresholds (its couplings' concatenated): per coupling ``(scale f64, scale f32, scale f32
    squared)`` and the blocks it zeroed (nonzero norm, zero scale)."""
    if len(wave.sizes) == 1:  # one coupling (every call of c.soft_threshold): two kernels
        sums = torch.stack(list(parts)).sum(0, dtype=torch.float64)  # float32 partial sums, added in float64
    else:
        sums = torch.zeros(tau.numel(), dtype=torch.float64, device=tau.device)
        sums.index_add_(0, wave.index, torch.cat(list(parts)).to(torch.float64))
    norm = sums.sqrt()
    scale = (1 - tau / norm.clamp_min(_TINY)).clamp_(min=0)
    if floor > 0:
        scale = torch.where(norm > tau + floor, scale, 0.0)
    single = scale.float()
    square = single.square()  # the weights a later coupling's sums of a shared parameter take
    killed = (scale == 0) & (sums > 0)
    if len(wave.sizes) == 1:
        return [(scale, single, square)], [killed]
    f64, f32, sq, dead = (t.split(wave.sizes) for t in (scale, single, square, killed))
    return list(zip(f64, f32, sq)), list(dead)
