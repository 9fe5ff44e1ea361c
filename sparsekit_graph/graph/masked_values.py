"""The value a masked channel holds, computed in the model's dtype.

Zeroing a channel's members makes the channel zero where it is made (a conv, a linear, an
affine norm). Ops that act on each channel alone (elementwise ops with numbers, reductions and
normalisations over other axes) then give the channel one value each, which only floating
point knows: ``var + 1e-50`` is 0 in float32, ``1 / (var + 1e-5)`` is inf in float16,
``exp(-1 / (m + 1e-6))`` is 0 and ``log1p(-exp(-|h|))`` is -inf. ``masked_value`` runs the
node's own op on one-channel tensors holding those values: every spelling is computed as torch
computes it. Where another tensor enters on the channel's axis (a buffer, an input), the value
is not known (None) and ``singular``'s signs decide.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .meta import META, TRACED_CONSTANT
from .normalize import normalize
from .pointwise_ops import POINTWISE_FUNCTIONS
from .zeros import kept_source, reduced_source, written_in_place, zero_breaker

__all__ = ["FINITE_FOR_FINITE", "masked_value", "stays_finite"]

_PER_SLICE = {  # ops that reduce or normalise along ``dim``: per channel where ``dim`` is another axis
    torch.sum, torch.mean, torch.amax, torch.amin, torch.var, torch.std, torch.nansum, torch.nanmean, torch.prod,
    torch.logsumexp, torch.norm, torch.linalg.vector_norm, F.normalize, torch.softmax, F.softmax, torch.log_softmax,
    F.log_softmax, F.softmin, torch.var_mean, torch.std_mean, torch.max, torch.min, torch.aminmax,
}  # fmt: skip
# Finite for finite operands whatever they are, and no larger (``relu``, ``tanh``): not worth
# computing. Sums and products are computed: ``1e6 * 1e33`` is inf in float32.
FINITE_FOR_FINITE = {
    operator.neg, operator.pos, operator.abs, torch.neg, torch.abs, torch.relu, F.relu, F.relu6, F.relu_,
    torch.sigmoid, torch.tanh, torch.erf, torch.sin, torch.cos, torch.atan, torch.clamp, torch.where, torch.maximum,
    torch.minimum, torch.sign, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.leaky_relu_, F.elu,
    F.elu_, F.mish, F.hardtanh, F.hardtanh_, F.logsigmoid, F.softsign, F.tanhshrink, F.softshrink, F.hardshrink,
    F.threshold, torch.special.expit, torch.special.erf, torch.masked_fill, torch.nan_to_num,
}  # fmt: skip
_LIKE = {torch.ones_like, torch.zeros_like, torch.full_like}
_LITERALS = {torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.full, torch.ones, torch.zeros}
_CASTS = {torch.Tensor.to, torch.Tensor.type_as}  # ``.half()``, ``.type(torch.float16)``: ``to``
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Identity,
)  # fmt: skip
_MASKED = "skg.masked_value"  # node.meta: axis -> the masked channel's value
_ELEMENTS = 1 << 20  # the largest one-channel slice computed (a reduction's extent)


def stays_finite(node: fx.Node, axis: int, modules: dict[str, nn.Module]) -> bool:
    """False where ``node``'s masked channel along ``axis`` is known to hold inf or NaN."""
    v = masked_value(node, axis, modules)
    return v is None or math.isfinite(v)


