"""Where masking a group makes a value infinite: divisors and logarithms of zeroed channels.

Zeroing a channel's members must remove its effect exactly. ``h / g`` with ``g`` a member
(``h / self.scale.view(1, -1, 1, 1)``), ``self.g.rsqrt()``, ``self.g.log()`` or
``h / h.sum((2, 3), keepdim=True)`` divides zero by zero once the channel is masked: the
masked model computes NaN where the pruned one has no channel. ``singular_axes`` names the
axes of such operands; the pointwise rule marks them mixed (prunable, not zero-invariant)
unless the operand provably stays nonzero (``+ eps``, ``exp``, a buffer, a constant).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .masked_values import masked_value, power, unchanged_by_masks
from .meta import META
from .normalize import Call, normalize
from .zeros import written_in_place

__all__ = ["in_dtype", "singular_operands", "stays_nonzero"]


def _other(call: Call) -> list[object]:
    return [call.args.get("other")]


def _input(call: Call) -> list[object]:
    return [call.args.get("input")]


def _negative_power(call: Call) -> list[object]:
    p = call.args.get("exponent", call.args.get("other"))
    return [] if isinstance(p, (int, float)) and p >= 0 else [call.args.get("input")]


# op -> the operands that must not vanish (a zero there gives inf or NaN).
_SINGULAR: dict[object, Callable[[Call], list[object]]] = {
    torch.div: _other, operator.truediv: _other, operator.itruediv: _other, operator.floordiv: _other,
    operator.ifloordiv: _other, operator.mod: _other, torch.fmod: _other, torch.remainder: _other,
    torch.reciprocal: _input, torch.rsqrt: _input, torch.log: _input, torch.log2: _input, torch.log10: _input,
    torch.pow: _negative_power, operator.pow: _negative_power, operator.ipow: _negative_power,
    torch.addcdiv: lambda call: [call.args.get("tensor2")],
    torch.logit: _input, torch.digamma: _input, torch.lgamma: _input, torch.acosh: _input,
    torch.special.ndtri: _input, torch.xlogy: _other, torch.floor_divide: _other, torch.float_power: _negative_power,
}  # fmt: skip

# f(x) > 0 for every x.
_POSITIVE = {torch.exp, torch.exp2, torch.sigmoid, torch.special.expit, torch.special.exp2, F.softplus, torch.cosh}
# f(x) >= 0 for every x.
_NONNEGATIVE = {torch.abs, operator.abs, torch.square, torch.relu, F.relu, F.relu6, torch.sqrt, torch.norm,
                torch.linalg.vector_norm, torch.var, torch.std, torch.softmax, F.softmax}  # fmt: skip
# f(x) keeps x's sign pattern (and its values, up to order or layout).
_VIEWS = {
    operator.getitem, torch.unsqueeze, torch.squeeze, torch.Tensor.view, torch.reshape, torch.Tensor.expand,
    torch.Tensor.expand_as, torch.flatten, torch.permute, torch.transpose, torch.Tensor.contiguous, torch.clone,
    torch.Tensor.to, torch.Tensor.float, torch.Tensor.type_as, torch.Tensor.detach, torch.detach, torch.Tensor.T,
    torch.Tensor.mT, torch.Tensor.view_as, torch.Tensor.reshape_as, torch.broadcast_to,
}  # fmt: skip
_REDUCTIONS = {torch.sum, torch.mean, torch.amax, torch.amin, torch.nansum}
_ADD = {torch.add, operator.add, operator.iadd}
_PRODUCTS = {torch.mul, operator.mul, operator.imul}


def singular_operands(call: Call) -> list[object]:
    """The operands of ``call`` that must not be zero (divisors, logarithm arguments)."""
    pick = _SINGULAR.get(call.op)
    return [x for x in pick(call) if isinstance(x, fx.Node)] if pick is not None else []


def stays_nonzero(x: object, axis: int, modules: dict[str, nn.Module]) -> bool:
    """True if ``x`` is provably not zero (nor inf or NaN) along ``axis`` when a channel's
    members are zeroed: one value for every channel (size 1 there); a nonzero value that the
    masked channel holds in the model's dtype (``masked_values``: ``var + 1e-5`` is, ``var +
    1e-50`` in float32 is not); else, where that is not known, nonzero whatever the members
    are (``g.abs() + eps``, ``exp(g.abs())``, a buffer, a constant). Anything else may vanish."""
    value = x.meta.get(META) if isinstance(x, fx.Node) else None
    if isinstance(value, Tensor) and value.ndim and value.shape[axis % value.ndim] == 1:
        return True
    masked = masked_value(x, axis, modules)
    if masked is not None:
        return masked != 0 and math.isfinite(masked)
    return _sign(x, modules, 0) in ("+", "!0")


def _sign(x: object, modules: dict[str, nn.Module], depth: int) -> str | None:
    """What is known of ``x`` whatever the members: ``"+"`` (> 0), ``"!0"`` (never zero),
    ``">=0"``, or None (anything, zero included)."""
    if not isinstance(x, fx.Node):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return None
        return "+" if x > 0 else "!0" if x != 0 else ">=0"
    if not isinstance(x.meta.get(META), Tensor) or depth > 32:
        return "!0" if not isinstance(x.meta.get(META), Tensor) else None  # a length read in forward
    if unchanged_by_masks(x, modules):
        return "!0"  # no member upstream: masking cannot change it
    if x.op not in ("call_function", "call_method") or written_in_place(x, modules):  # ``d = v + 1; d.sub_(1)``
        return None
    call = normalize(x)
    src = call.args.get("input")
    if call.op in _POSITIVE:  # ``exp(x)`` of a very negative x is 0 in floating point
        return "+" if call.op is torch.cosh or _sign(src, modules, depth + 1) in ("+", ">=0") else ">=0"
    if call.op in (torch.clamp, torch.clamp_min):
        low = in_dtype(call.args.get("min"), x.meta[META].dtype)  # ``clamp(min=1e-12)`` is 0 in float16
        if isinstance(low, (int, float)) and not isinstance(low, bool):
            return "+" if low > 0 else ">=0" if low == 0 else None
        return None
    p = 0.5 if call.op is torch.sqrt else power(call)
    if p is not None and p <= 1 and _sign(src, modules, depth + 1) == "+":
        return "+"  # ``(var + eps).sqrt()``, ``(var + eps) ** -0.5``: no underflow (``** 2`` may)
    if call.op in _NONNEGATIVE or _even_power(call):
        return ">=0"
    if call.op in _VIEWS:
        return _sign(src, modules, depth + 1)
    if call.op in _REDUCTIONS:
        inner = _sign(src, modules, depth + 1)
        return inner if inner in ("+", ">=0") else None
    if call.op in (torch.neg, operator.neg):
        return "!0" if _sign(src, modules, depth + 1) in ("+", "!0") else None
    dtype = x.meta[META].dtype  # ``var + 1e-8`` in float16: the constant rounds to zero
    signs = [_sign(in_dtype(call.args.get(k), dtype), modules, depth + 1) for k in ("input", "other")]
    if call.op in _ADD and call.args.get("alpha", 1) == 1:  # positive + nonnegative, e.g. ``var + eps``
        if "+" in signs and all(t in ("+", ">=0") for t in signs):
            return "+"
        return ">=0" if all(t == ">=0" for t in signs) else None
    if call.op in _PRODUCTS:
        if call.args.get("input") is call.args.get("other"):  # x * x
            return ">=0"
        if all(t in ("+", "!0") for t in signs):  # tiny times tiny underflows to zero
            return ">=0" if all(t == "+" for t in signs) else None
        return ">=0" if all(t in ("+", ">=0") for t in signs) else None
    return None


def in_dtype(v: object, dtype: torch.dtype) -> object:
    """A Python number as ``dtype`` holds it (``1e-50`` is 0 in float32), else ``v``."""
    if isinstance(v, float) and (dtype.is_floating_point or dtype.is_complex):
        held = torch.tensor(v, dtype=dtype)
        return (held.real if held.is_complex() else held).item()
    return v


def _even_power(call: Call) -> bool:
    """``x ** 2``, ``x.pow(4)``: never negative."""
    p = power(call)
    return p is not None and p.is_integer() and int(p) % 2 == 0
