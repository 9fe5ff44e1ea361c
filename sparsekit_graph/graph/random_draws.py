"""Ops that draw random values: ATen's ``nondeterministic_seeded`` ops (``rand``, ``randn_like``,
``normal_``, ``uniform_``, ``bernoulli``, ``dropout`` while training, ``rrelu``, ...). A pruned
model draws fewer values, so its kept channels get other values than the dense model's (after a
``torch.manual_seed`` or with a ``generator`` alike): the axes such an op writes stay prunable
but are not zero-invariant. Read from the op's ATen overloads' tags, for either tracer."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from .normalize import Call

__all__ = ["draws_random"]

_OFF = {"training": False, "train": False, "dropout_p": 0, "p": 0}  # dropout told off, or of rate 0: nothing drawn


@cache
def _seeded(name: str) -> bool:
    """Does some overload of ``aten::name`` draw random values?"""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    return any(torch.Tag.nondeterministic_seeded in getattr(packet, o).tags for o in packet.overloads())


def draws_random(call: Call, target: Any) -> bool:
    """Does this call (``target``: the node's own, an ATen overload under torch.export) draw
    random values? A dropout told ``training=False``, or of rate 0 (``scaled_dot_product_attention``'s
    ``dropout_p=0.0``), does not."""
    if any(type(call.args.get(k)) in (bool, int, float) and call.args[k] == off for k, off in _OFF.items()):
        return False
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags
    name = getattr(call.op, "__name__", None)
    return isinstance(name, str) and _seeded(name)
