"""Bind a plan to a live model: one BlockCoupling per group, acting on the parameters."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..engine import BlockCoupling, BlockSpec, View
from ..errors import CouplingError, PlanError
from .layout import strided_layout
from .schema import Member, Plan

__all__ = ["bind", "member_order", "member_spec"]


class Couplings(dict[str, BlockCoupling]):
    """``bind``'s couplings by group name; a name with none raises a ``PlanError`` (a ``KeyError``
    too) naming the groups that have one."""

    def __missing__(self, name: str) -> BlockCoupling:
        raise _NoCoupling(f"no coupling for group {name!r}; the plan's couplings: {', '.join(self) or 'none'}")


class _NoCoupling(PlanError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def bind(plan: Plan, model: nn.Module, *, check: bool = True) -> Couplings:
    """One coupling per group, keyed by group name; ``numblk() == group.size``.

    Buffers (e.g. BatchNorm running statistics) are pruned by surgery but are not part of
    the couplings: thresholding acts on trainable parameters only. A pinned group whose
    channels no strided view can express (e.g. ``cat(h.split(4, 1)[::-1])``) has no coupling.
    """
    if check:
        plan.check(model)
    params = dict(model.named_parameters())
    out = Couplings()
    for g in plan.groups:
        if not g.prunable and any(strided_layout(m.positions()) is None for m in g.members if m.indices is not None):
            continue  # a pinned group whose channel order no strided view expresses: nothing to bind
        specs, orders = [], []
        for m in g.members:
            if m.param in params and params[m.param].numel():  # an empty tensor has nothing to threshold
                specs.append(member_spec(m, params[m.param]))
                orders.append(member_order(m, params[m.param]))
        if specs:
            out[g.name] = BlockCoupling(specs, orders, name=g.name)
    return out


def member_spec(m: Member, p: Tensor) -> BlockSpec:
    """A ``(pre, *channels, block, post)`` view of the member's slice, tiled one channel per block;
    ``pre`` and ``post`` as one axis each where the parameter's strides let them be (always for a
    contiguous one), else as the axes they are (a channels_last weight's ``(in, kh, kw)``): then
    ``member_order`` gives the member's order over them."""
    layout = strided_layout(m.positions())
    if layout is None:
        raise CouplingError(f"member {m.param}: indices are not a strided pattern")
    if any(s == 0 and n > 1 for n, s in zip(p.shape, p.stride())):
        raise CouplingError(f"member {m.param}: an expanded tensor (stride 0): its elements share memory, no block is its own")
    pre, post = _outer_axes(m, p)
    step = p.stride(m.axis)  # one index along the channel axis
    view_shape = (*(n for n, _ in pre), *layout.sizes, m.block, *(n for n, _ in post))
    stride = (*(s for _, s in pre), *(s * m.block * step for s in layout.strides), step, *(s for _, s in post))
    base = sum(i * p.stride(a) for a, i in m.fix or ())  # leading axes held at one index (one expert)
    view = View(p, view_shape, stride, offset=base + layout.base * m.block * step)
    block = (*(-1 for _ in pre), *(1 for _ in layout.sizes), -1, *(-1 for _ in post))
    at = "".join(f"[{i}]" for _, i in m.fix or ())
    return BlockSpec(view, block, name=f"{m.param}{at}[axis {m.axis}]")


def member_order(m: Member, p: Tensor) -> list[int]:
    """``m.order`` (over ``(pre, *channels, block, post)``) over the axes of ``member_spec``'s view."""
    pre, post = _outer_axes(m, p)
    channels = len(m.order) - 3
    axes = [list(range(len(pre)))]
    axes += [[len(pre) + i] for i in range(channels + 1)]  # the channel axes, then the block
    axes.append(list(range(len(pre) + channels + 1, len(pre) + channels + 1 + len(post))))
    return [a for i in m.order for a in axes[i]]


def _outer_axes(m: Member, p: Tensor) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ``(size, stride)`` axes before the channel axis (past the fixed ones) and after it."""
    shape, strides = tuple(p.shape), p.stride()
    post = _merged([(shape[a], strides[a]) for a in range(m.axis + 1, len(shape))], empty=1)
    pre_empty = shape[m.axis] * math.prod(shape[m.axis + 1 :])
    return _merged([(shape[a], strides[a]) for a in range(len(m.fix or ()), m.axis)], empty=pre_empty), post


def _merged(axes: list[tuple[int, int]], empty: int) -> list[tuple[int, int]]:
    """``(size, stride)`` axes, each run that steps through memory as one axis merged into it
    (unit axes dropped); no axis left: one of size 1 (stride ``empty``)."""
    out: list[tuple[int, int]] = []
    for n, s in axes:
        if n == 1:
            continue
        if out and out[-1][1] == n * s:
            out[-1] = (out[-1][0] * n, s)
        else:
            out.append((n, s))
    return out or [(1, empty)]
