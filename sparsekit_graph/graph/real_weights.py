"""A real CPU copy of a model on meta weights, on which ``eager_check`` compares a graph with
the forward by value."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["REAL_COPY_ELEMENTS", "real_copy"]

REAL_COPY_ELEMENTS = 1 << 25  # a model on meta weights up to this size is checked on a real copy
_SEED = 0x5EED


def real_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` on the CPU, its meta tensors made real (``_drawn``; tied ones stay
    tied); None where the model holds more than ``REAL_COPY_ELEMENTS`` values or cannot be
    copied. The graph and the forward are compared by value on it."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    if sum(t.numel() for t in tensors) > REAL_COPY_ELEMENTS:
        return None
    try:
        real = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a layer that cannot be copied: the check is skipped
        return None
    generator = torch.Generator().manual_seed(_SEED)
    made: dict[int, Tensor] = {}
    for m in real.modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is None or not t.is_meta:
                    continue
                if id(t) not in made:
                    v = _drawn(t, generator)
                    made[id(t)] = nn.Parameter(v, t.requires_grad) if isinstance(t, nn.Parameter) else v
                store[k] = made[id(t)]
    return real


def _drawn(t: Tensor, generator: torch.Generator) -> Tensor:
    """A parameter's values from a seeded normal scaled by its fan-in; a buffer's from
    [0.5, 1.5) (a variance, a scale: ``sqrt`` and ``log`` of it stay finite); integers zero (an
    index in range), booleans True."""
    if not (t.is_floating_point() or t.is_complex()):
        return torch.full(t.shape, t.dtype == torch.bool, dtype=t.dtype)
    if not isinstance(t, nn.Parameter):
        return (torch.rand(t.shape, generator=generator) + 0.5).to(t.dtype)
    fan_in = t[0].numel() if t.dim() > 1 else 1
    return (torch.randn(t.shape, generator=generator) / fan_in**0.5).to(t.dtype)
