"""Bind a plan to a live model: one BlockCoupling per group, acting on the parameters."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..engine import BlockCoupling, BlockSpec, View
from ..errors import CouplingError
from .layout import strided_layout
from .schema import Member, Plan

__all__ = ["bind", "member_spec"]


def bind(plan: Plan, model: nn.Module, *, check: bool = True) -> dict[str, BlockCoupling]:
    """One coupling per group, keyed by group name; ``numblk() == group.size``.

    Buffers (e.g. BatchNorm running statistics) are pruned by surgery but are not part of
    the couplings: thresholding acts on trainable parameters only. A pinned group whose
    channels no strided view can express (e.g. ``cat(h.split(4, 1)[::-1])``) has no coupling.
    """
    if check:
        plan.check(model)
    params = dict(model.named_parameters())
    out = {}
    for g in plan.groups:
        if not g.prunable and any(strided_layout(m.positions()) is None for m in g.members if m.indices is not None):
            continue  # a pinned group whose channel order no strided view expresses: nothing to bind
        specs, orders = [], []
        for m in g.members:
            if m.param in params:
                specs.append(member_spec(m, params[m.param]))
                orders.append(m.order)
        if specs:
            out[g.name] = BlockCoupling(specs, orders, name=g.name)
    return out


def member_spec(m: Member, p: Tensor) -> BlockSpec:
    """A ``(pre, *channels, block, post)`` view of the member's slice, tiled one channel per block."""
    if not p.is_contiguous():
        raise CouplingError(f"member {m.param}: parameter must be contiguous to be viewed")
    layout = strided_layout(m.positions())
    if layout is None:
        raise CouplingError(f"member {m.param}: indices are not a strided pattern")
    shape = tuple(p.shape)
    lead = len(m.fix or ())  # leading axes held at one index (one expert): a contiguous sub-tensor
    base = sum(i * p.stride(a) for a, i in m.fix or ())
    pre, post = math.prod(shape[lead : m.axis]), math.prod(shape[m.axis + 1 :])
    size = shape[m.axis]
    view_shape = (pre, *layout.sizes, m.block, post)
    stride = (size * post, *(s * m.block * post for s in layout.strides), post, 1)
    view = View(p, view_shape, stride, offset=base + layout.base * m.block * post)
    block = (-1, *(1 for _ in layout.sizes), -1, -1)
    at = "".join(f"[{i}]" for _, i in m.fix or ())
    return BlockSpec(view, block, name=f"{m.param}{at}[axis {m.axis}]")