def masked_value(x: object, axis: int, modules: dict[str, nn.Module]) -> float | None:
    """The one value ``x`` holds along ``axis`` at a channel whose members are zeroed, or None
    where it is not known; a number is its own value. Kept on the node: a chain of residual
    blocks asks each block once."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if not isinstance(x, fx.Node) or not isinstance(value := x.meta.get(META), Tensor) or not value.ndim:
        return None
    axis %= value.ndim
    known = x.meta.setdefault(_MASKED, {})
    if axis not in known:
        known[axis] = _masked_value(x, axis, value, modules)
    return known[axis]


def _masked_value(x: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module]) -> float | None:
    if written_in_place(x, modules):  # ``v = h.abs() + 1; v.sub_(1)``: not the value its op made
        return None
    computed = _computed(x, axis, value, modules)
    if computed is not None:
        return computed
    source = kept_source(x, axis)  # ``h.flatten(2)``, ``v[:, :, None, None]``: the same values
    if source is not None:
        return masked_value(*source, modules)
    return 0.0 if zero_breaker(x, axis, modules) is None else None


def _computed(x: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module]) -> float | None:
    """``x``'s op run on the masked channel's values of its operands."""
    if x.op == "call_module":  # an activation layer: the same as its function
        layer = modules.get(str(x.target))
        src = x.args[0] if x.args else None
        if not isinstance(layer, _ELEMENTWISE_MODULES) or not isinstance(src, fx.Node) or len(x.all_input_nodes) != 1:
            return None
        slices = _slices(x, {src: (axis, set(range(value.ndim)))}, modules)
        return None if slices is None else _one_value(_call(x, slices, layer))
    if x.op not in ("call_function", "call_method"):
        return None
    call = normalize(x)
    src = call.args.get("input")
    if call.op is operator.getitem and isinstance(src, fx.Node) and isinstance(src.meta.get(META), tuple):
        index = call.args.get("index")  # ``h.var_mean((2, 3))[0]``, ``h.max(-1).values``
        parts = _per_slice(src, axis, value, modules) if isinstance(index, int) else None
        return None if parts is None or not isinstance(parts, tuple) else _one_value(parts[index])
    if call.op in _PER_SLICE:
        return _one_value(_per_slice(x, axis, value, modules))
    if call.op in _LIKE:  # ``torch.ones_like(h)``: its value, whatever h holds
        slices = {n: torch.zeros((1,) * n.meta[META].ndim, dtype=n.meta[META].dtype) for n in [src] if isinstance(src, fx.Node)}
        return _one_value(_call(x, slices)) if set(slices) == set(x.all_input_nodes) else None
    if call.op in POINTWISE_FUNCTIONS or call.op in _CASTS:
        tensors = [n for n in x.all_input_nodes if isinstance(n.meta.get(META), Tensor)]
        slices = _slices(x, {n: (axis - value.ndim + n.meta[META].ndim, set(range(n.meta[META].ndim))) for n in tensors}, modules)
        return None if slices is None else _one_value(_call(x, slices))
    return None


def _per_slice(x: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module]) -> Any:
    """What a reduction or normalisation over other axes than ``axis`` gives at the masked
    channel (``value``: one of its outputs)."""
    call = normalize(x)
    src = call.args.get("input")
    k = reduced_source(call, axis, value, src) if call.op in _PER_SLICE else None
    if k is None or not isinstance(src, fx.Node):
        return None  # over the channel's axis
    ndim = src.meta[META].ndim
    slices = _slices(x, {src: (k, set(range(ndim)) - set(_dims(call.args.get("dim"), ndim)))}, modules)
    return None if slices is None else _call(x, slices)


def _slices(
    x: fx.Node, operands: dict[fx.Node, tuple[int, set[int]]], modules: dict[str, nn.Module]
) -> dict[fx.Node, Any] | None:
    """Each input of ``x`` as it is at the masked channel: a tensor of its value, of length 1
    on the ``single`` axes of its operand entry, whole along the axes ``x`` reduces over; a
    size read as its number; a constant that is one value for every channel as it is."""
    slices: dict[fx.Node, Any] = {}
    for n in x.all_input_nodes:
        value = n.meta.get(META)
        if n not in operands:
            if not isinstance(value, (int, float)):
                return None
            slices[n] = value
            continue
        axis, single = operands[n]
        if axis < 0 or value.shape[axis] == 1:  # one value for every channel, the same masked or not
            constant = _constant(n)
            if constant is None:
                return None
            slices[n] = constant
            continue
        v = masked_value(n, axis, modules)
        shape = [1 if d in single else value.shape[d] for d in range(value.ndim)]
        if v is None or math.prod(shape) > _ELEMENTS:
            return None
        slices[n] = torch.full(shape, v, dtype=value.dtype)
    return slices


def _constant(n: fx.Node) -> Tensor | None:
    """The value of a tensor the code made of literals (``torch.tensor(1e-5)``), else None. A
    buffer's or parameter's value is not read: on meta weights there is none, and the plan on
    meta weights is the plan on real ones."""
    if n.op == "get_attr":
        value = n.meta.get(TRACED_CONSTANT)
    elif n.op == "call_function" and not n.all_input_nodes and normalize(n).op in _LITERALS:
        value = _call(n, {})
    else:
        return None
    if not isinstance(value, Tensor) or value.is_meta or value.numel() > _ELEMENTS:
        return None
    return value.detach().cpu()


def _call(x: fx.Node, slices: dict[fx.Node, Any], layer: nn.Module | None = None) -> Any:
    """``x``'s op on ``slices`` in place of its inputs (None where it fails there)."""
    args, kwargs = fx.node.map_arg((x.args, x.kwargs), slices.__getitem__)
    try:
        with torch.no_grad():
            if layer is not None:
                return layer(*args, **kwargs)
            if x.op == "call_method":
                return getattr(args[0], x.target)(*args[1:], **kwargs)
            return x.target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an op that will not run on a slice: not known
        return None


def _one_value(out: Any) -> float | None:
    """The one value a floating-point ``out`` holds everywhere (NaN where all are), else None."""
    if not isinstance(out, Tensor) or out.is_meta or not out.numel() or not out.is_floating_point():
        return None
    if bool(out.isnan().all()):
        return math.nan
    first = out.reshape(-1)[0]
    return float(first) if bool((out == first).all()) else None


def _dims(dim: object, ndim: int) -> list[int]:
    if dim is None or dim == () or dim == []:
        return list(range(ndim))
    return [d % ndim for d in (dim if isinstance(dim, (tuple, list)) else [dim]) if isinstance(d, int)]
