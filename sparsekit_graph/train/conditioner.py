"""Adam's denominator ``sqrt(v / (1 - beta2^t)) + eps``, once per parameter and step."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import SparseKitError
from .segments import ProxGroup, local_tensor

__all__ = ["AdamDenominators"]

_CHUNK = 1 << 18  # elements per slice: the three passes over a slice stay in cache


class AdamDenominators:
    """Per parameter, Adam's denominator on this rank's shard, for one prox step over ``groups``.

    Computed as Adam computes it (the same float ops in the same order, so the bits match), once
    per parameter however many groups hold it, when a group first needs it, and dropped after the
    last group that holds it (at most the parameters of the groups in flight are held). Every
    parameter is checked when this is made, before any group is proxed.

    Raises:
        SparseKitError: A parameter without Adam state (no gradient so far).
    """

    def __init__(
        self, groups: Sequence[ProxGroup], state: Mapping[Tensor, Mapping[str, Any]], owner: Mapping[int, Mapping[str, Any]]
    ) -> None:
        self._left: Counter[int] = Counter()
        for g in groups:
            for key in {id(s.param) for s in g.segments}:
                self._left[key] += 1
            for s in g.segments:
                if "exp_avg_sq" not in state.get(s.param, {}):
                    raise SparseKitError(f"group {g.name!r}: param {s.name!r} has no adam state yet (no gradient so far?)")
        self._state, self._owner, self._held = state, owner, {}

    def __call__(self, p: Tensor) -> Tensor:
        """The denominator of parameter ``p``, laid out like its (local) ``exp_avg_sq``."""
        h = self._held.get(id(p))
        if h is None:
            h = self._held[id(p)] = _denominator(self._state[p], self._owner[id(p)])
        return h

    def nbytes(self, p: Tensor) -> int:
        """Bytes of parameter ``p``'s denominator (its local ``exp_avg_sq``'s)."""
        v = local_tensor(self._state[p]["exp_avg_sq"])
        return v.numel() * v.element_size()

    def release(self, g: ProxGroup) -> None:
        """``g`` is done: drop what no later group needs."""
        for key in {id(s.param) for s in g.segments}:
            self._left[key] -= 1
            if self._left[key] <= 0:
                self._held.pop(key, None)


def _denominator(st: Mapping[str, Any], pg: Mapping[str, Any]) -> Tensor:
    bias_sqrt = math.sqrt(1 - float(pg["betas"][1]) ** float(st["step"]))
    eps = float(pg["eps"])
    v = local_tensor(st["exp_avg_sq"])
    h = torch.empty_like(v)
    if v.is_contiguous() and h.is_contiguous() and v.device.type == "cpu":
        vf, hf = v.view(-1), h.view(-1)
        for a in range(0, vf.numel(), _CHUNK):
            torch.sqrt(vf[a : a + _CHUNK], out=hf[a : a + _CHUNK]).div_(bias_sqrt).add_(eps)
    else:
        torch.sqrt(v, out=h).div_(bias_sqrt).add_(eps)
    return h
