"""Every group's prox in few engine calls (``soft_threshold_all``), where one process holds every tensor.

Group by group (``step.py``'s distributed path) each group's weights are read and written on their
own, and a conv weight (the rows of one group, the columns of the next) twice. ``soft_threshold_all``
solves all groups as if called one by one in the same order, in few large kernels: the Euclidean
prox reads every weight once for its norms and writes it once, the conditioned prox solves the
groups that share no parameter as one Newton problem. It returns the channels each group killed,
which the momentum reset needs.

Adam's denominators for a conditioned call are all held at once: the groups are cut into runs, in
order, whose new denominators stay under ``BUDGET`` bytes (a denominator shared with a later run is
kept until its last group is done, as group by group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from torch import Tensor

from ..engine import SparseBlock, soft_threshold_all
from ..engine.batch import euclidean_all
from ..errors import SparseKitError
from .conditioner import AdamDenominators
from .segments import ProxGroup, is_dtensor

__all__ = ["BUDGET", "distributed", "eligible", "prox_all"]

BUDGET = 1 << 30  # bytes of Adam denominators one conditioned call adds (ResNet-50's, 100 MB, take one)


def distributed() -> bool:
    """A process group is running: every rank must take the group-by-group path."""
    return dist.is_available() and dist.is_initialized()


def eligible(groups: Sequence[ProxGroup]) -> bool:
    """Every group is one engine coupling over whole, plain (non-DTensor) tensors of this process."""
    return all(g.coupling is not None and g.pg is None and not any(is_dtensor(s.param) for s in g.segments) for g in groups)


def prox_all(work: Sequence[tuple[ProxGroup, Tensor]], denoms: AdamDenominators | None) -> list[Tensor]:
    """The prox of every ``(group, tau)``, as if one by one in order: Euclidean without ``denoms``,
    else in Adam's metric; returns the channels each group killed (flat, bool)."""
    couplings: list[SparseBlock] = [g.coupling for g, _ in work if g.coupling is not None]
    if len(couplings) != len(work):
        raise SparseKitError(f"group {next(g.name for g, _ in work if g.coupling is None)!r} has no engine coupling")
    taus = [tau for _, tau in work]
    if denoms is None:  # the thresholds are non-negative by construction: no check (a host sync on CUDA)
        return euclidean_all(couplings, taus)
    killed: list[Tensor] = []
    for a, b in _runs(work, denoms):
        hs = [{s: s.view.window(denoms(s.view.param)) for s in c.specs} for c in couplings[a:b]]
        killed += soft_threshold_all(couplings[a:b], taus[a:b], hs)
        for g, _ in work[a:b]:
            denoms.release(g)
    return killed


def _runs(work: Sequence[tuple[ProxGroup, Tensor]], denoms: AdamDenominators) -> list[tuple[int, int]]:
    """``[a, b)`` ranges of ``work`` in order, each adding at most ``BUDGET`` bytes of denominators
    (or one group, if that alone is more)."""
    out: list[tuple[int, int]] = []
    start, held, seen = 0, 0, set[int]()
    for i, (g, _) in enumerate(work):
        params = {id(s.param): s.param for s in g.segments}

        def cost() -> int:
            return sum(denoms.nbytes(p) for k, p in params.items() if k not in seen)

        if i > start and held + cost() > BUDGET:
            out.append((start, i))
            start, held, seen = i, 0, set()
        held += cost()
        seen.update(params)
    if start < len(work):
        out.append((start, len(work)))
    return out
