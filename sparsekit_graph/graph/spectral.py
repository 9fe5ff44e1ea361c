"""A spectral-normed weight (``torch.nn.utils.parametrizations.spectral_norm``) as plan members.

The weight is ``original / sigma`` with ``sigma = u . (W v)``, ``W`` the original with axis
``dim`` first and the other axes flattened, ``u`` (rows) and ``v`` (columns) buffers of the
parametrization. In eval ``u`` and ``v`` are read as stored: a zeroed row ``i`` of ``W`` adds
``u_i * 0`` to ``sigma`` and a zeroed column ``j`` adds ``0 * v_j``, so slicing ``u`` with the
rows and ``v`` with the columns gives the masked model's ``sigma`` exactly. In training the power
iteration ``u = normalize(W v)``, ``v = normalize(W^T u)`` keeps the entries of zeroed rows and
columns at zero, so the sliced vectors stay the masked ones without their zeros. ``u`` follows axis
``dim``; ``v`` follows the first other axis (a conv's input channels), one block of the later
axes' size (``kh * kw``) per channel; the kernel axes are never channels.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor, nn
from torch.nn.utils.parametrizations import _SpectralNorm

from .axes import AxisGraph, AxisId

__all__ = ["spectral_norm_axes"]


def spectral_norm_axes(graph: AxisGraph, plist: nn.ModuleList, base: str) -> list[AxisId]:
    """Axes of ``plist.original`` (named under ``base``), with ``u`` and ``v`` linked to them."""
    norm: _SpectralNorm = plist[0]  # type: ignore[assignment]
    w: Tensor = plist.original  # type: ignore[assignment]
    u, v = norm._u, norm._v
    weight = graph.add_param(graph.canonical.get(id(w), f"{base}.original"), w)
    u_axes = graph.add_param(graph.canonical.get(id(u), f"{base}.0._u"), u)
    v_axes = graph.add_param(graph.canonical.get(id(v), f"{base}.0._v"), v)
    d = norm.dim % w.ndim
    rest = [a for a in range(w.ndim) if a != d]
    if w.shape[d] > 1:
        graph.link(weight[d], u_axes[0])
    n, block = w.shape[rest[0]], math.prod(w.shape[a] for a in rest[1:])
    if n > 1:
        graph.link(weight[rest[0]], v_axes[0], np.repeat(np.arange(n), block), np.arange(n * block), kind="block")
    return weight
