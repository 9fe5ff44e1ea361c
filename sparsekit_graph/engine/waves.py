"""The conditioned prox of many couplings in one call, as if called one by one in order.

A coupling that shares a parameter with an earlier one must see that parameter as the earlier call
left it (a conv weight is the rows of one group and the columns of the next), so couplings are cut
into *waves*: a coupling's wave is one past the last wave of any earlier coupling it shares a
parameter with. Couplings in one wave share nothing, so each wave is one ``solve.conditioned`` call
over all their pieces, their blocks side by side (each block keeps its own multiplier): one Newton
loop, and Newton's last steps sweep a few packed tensors, for a whole wave instead of per coupling.
ResNet-50's plan (37 groups) takes 15 waves (seven of them a single residual or stem group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import solve
from .block import BlockValues, SparseBlock

__all__ = ["conditioned_all", "waves"]


def waves(couplings: Sequence[SparseBlock]) -> list[list[int]]:
    """Indices of ``couplings`` by wave: within a wave no two share a parameter, and a coupling
    comes in a later wave than every earlier coupling it shares a parameter with."""
    last: dict[int, int] = {}
    out: list[list[int]] = []
    for k, c in enumerate(couplings):
        params = {id(s.view.param) for s in c.specs}
        wave = 1 + max((last[p] for p in params if p in last), default=-1)
        for p in params:
            last[p] = wave
        if wave == len(out):
            out.append([])
        out[wave].append(k)
    return out


def conditioned_all(
    couplings: Sequence[SparseBlock],
    taus: Sequence[Tensor],
    conditioners: Sequence[BlockValues],
    *,
    rtol: float,
    atol: float,
    max_iter: int,
    floor: float,
) -> list[Tensor]:
    """``c.soft_threshold(tau, h)`` for every coupling, in order, one solve per wave; returns the
    blocks each zeroed (flat).

    Args:
        couplings: The couplings (or specs).
        taus: Flat float32 thresholds, one per coupling.
        conditioners: One per coupling (a tensor for a spec, a mapping for a coupling).
        rtol, atol, max_iter, floor: As in ``SparseBlock.soft_threshold``.
    """
    opts = {"rtol": rtol, "atol": atol, "max_iter": max_iter, "floor": floor}
    seen: set = set()  # each window checked once (a weight's rows and columns are one window in two couplings)
    resolved = [c._checked_conditioners(h, seen) for c, h in zip(couplings, conditioners)]  # all, before any write
    killed: dict[int, Tensor] = {}
    for wave in waves(couplings):
        pieces: list[solve.Piece] = []
        solved: list[int] = []
        for k in wave:
            own, overlap = couplings[k]._conditioned_pieces(resolved[k])
            if overlap:  # a parameter twice in one coupling: its pieces see each other's writes
                killed[k] = solve.conditioned(own, taus[k], overlap=True, **opts)
                continue
            start = sum(taus[j].numel() for j in solved)
            for p in own:
                p.start = start
            pieces += own
            solved.append(k)
        if solved:
            tau = torch.cat([taus[k] for k in solved]) if len(solved) > 1 else taus[solved[0]]
            dead = solve.conditioned(pieces, tau, **opts)
            killed.update(zip(solved, dead.split([taus[k].numel() for k in solved])))
    return [killed[k] for k in range(len(couplings))]
