"""The value a masked channel holds, computed in the model's dtype.

Zeroing a channel's members makes the channel zero where it is made (a conv, a linear, an
affine norm). Ops that act on each channel alone (elementwise ops with numbers, reductions and
normalisations over other axes) then give the channel one value each, which only floating
point knows: ``var + 1e-50`` is 0 in float32, ``1 / (var + 1e-5)`` is inf in float16,
``exp(-1 / (m + 1e-6))`` is 0 and ``log1p(-exp(-|h|))`` is -inf. ``masked_value`` runs the
node's own op on one-channel tensors holding those values: every spelling is computed as torch
computes it. Where another tensor enters on the channel's axis (a buffer, an input), the value
is not known (None): ``singular``'s signs decide whether a divisor vanishes, and ``stays_finite``
fails closed on ops that may overflow.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .literal_values import CASTS, COPIES_AND_CASTS, ELEMENTS, constant, run_op
from .meta import META, upstream
from .normalize import Call, normalize
from .param_reads import storage_key
from .pointwise_ops import POINTWISE_FUNCTIONS
from .zeros import kept_source, reduced_source, written_in_place, zero_breaker

__all__ = ["FINITE_FOR_FINITE", "SCALINGS", "finite_for_finite", "masked_value", "power", "stays_finite", "unchanged_by_masks"]

_PER_SLICE = {  # ops that reduce or normalise along ``dim``: per channel where ``dim`` is another axis
    torch.sum, torch.mean, torch.amax, torch.amin, torch.var, torch.std, torch.nansum, torch.nanmean, torch.prod,
    torch.logsumexp, torch.norm, torch.linalg.vector_norm, F.normalize, torch.softmax, F.softmax, torch.log_softmax,
    F.log_softmax, F.softmin, torch.var_mean, torch.std_mean, torch.max, torch.min, torch.aminmax, torch.cumsum,
    torch.cumprod, torch.logcumsumexp,
}  # fmt: skip
# Finite for finite operands whatever they are, and no larger (``relu``, ``tanh``): not worth
# computing. Sums and products are computed: ``1e6 * 1e33`` is inf in float32.
FINITE_FOR_FINITE = {
    operator.neg, operator.pos, operator.abs, torch.neg, torch.abs, torch.relu, F.relu, F.relu6, F.relu_,
    torch.sigmoid, torch.tanh, torch.erf, torch.sin, torch.cos, torch.atan, torch.clamp, torch.clamp_min, torch.clamp_max,
    torch.where, torch.maximum, torch.minimum, torch.sign, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu,
    F.leaky_relu_, F.elu, F.elu_, F.mish, F.hardtanh, F.hardtanh_, F.logsigmoid, F.softsign, F.tanhshrink, F.softshrink,
    F.hardshrink, F.threshold, torch.special.expit, torch.special.erf, torch.masked_fill, torch.nan_to_num,
    # values they write (finite), draws, and norms whose eps their rules check (``eps_guard``)
    torch.Tensor.copy_, torch.index_put, torch.fill_, torch.zero_, torch.bernoulli, torch.Tensor.uniform_,
    torch.Tensor.normal_,
    F.layer_norm, F.rms_norm, F.group_norm, F.local_response_norm, torch.renorm,
    # order statistics: values among their inputs'
    torch.quantile, torch.nanquantile, torch.median, torch.nanmedian, torch.kthvalue, torch.mode, torch.sort, torch.msort,
    torch.topk, torch.aminmax, torch.cummax, torch.cummin,
    torch._weight_norm,  # ``weight_norms`` models a weight's masked rows
}  # fmt: skip
# Finite for finite operands but for an overflow, which takes a value as large as only an op
# outside these sets makes (checked where it is made): assumed finite where their value is not
# known. Rules of other libraries' ops add theirs (``torchvision.ops.stochastic_depth``).
SCALINGS = {
    operator.add, operator.sub, operator.mul, operator.iadd, operator.isub, operator.imul, torch.add, torch.sub, torch.mul,
    torch.addcmul, torch.lerp, torch.sum, torch.mean, torch.amax, torch.amin, torch.nansum, torch.nanmean, torch.max,
    torch.min, torch.logsumexp, torch.norm, torch.linalg.vector_norm, torch.linalg.matrix_norm, torch.linalg.norm,
    torch.std, torch.var, torch.cumsum,
    torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, F.softmin, F.normalize, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout, torch.feature_dropout,
    torch.alpha_dropout, torch.feature_alpha_dropout,
}  # fmt: skip
_DIVISIONS = {operator.truediv, operator.itruediv, torch.div}
_ARITHMETIC = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, torch.add, torch.sub, torch.mul,
}  # fmt: skip
_RESHAPES = {torch.Tensor.view, torch.reshape, torch.flatten, torch.unflatten, torch.Tensor.view_as, torch.Tensor.reshape_as}
_EXPANDS = {torch.Tensor.expand, torch.Tensor.expand_as, torch.broadcast_to}
_LIKE = {torch.ones_like, torch.zeros_like, torch.full_like}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Threshold,
    nn.Softshrink, nn.Hardshrink,
)  # fmt: skip
# Activation layers whose numbers may take a finite value to inf (``nn.Softplus(beta=1e-5)``
# and ``nn.LeakyReLU(1e7)`` in float16, ``nn.Threshold(t, inf)``): their masked value is computed.
_NUMERIC_ACTIVATIONS = (nn.Softplus, nn.Threshold, nn.LeakyReLU, nn.ELU, nn.CELU, nn.Softshrink, nn.Hardshrink)
_MASKED = "skg.masked_value"  # node.meta: axis -> the masked channel's value
_UNCHANGED = "skg.unchanged_by_masks"  # node.meta: no input, layer or parameter upstream


def stays_finite(node: fx.Node, axis: int, modules: dict[str, nn.Module]) -> bool:
    """Is ``node``'s masked channel along ``axis`` provably finite? A layer's output is (its
    rule checks its eps: ``ops_norm_layers.eps_guard``), and a sum of layers' outputs; else its
    value where it is known; else where its op keeps finite values finite
    (``FINITE_FOR_FINITE``; sums and products: their operands are checked where they are made),
    takes nothing masking changes (no input, layer or parameter upstream), or divides a zero by
    what stays nonzero. Anything else (``exp`` of an unknown value: ``exp(self.k - m)`` with
    ``k = 190``) may overflow."""
    if node.op not in ("call_function", "call_method", "call_module") or _of_layers(node):
        return True
    if node.op == "call_module" and not isinstance(modules.get(str(node.target)), _NUMERIC_ACTIVATIONS):
        return True  # a layer's output, or an activation finite for finite values (ReLU, GELU, ...)
    v = masked_value(node, axis, modules)
    if v is not None:
        return math.isfinite(v)
    value = node.meta.get(META)
    if not isinstance(value, Tensor) or not (value.is_floating_point() or value.is_complex()):  # ``h > 0``: no inf
        return True
    if unchanged_by_masks(node, modules):
        return True
    if node.op == "call_module":  # an activation of a value not known: its numbers as its function's
        return _finite_numbers(modules[str(node.target)], value.dtype)
    call = normalize(node)
    if finite_for_finite(node, value, modules) or call.op in SCALINGS or (power(call) or 0) > 0:  # ``h ** 3``: a product
        return True
    if _filled_alike(node, call, axis, value):  # ``att.masked_fill(causal == 0, -inf)``: every head alike
        return True
    if call.op in COPIES_AND_CASTS:  # ``h.float()``, ``h.detach()``; ``.half()`` of 1e5 is inf
        before = getattr(call.args.get("input"), "meta", {}).get(META)
        return isinstance(before, Tensor) and _range(value.dtype) >= _range(before.dtype)
    if call.op not in _DIVISIONS:
        return False
    # 0 / nonzero is 0 (a divisor that vanishes mixes the axis there: ``singular``). A numerator
    # the masked channel holds that live channels may hold too (not known) divides as the model
    # does: a product by the divisor's reciprocal, unless the channel's own divisor is not known
    # (``g / (h.abs() + 1e-30)``: may overflow); ``(h - mean) / sqrt(running_var + eps)`` is as
    # ``* rsqrt(...)``. A known nonzero one (``(h == 0).float() / t``: 1 / t) over a divisor not
    # known may overflow where the live channels' 0 / t does not.
    numerator = masked_value(call.args.get("input"), axis, modules)
    divisor = call.args.get("other")
    d = axis - value.ndim + divisor.meta[META].ndim if isinstance(divisor, fx.Node) and _tensor(divisor) else -1
    on_channel = d >= 0 and divisor.meta[META].shape[d] > 1
    if numerator == 0 or (on_channel and masked_value(divisor, d, modules) is not None):
        return True
    return numerator is None and (not on_channel or unchanged_by_masks(divisor, modules))


def _of_layers(node: fx.Node) -> bool:
    """A sum or product of layers' outputs (``out += identity``): a masked channel is zero in
    each, or not known; no op between makes a value large enough to overflow. (Not a
    normalisation: ``F.normalize(self.w)`` in float16 divides by an eps that is 0.)"""
    return normalize(node).op in _ARITHMETIC and all(
        a.op in ("call_module", "get_attr", "placeholder") for a in node.all_input_nodes
    )


def finite_for_finite(node: fx.Node, value: object, modules: dict[str, nn.Module]) -> bool:
    """Does ``node``'s op keep finite values finite in ``value``'s dtype (``FINITE_FOR_FINITE``)
    with every number it takes finite there (not ``masked_fill(m, -inf)`` nor ``where(m, h,
    1e5)`` in float16) and no tensor it takes of values not known (a buffer: ``where(h == 0,
    self.fill, h)`` writes what it holds; a constant must be finite)? Other tensors are checked
    where they are made."""
    call = normalize(node)
    if call.op not in FINITE_FOR_FINITE:
        return False
    dtype = value.dtype if isinstance(value, Tensor) else torch.float64
    numbers = [v for v in call.args.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(v) and abs(v) <= _range(dtype) for v in numbers):
        return False
    for a in node.all_input_nodes:
        if not isinstance(a.meta.get(META), Tensor) or not a.meta[META].is_floating_point():
            continue
        known = constant(a)
        if known is not None:
            if not bool(known.to(dtype).isfinite().all()):
                return False
        elif unchanged_by_masks(a, modules) and any(n.op == "get_attr" for n in upstream(a)):  # a buffer's values
            return False
    return True


def _filled_alike(node: fx.Node, call: Call, axis: int, value: Tensor) -> bool:
    """A fill (``masked_fill``, ``where``) whose condition is one for every channel along
    ``axis`` and whose result goes straight into a softmax over another axis (nanoGPT's
    ``att.masked_fill(causal == 0, -inf)``): the ``-inf`` lands on a removed head where it lands
    on live ones, and the softmax makes it 0 for both. Anything else may meet a zeroed weight
    first (``0 * -inf``)."""
    if not _alike_condition(call, axis, value):
        return False
    target = call.args.get("input") if call.inplace else node  # ``att.masked_fill_(...)``: what reads ``att`` next
    readers = [u for u in target.users if u is not node] if isinstance(target, fx.Node) else []
    return bool(readers) and all(_softmax_over_other(u, axis % value.ndim) for u in readers)


def _alike_condition(call: Call, axis: int, value: Tensor) -> bool:
    """A fill whose condition is one for every channel along ``axis`` (size 1 there)."""
    condition = call.args.get(_CONDITIONS.get(call.op, ""))
    held = condition.meta.get(META) if isinstance(condition, fx.Node) else None
    return isinstance(held, Tensor) and not (0 <= (d := axis - value.ndim + held.ndim) and held.shape[d] > 1)


def _softmax_over_other(node: fx.Node, axis: int) -> bool:
    """A softmax along another axis than ``axis`` (through casts: ``att.float().softmax(-1)``)."""
    if node.op not in ("call_function", "call_method"):
        return False
    call = normalize(node)
    if call.op in COPIES_AND_CASTS:
        return bool(node.users) and all(_softmax_over_other(u, axis) for u in node.users)
    dim = call.args.get("dim")
    ndim = getattr(node.meta.get(META), "ndim", 0)
    return call.op in _SOFTMAXES and isinstance(dim, int) and ndim > 0 and dim % ndim != axis


_SOFTMAXES = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax}
_CONDITIONS = {torch.masked_fill: "mask", torch.where: "condition"}


def _finite_numbers(layer: nn.Module, dtype: torch.dtype) -> bool:
    """An activation layer finite for finite values whose numbers are finite in ``dtype``
    (``nn.ELU(alpha=1e6)`` is not in float16; ``nn.Softplus`` divides by its ``beta``)."""
    if isinstance(layer, (nn.Softplus, nn.CELU)):
        return False
    numbers = [v for v in vars(layer).values() if isinstance(v, float)]
    return all(math.isfinite(v) and abs(v) <= _range(dtype) for v in numbers)


def unchanged_by_masks(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """No input, layer or parameter upstream of ``node`` (``torch.arange``, a buffer, a
    literal): masking cannot change its value. Found for the whole graph at the first call."""
    if _UNCHANGED not in node.meta:
        for n in node.graph.nodes:  # inputs first
            if _UNCHANGED not in n.meta:
                n.meta[_UNCHANGED] = not _varies(n, modules) and all(a.meta[_UNCHANGED] for a in n.all_input_nodes)
    return node.meta[_UNCHANGED]


def _varies(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op in ("placeholder", "call_module"):
        return True
    owner, _, attr = str(n.target).rpartition(".")
    return n.op == "get_attr" and isinstance(getattr(modules.get(owner), attr, None), nn.Parameter)


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


def _masked_value(x: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module], *, as_made: bool = False) -> float | None:
    """``as_made``: the value ``x``'s op made, before any write into it (what its first
    in-place writer reads)."""
    if not as_made and written_in_place(x, modules):  # ``v = h.abs() + 1; v.sub_(1)``: not the value its op made
        return None
    if x.op in ("call_function", "call_method") and _alike_condition(normalize(x), axis, value):
        return None  # a causal fill: the fill value at some positions, the channel's own elsewhere
    computed = _computed(x, axis, value, modules)
    if computed is not None:
        return computed
    source = kept_source(x, axis) or _expanded_source(x, axis, value)  # ``h.flatten(2)``, ``s.expand_as(h)``
    if source is not None:
        return masked_value(*source, modules)
    parts = _reshaped_sources(x, axis, value)  # ``q.view(b, t, heads, head_dim)``: a masked head is its rows
    if parts:
        values = {masked_value(src, k, modules) for src, k in parts}
        return values.pop() if len(values) == 1 else None
    return 0.0 if zero_breaker(x, axis, modules) is None else None


def _expanded_source(x: fx.Node, axis: int, value: Tensor) -> tuple[fx.Node, int] | None:
    """``s.expand_as(h)``, ``s.expand(-1, -1, 6, 6)``: the input and axis whose values ``x``'s
    masked channel repeats (right-aligned), where that axis is as long as ``axis``."""
    if x.op not in ("call_function", "call_method") or normalize(x).op not in _EXPANDS:
        return None
    src = normalize(x).args.get("input")
    before = src.meta.get(META) if isinstance(src, fx.Node) else None
    k = axis - value.ndim + before.ndim if isinstance(before, Tensor) else -1
    return (src, k) if k >= 0 and before.shape[k] == value.shape[axis] else None


def _reshaped_sources(x: fx.Node, axis: int, value: Tensor) -> list[tuple[fx.Node, int]]:
    """The input axis a reshape splits into output ``axis`` (``(B, T, H * D) -> (B, T, H, D)``),
    or the input axes it merges into it; a masked channel of ``axis`` is made of masked channels
    of each. Empty for any other op, or where the axes do not nest so."""
    if x.op not in ("call_function", "call_method") or normalize(x).op not in _RESHAPES:
        return []
    src = normalize(x).args.get("input")
    before = src.meta.get(META) if isinstance(src, fx.Node) else None
    if not isinstance(before, Tensor) or before.numel() != value.numel():
        return []
    lo = math.prod(value.shape[:axis])
    hi = lo * value.shape[axis]
    prefix = [math.prod(before.shape[:k]) for k in range(before.ndim + 1)]
    spans = [(k, prefix[k], prefix[k + 1]) for k in range(before.ndim) if before.shape[k] > 1]
    split = [k for k, a, b in spans if a <= lo and hi <= b and lo % a == 0 and b % hi == 0]
    if split:
        return [(src, split[0])]
    merged = [k for k, a, b in spans if lo <= a and b <= hi]
    whole = merged and math.prod(before.shape[k] for k in merged) == value.shape[axis]
    return [(src, k) for k in merged] if whole and math.prod(before.shape[: merged[0]]) == lo else []


def _computed(x: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module]) -> float | None:
    """``x``'s op run on the masked channel's values of its operands."""
    if x.op == "call_module":  # an activation layer: the same as its function
        layer = modules.get(str(x.target))
        src = x.args[0] if x.args else None
        if not isinstance(layer, _ELEMENTWISE_MODULES) or not isinstance(src, fx.Node) or len(x.all_input_nodes) != 1:
            return None
        slices = _slices(x, {src: (axis, set(range(value.ndim)))}, modules)
        return None if slices is None else _one_value(run_op(x, slices, layer))
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
        return _one_value(run_op(x, slices)) if set(slices) == set(x.all_input_nodes) else None
    if call.op in POINTWISE_FUNCTIONS or call.op in CASTS:
        tensors = [n for n in x.all_input_nodes if isinstance(n.meta.get(META), Tensor)]
        slices = _slices(x, {n: (axis - value.ndim + n.meta[META].ndim, set(range(n.meta[META].ndim))) for n in tensors}, modules)
        return None if slices is None else _one_value(run_op(x, slices))
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
    return None if slices is None else run_op(x, slices)


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
            known = constant(n)
            if known is None:
                return None
            slices[n] = known
            continue
        if _first_writer(n, modules) is x:  # ``d.reciprocal_()``, ``d *= d``: d as it was made
            v = _masked_value(n, axis % value.ndim, value, modules, as_made=True)
        else:
            v = masked_value(n, axis, modules)
        shape = [1 if d in single else value.shape[d] for d in range(value.ndim)]
        if v is None or math.prod(shape) > ELEMENTS:
            return None
        slices[n] = torch.full(shape, v, dtype=value.dtype)
    return slices


def power(call: Call) -> float | None:
    """The exponent of ``x ** p`` with a number ``p``."""
    if call.op not in (torch.pow, operator.pow, operator.ipow):
        return None
    p = call.args.get("exponent", call.args.get("other"))
    return float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else None


def _tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get(META), Tensor)


def _range(dtype: torch.dtype) -> float:
    """The largest value ``dtype`` holds."""
    if dtype.is_floating_point or dtype.is_complex:
        return torch.finfo(dtype).max
    return 1.0 if dtype is torch.bool else float(torch.iinfo(dtype).max)


def _first_writer(n: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The op that writes into ``n`` in place, where it is the one op that does and nothing
    else shares ``n``'s storage (no view that a write could reach first)."""
    if not written_in_place(n, modules):
        return None
    writers = [u for u in n.users if u.op in ("call_function", "call_method") and u.args[:1] == (n,) and normalize(u).inplace]
    key = storage_key(n.meta[META])
    shared = [u for u in n.users if u not in writers and isinstance(v := u.meta.get(META), Tensor) and storage_key(v) == key]
    return writers[0] if len(writers) == 1 and not shared else None


def _one_value(out: Any) -> float | None:
    """The one value a floating-point or boolean ``out`` holds everywhere (NaN where any entry is
    not finite), else None."""
    if isinstance(out, Tensor) and out.dtype is torch.bool and not out.is_meta and out.numel():  # ``h == 0``
        return float(out.reshape(-1)[0]) if bool((out == out.reshape(-1)[0]).all()) else None
    if not isinstance(out, Tensor) or out.is_meta or not out.numel() or not (out.is_floating_point() or out.is_complex()):
        return None
    if not bool(out.isfinite().all()):  # inf at one position (``exp(pos - 1000 * m)``) is inf there
        return math.nan
    if out.is_complex():  # finite, but no one real value
        return None
    first = out.reshape(-1)[0]
    return float(first) if bool((out == first).all()) else None


def _dims(dim: object, ndim: int) -> list[int]:
    if dim is None or dim == () or dim == []:
        return list(range(ndim))
    return [d % ndim for d in (dim if isinstance(dim, (tuple, list)) else [dim]) if isinstance(d, int)]
