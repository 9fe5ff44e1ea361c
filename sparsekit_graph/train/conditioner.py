"""Adam's denominator ``sqrt(v / (1 - beta2^t)) + eps``, once per parameter and step."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import SparseKitError
from .segments import ProxGroup, local_tensor

__all__ = ["adam_denominators"]

_CHUNK = 1 << 18  # elements per slice: the three passes over a slice stay in cache


def adam_denominators(
    groups: Iterable[ProxGroup], state: Mapping[Tensor, Mapping[str, Any]], owner: Mapping[int, Mapping[str, Any]]
) -> dict[int, Tensor]:
    """Per parameter (by ``id``) of ``groups``, Adam's denominator on this rank's shard.

    Computed as Adam computes it (float ops in the same order, so the bits match), once per
    parameter however many groups it belongs to; every parameter is checked before any is computed.

    Raises:
        SparseKitError: A parameter without Adam state (no gradient so far).
    """
    params: dict[int, tuple[str, Tensor]] = {}
    for g in groups:
        for s in g.segments:
            if "exp_avg_sq" not in state.get(s.param, {}):
                raise SparseKitError(f"group {g.name!r}: param {s.name!r} has no adam state yet (no gradient so far?)")
            params.setdefault(id(s.param), (g.name, s.param))
    out = {}
    for key, (_, p) in params.items():
        st, pg = state[p], owner[key]
        bias_sqrt = math.sqrt(1 - float(pg["betas"][1]) ** float(st["step"]))
        v = local_tensor(st["exp_avg_sq"])
        h = torch.empty_like(v)
        if v.is_contiguous() and h.is_contiguous() and v.device.type == "cpu":
            vf, hf = v.view(-1), h.view(-1)
            for a in range(0, vf.numel(), _CHUNK):
                torch.sqrt(vf[a : a + _CHUNK], out=hf[a : a + _CHUNK]).div_(bias_sqrt).add_(float(pg["eps"]))
        else:
            torch.sqrt(v, out=h).div_(bias_sqrt).add_(float(pg["eps"]))
        out[key] = h
    return out
