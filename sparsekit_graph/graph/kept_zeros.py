"""Ops that keep a removed channel's zeros on their way: padding beside the channel axis
(zeros, or copies of the channel's own values), scaling by a finite number, and in-place
writes that leave a zero entry zero."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping

import torch
import torch.fx as fx
from torch import nn

from .normalize import Call

__all__ = ["PRODUCT", "finite_buffer", "number_scaled", "pad_layer_beside", "pads_beside", "write_keeps_zeros"]

PRODUCT = {torch.mul, operator.mul, operator.imul, torch.div, operator.truediv, operator.itruediv}


def pads_beside(call: Call, axis: int, ndim: int) -> bool:
    """Does the pad leave ``axis`` alone and fill with zeros or values of the channel itself
    (reflect, replicate, circular)?"""
    amounts = call.args.get("pad")
    if not isinstance(amounts, (tuple, list)) or len(amounts) % 2:
        return False
    zero = call.args.get("mode", "constant") != "constant" or call.args.get("value") in (None, 0, 0.0)
    return zero and axis % ndim < ndim - len(amounts) // 2


_PAD_MODULES = (
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)  # fmt: skip


def pad_layer_beside(m: object, axis: int, ndim: int) -> bool:
    """``nn.ZeroPad2d``, ``nn.ReflectionPad2d`` and kin, as ``F.pad`` (``pads_beside``)."""
    padding = getattr(m, "padding", None)
    if not isinstance(m, _PAD_MODULES) or not isinstance(padding, tuple):
        return False
    zero = not isinstance(m, nn.modules.padding._ConstantPadNd) or m.value == 0
    return zero and axis % ndim < ndim - len(padding) // 2


def number_scaled(call: Call, finite: Callable[[object], bool] = lambda x: False) -> object | None:
    """The tensor ``w`` of ``w * 0.5``, ``2 * w``, ``w / 3`` (equalized learning rate's
    ``self.weight * self.scale``): scaled by a finite number (a divisor also nonzero), which
    keeps its zeros, or multiplied by a tensor ``finite`` vouches for (``w * self.mask``:
    MADE's and PixelCNN's masked weights); None for any other call."""
    if call.op not in PRODUCT:
        return None
    a, b = call.args.get("input"), call.args.get("other")
    if call.op in (torch.div, operator.truediv, operator.itruediv):
        return a if _finite(b) and b != 0 and call.args.get("rounding_mode") is None else None
    return a if _finite(b) or finite(b) else b if _finite(a) or finite(a) else None


def finite_buffer(x: object, modules: Mapping[str, nn.Module], name: str | None = None) -> bool:
    """Is ``x`` a buffer of the model (``name``: its qualified name, where the node does not say
    it) whose values are all finite? A parameter is not (masks zero it), nor a meta tensor (no
    values to tell)."""
    if not isinstance(x, fx.Node) or x.op != "get_attr":
        return False
    owner, _, attr = (name or str(x.target)).rpartition(".")
    value = getattr(modules.get(owner), attr, None)
    if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter) or value.is_meta:
        return False
    return bool(torch.isfinite(value).all()) if value.is_floating_point() else True


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# In-place calls that leave a zero entry zero whatever their other operand (``w.mul_(s)``), or
# write no value (``requires_grad_``).
_ZERO_WRITES = frozenset({
    "mul", "relu", "zero", "neg", "abs", "sign", "tanh", "sin", "sqrt", "square", "erf", "leaky_relu", "elu", "relu6",
    "requires_grad", "detach", "share_memory",
})  # fmt: skip


def write_keeps_zeros(call: Call) -> bool:
    """Does an in-place write (``call.inplace``) keep zero entries of what it writes zero? A
    forward that runs ``w.clamp_(min=0.1)`` on a member turns a masked channel back on, so the
    group's zeroed and removed channels differ; ``w.clamp_(-c, c)`` and ``w.mul_(s)`` do not."""
    name = getattr(call.op, "__name__", "").removesuffix("_")  # ``F.hardtanh_``, ``zero_``
    given = call.args.get

    def number(key: str, test: Callable[[float], bool]) -> bool:  # absent: no bound
        v = given(key)
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and test(v))

    if name in ("clamp", "clip"):
        return number("min", lambda v: v <= 0) and number("max", lambda v: v >= 0)
    if name == "hardtanh":
        return number("min_val", lambda v: v <= 0) and number("max_val", lambda v: v >= 0)
    if name in ("clamp_min", "clamp_max"):
        return number(name[-3:], lambda v: v <= 0 if name == "clamp_min" else v >= 0)
    if name in ("fill", "masked_fill"):
        return given("value") == 0 and isinstance(given("value"), (int, float))
    if name == "div":
        return isinstance(given("other"), (int, float)) and given("other") != 0
    return name in _ZERO_WRITES
