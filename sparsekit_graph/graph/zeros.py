"""Where zeroing a group's parameters makes a value zero: the condition for exact reductions.

A reduction over a channel axis (``sum``, a vector norm) is zero-invariant only if a removed
channel contributes exactly nothing: the reduced value must be zero wherever the group's
members are zero. ``zero_breaker(node, axis)`` walks the producers of a value and returns
the first node that breaks this (``sigmoid``, an added constant, an unknown op), or None.
The walk is conservative: anything it does not know breaks zeros.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .kept_zeros import PRODUCT, finite_buffer, number_scaled, pad_layer_beside, pads_beside, write_keeps_zeros
from .literal_values import run_op
from .meta import META
from .normalize import Call, normalize
from .param_reads import storage_key
from .pointwise_ops import POINTWISE_FUNCTIONS

__all__ = ["aliased_input", "kept_source", "reduced_source", "written_in_place", "zero_breaker"]

# f(0) == 0 elementwise, one tensor operand.
_ZERO_UNARY = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, F.selu, F.celu, F.mish,
    F.hardtanh, torch.tanh, torch.neg, torch.abs, torch.sin, torch.sqrt, torch.square, torch.erf, torch.sign,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clone, torch.Tensor.contiguous,
    F.feature_alpha_dropout, torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout,
    torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.double,
    torch.Tensor.type_as, torch.Tensor.detach, torch.Tensor.data, operator.neg, operator.pos, operator.abs, torch.tanh,
    torch.detach, F.relu_, F.leaky_relu_, F.elu_, F.rrelu, F.rrelu_, F.normalize,
}  # fmt: skip
_ZERO_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh,
    nn.Hardtanh, nn.Tanhshrink, nn.Softsign, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,  # a channel of zeros pools to zeros, in place
)  # fmt: skip
# Over spatial axes (the channel axis in place): a channel of zeros pools to zeros.
_POOLS = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.lp_pool1d, F.lp_pool2d,
}  # fmt: skip
# Of zeros, zero: over other axes than the channel's, a channel of zeros reduces to zeros.
_REDUCTIONS = {torch.sum, torch.mean, torch.nansum, torch.nanmean, torch.amax, torch.amin, torch.std, torch.var}
# Outputs whose channels are made by parameters that the group zeroes (rows and bias).
_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
_ADDITIVE = {torch.add, torch.sub, operator.add, operator.sub, operator.iadd, operator.isub}
_PERMUTES = {torch.permute, torch.transpose, torch.t, torch.Tensor.T, torch.Tensor.mT, torch.movedim, torch.moveaxis}


def zero_breaker(node: fx.Node, axis: int, modules: dict[str, nn.Module], depth: int = 0) -> str | None:
    """None if ``node``'s entries along ``axis`` are zero where the channel's members are; else
    the name of the first node on the way that breaks it. Kept on the node: a chain of
    residual blocks is walked once."""
    if depth > 64:
        return _Deep(node.name)
    value = node.meta.get(META)
    if not isinstance(value, Tensor):
        return None  # a Python scalar: multiplies or divides, handled by the caller
    known = node.meta.setdefault(_ZEROS, {})
    key = axis % max(value.ndim, 1)
    if key not in known:
        breaker = _zero_breaker(node, axis, value, modules, depth)
        if isinstance(breaker, _Deep):
            return breaker  # the walk stopped short: asked again from nearer, it may prove more
        known[key] = breaker
    return known[key]


_ZEROS = "skg.zeros"  # node.meta: axis -> its breaker (None: proved zero), kept: each node is walked once


class _Deep(str):
    """The breaker named where the walk went too deep (not kept: not the node's own answer)."""


def _zero_breaker(node: fx.Node, axis: int, value: Tensor, modules: dict[str, nn.Module], depth: int) -> str | None:
    if node.op == "get_attr":  # a parameter on this axis is a member, zeroed with it; a buffer is not
        owner, _, attr = str(node.target).rpartition(".")
        return None if isinstance(getattr(modules.get(owner), attr, None), nn.Parameter) else node.name
    changed = _changed_in_place(node, modules, axis, depth)  # ``y = self.conv(x); y.add_(0.5)``
    if changed is not None:
        return changed
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, _PRODUCERS):
            channel = value.ndim - 1 if isinstance(m, nn.Linear) else min(1, value.ndim - 1)
            if axis % value.ndim == channel and not (isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.affine):
                return None
            return node.name
        if _keeps_zeros(m) or pad_layer_beside(m, axis, value.ndim):
            return _walk(node.args[0], axis, modules, depth)
        before = node.args[0].meta.get(META) if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, (nn.Flatten, nn.Unflatten)) and isinstance(before, Tensor):
            return _walk(node.args[0], _kept_axis(before, value, axis), modules, depth)
        return node.name
    if node.op not in ("call_function", "call_method"):
        return node.name
    call = normalize(node)
    src = call.args.get("input")
    if call.op is F.hardtanh and not call.args.get("min_val", -1.0) <= 0 <= call.args.get("max_val", 1.0):
        return node.name
    if call.op in _ZERO_UNARY:
        return _walk(src, axis, modules, depth)
    if call.op in (torch.pow, operator.pow, operator.ipow):  # x ** p with p > 0 keeps zeros
        p = call.args.get("exponent", call.args.get("other"))
        return _walk(src, axis, modules, depth) if isinstance(p, (int, float)) and p > 0 else node.name
    if call.op in _SHAPED:
        return _walk(src, _shaped_source(call, axis, value, src), modules, depth)
    if call.op in (F.pad, torch.constant_pad_nd) and pads_beside(call, axis, value.ndim):
        return _walk(src, axis, modules, depth)  # ``F.pad(h, (1, 1, 1, 1))``: zeros, or copies of the channel's own
    if call.op in _POOLS and not isinstance(call.args.get("return_indices"), fx.Node):
        return _walk(src, axis % value.ndim, modules, depth)
    if call.op in _REDUCTIONS:
        return _walk(src, reduced_source(call, axis, value, src), modules, depth)
    if call.op in _CONVS:  # output channels made by a weight the group zeroes, plus its bias
        bias = call.args.get("bias")
        exact = axis % value.ndim == 1 and _is_parameter(call.args.get("weight"), modules)
        return None if exact and (bias is None or _is_parameter(bias, modules)) else node.name
    if call.op in _PRODUCED:  # rows made by a weight the group zeroes, plus its bias
        weight = call.args.get("weight", call.args.get("other", call.args.get("mat2")))
        bias = call.args.get("input") if call.op is torch.addmm else call.args.get("bias")
        last = axis % value.ndim == value.ndim - 1
        exact = last and _is_parameter(weight, modules) and (bias is None or _is_parameter(bias, modules))
        return None if exact else node.name
    if call.op is F.batch_norm:  # zeroed weight and bias give zero, whatever the statistics
        affine = all(_is_parameter(call.args.get(k), modules) for k in ("weight", "bias"))
        return None if affine and axis % value.ndim == 1 else node.name
    if call.op in _PERMUTES:
        return _walk(src, _permuted_source(call, axis, value.ndim), modules, depth)
    if call.op in _ADDITIVE or call.op in PRODUCT:
        operands = [call.args.get("input"), call.args.get("other")]
        reasons = [_operand(x, axis, value, modules, depth) for x in operands]
        if call.op in PRODUCT and call.op not in (torch.div, operator.truediv, operator.itruediv):
            return None if None in reasons else reasons[0]
        if call.op in PRODUCT:  # a / b: zero where a is
            return reasons[0]
        return next((r for r in reasons if r is not None), None)
    if _zero_at_zero(node, call):  # ``torch.sgn``, ``deg2rad``, ``fmod(h, 3)``, ``h.trunc_()``
        return _walk(src, axis, modules, depth)
    return node.name


def _zero_at_zero(node: fx.Node, call: Call) -> bool:
    """An elementwise op of one tensor (its input; numbers besides) that gives exactly 0 at 0
    and at -0, run on them in the input's dtype."""
    src = call.args.get("input")
    before = src.meta.get(META) if isinstance(src, fx.Node) else None
    if call.op not in POINTWISE_FUNCTIONS or not isinstance(before, Tensor):
        return False
    if any(isinstance(n.meta.get(META), Tensor) for n in node.all_input_nodes if n is not src):
        return False
    for zero in (0.0, -0.0):  # a removed channel may hold either (``-h``): ``signbit(-0.0)`` is 1
        held = {n: n.meta.get(META) for n in node.all_input_nodes} | {src: torch.full((), zero, dtype=before.dtype)}
        out = run_op(node, held)
        if not (isinstance(out, Tensor) and out.numel() == 1 and bool(out == 0)):
            return False
    return True


_PRODUCED = {F.linear, torch.matmul, operator.matmul, torch.mm, torch.bmm, torch.addmm}
_CONVS = {F.conv1d, F.conv2d, F.conv3d, torch.convolution}  # aten.convolution: transposed too (axis 1 either way)
_SHAPED = {
    torch.unsqueeze, torch.squeeze, operator.getitem, torch.flatten, torch.unflatten, torch.reshape, torch.Tensor.view,
    torch.Tensor.view_as, torch.Tensor.reshape_as,
}  # fmt: skip


def _is_parameter(x: object, modules: dict[str, nn.Module]) -> bool:
    """A parameter, possibly through views or a scaling (``w.T``, ``w * self.scale``): masking zeroes it."""
    while isinstance(x, fx.Node) and x.op in ("call_function", "call_method"):
        call = normalize(x)
        if call.op in _PERMUTES or call.op in _ZERO_UNARY:
            x = call.args.get("input")
        elif (x := number_scaled(call, lambda t: finite_buffer(t, modules))) is None:
            return False
    if not isinstance(x, fx.Node) or x.op != "get_attr":
        return False
    owner, _, attr = str(x.target).rpartition(".")
    return isinstance(getattr(modules.get(owner), attr, None), nn.Parameter)


def _shaped_source(call: object, axis: int, out: Tensor, src: object) -> int | None:
    """The input axis that output ``axis`` of a reshape (``view``, ``flatten``, ``squeeze``, a
    getitem that keeps every element: ``h[..., None, None]``, ``h[:, :, 0, 0]`` of (B, C, 1, 1))
    comes from, where it keeps it whole."""
    before = src.meta.get(META) if isinstance(src, fx.Node) else None
    if not isinstance(before, Tensor):
        return None
    if call.op is operator.getitem:  # type: ignore[attr-defined]
        index = call.args.get("index")  # type: ignore[attr-defined]
        items = index if isinstance(index, tuple) else (index,)
        plain = all(i == slice(None) or i is Ellipsis or i is None or type(i) is int for i in items)
        if not plain or out.numel() != before.numel():  # a selection, not a reshape (``[:, :, 0, 0]`` of (B, C, 1, 1) is)
            return None
    return _kept_axis(before, out, axis)


def _kept_axis(before: Tensor, out: Tensor, axis: int) -> int | None:
    """The axis of ``before`` that axis ``axis`` of ``out``, the same elements in the same order,
    is: as long, after as many elements (``flatten(2)`` keeps the channels of ``(B, C, H, W)``)."""
    axis %= out.ndim
    if out.shape[axis] == 1:
        return None
    prefix = math.prod(out.shape[:axis])
    return next(
        (d for d in range(before.ndim) if before.shape[d] == out.shape[axis] and math.prod(before.shape[:d]) == prefix), None
    )


def reduced_source(call: Call, axis: int, out: Tensor, src: object) -> int | None:
    """The input axis that output ``axis`` of a reduction over other axes comes from (None:
    reduced itself, or all axes)."""
    before = src.meta.get(META) if isinstance(src, fx.Node) else None
    dims = call.args.get("dim")
    if not isinstance(before, Tensor) or dims is None or before.ndim == 0:
        return None
    reduced = {d % before.ndim for d in ((dims,) if isinstance(dims, int) else dims)}
    kept = [d for d in range(before.ndim) if d not in reduced or before.ndim == out.ndim]  # keepdim: every axis stays
    source = kept[axis % out.ndim] if len(kept) == out.ndim else None
    return None if source in reduced else source


_COPIES = {torch.clone, torch.Tensor.contiguous, torch.Tensor.detach, torch.detach}


def kept_source(node: fx.Node, axis: int) -> tuple[fx.Node, int] | None:
    """The input, and its axis, whose entries ``node``'s entries along ``axis`` are unchanged
    (a reshape, a permute, a copy); None for any other op."""
    value = node.meta.get(META)
    if node.op not in ("call_function", "call_method") or not isinstance(value, Tensor) or not value.ndim:
        return None
    call = normalize(node)
    src = call.args.get("input")
    if call.op in _SHAPED:
        k = _shaped_source(call, axis, value, src)
    elif call.op in _PERMUTES:
        k = _permuted_source(call, axis, value.ndim)
    elif call.op in _COPIES:
        k = axis % value.ndim
    else:
        return None
    return (src, k) if k is not None and isinstance(src, fx.Node) else None


def _operand(x: object, axis: int, out: Tensor, modules: dict[str, nn.Module], depth: int) -> str | None:
    if not isinstance(x, fx.Node) or not isinstance(x.meta.get(META), Tensor):
        return "a constant" if x not in (0, 0.0) else None
    v = x.meta[META]
    k = axis % out.ndim - (out.ndim - v.ndim)  # right-aligned broadcasting
    if k < 0 or v.shape[k] != out.shape[axis % out.ndim]:
        return x.name  # broadcast along the axis: the same value lands on every channel
    return zero_breaker(x, k, modules, depth + 1)


def _walk(x: object, axis: int | None, modules: dict[str, nn.Module], depth: int) -> str | None:
    if axis is None or not isinstance(x, fx.Node):
        return "an unknown operand"
    return zero_breaker(x, axis, modules, depth + 1)


def _permuted_source(call: object, axis: int, ndim: int) -> int | None:
    op, args = call.op, call.args  # type: ignore[attr-defined]
    axis %= ndim
    if op is torch.permute:
        dims = args.get("dims")
        return dims[axis] % ndim if isinstance(dims, (tuple, list)) and len(dims) == ndim else None
    if op is torch.Tensor.T:
        return ndim - 1 - axis
    if op in (torch.movedim, torch.moveaxis):
        src, dst = args.get("source"), args.get("destination")
        src, dst = ([src], [dst]) if isinstance(src, int) else (list(src or ()), list(dst or ()))
        if not all(isinstance(d, int) for d in src + dst):
            return None
        src, dst = [d % ndim for d in src], [d % ndim for d in dst]
        rest = iter(d for d in range(ndim) if d not in src)
        return [src[dst.index(i)] if i in dst else next(rest) for i in range(ndim)][axis]
    if op in (torch.transpose, torch.t, torch.Tensor.mT):
        a, b = (args.get("dim0"), args.get("dim1")) if op is torch.transpose else (ndim - 2, ndim - 1)
        if ndim < 2 or not isinstance(a, int) or not isinstance(b, int):
            return axis
        a, b = a % ndim, b % ndim
        return b if axis == a else a if axis == b else axis
    return None


# Ops whose result shares storage with their input: writing into the result changes the input.
_VIEWS = {
    torch.permute, torch.transpose, torch.t, torch.Tensor.T, torch.Tensor.mT, torch.Tensor.data, torch.Tensor.detach,
    torch.detach, torch.Tensor.view, torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.Tensor.expand,
    torch.Tensor.expand_as, torch.Tensor.contiguous, torch.Tensor.to, operator.getitem, torch.chunk, torch.split,
    torch.unflatten, torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.type_as, torch.narrow, torch.select,
    torch.ops.aten.slice, torch.movedim, torch.moveaxis, torch.unbind, torch.diagonal, torch.as_strided,
    torch.Tensor.unfold, torch.tensor_split, torch.split_with_sizes, torch.unsafe_split, torch.unsafe_chunk,
}  # fmt: skip
# Layers that return their input, or a view of it (an eval dropout returns it as it is).
_PASSED_ON = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)


def _keeps_zeros(m: nn.Module | None) -> bool:
    """An activation layer with ``f(0) == 0``."""
    if isinstance(m, nn.Hardtanh):  # ReLU6 included
        return m.min_val <= 0 <= m.max_val
    return isinstance(m, _ZERO_MODULES)


def written_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """May any op write into ``node``'s storage (see ``_changed_in_place``)? Asked once a node."""
    if _WRITTEN not in node.meta:
        node.meta[_WRITTEN] = _changed_in_place(node, modules, 0, 0, any_write=True) is not None
    return node.meta[_WRITTEN]


_WRITTEN = "skg.written"  # node.meta: whether any op writes into its storage


def _changed_in_place(
    node: fx.Node, modules: dict[str, nn.Module], axis: int, depth: int, *, any_write: bool = False
) -> str | None:
    """The first node that may write into ``node``'s storage with something that breaks zeros
    (directly, or through what shares it: a view, ``detach()``, an identity layer, an earlier
    in-place result; a layer or function with ``inplace=True``), or None. Adding in place a
    value that is itself zero on ``axis`` where the channel is (``h.add_(g)``) keeps them,
    unless ``any_write``."""
    key = _storage(node)
    todo, seen = [node], {node}
    while todo:
        n = todo.pop()
        for u in n.users:
            if u in seen or not u.args or (u.op == "call_module" and u.args[0] is not n):
                continue
            if u.op == "call_module":
                m = modules.get(str(u.target))
                written = bool(getattr(m, "inplace", False))
                if written and (any_write or not _keeps_zeros(m)):
                    return u.name
                written = written or isinstance(m, _PASSED_ON)
            elif u.op in ("call_function", "call_method"):
                call = normalize(u)
                if call.args.get("input") is not n and u.args[0] is not n:  # ``torch.as_tensor(data=h)``
                    continue
                written = call.inplace or call.args.get("inplace") is True  # ``g += t``: ``operator.iadd``
                if written and (any_write or not _write_keeps(u, call, node, n, axis, modules, depth)):
                    return u.name
                written = written or call.op in _VIEWS
            else:
                continue
            if written or (key is not None and _storage(u) == key):  # what it returns is ``node``'s storage
                seen.add(u)
                todo.append(u)
    return None


def aliased_input(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The input whose storage ``node``'s value shares: of a view, an in-place op, or a layer
    that returns its input (None for anything else)."""
    if node.op == "call_module":
        first = node.args[0] if node.args else None
        return first if isinstance(modules.get(str(node.target)), _PASSED_ON) and isinstance(first, fx.Node) else None
    if node.op not in ("call_function", "call_method"):
        return None
    call = normalize(node)
    src = call.args.get("input")
    return src if isinstance(src, fx.Node) and (call.inplace or call.op in _VIEWS) else None


def _write_keeps(
    user: fx.Node, call: Call, node: fx.Node, n: fx.Node, axis: int, modules: dict[str, nn.Module], depth: int
) -> bool:
    """Does the in-place ``call`` on ``n`` (``node`` or what shares its storage) keep zeros?"""
    if n is node and call.op in _ADDITIVE and _operand(call.args.get("other"), axis, node.meta[META], modules, depth) is None:
        return True
    return (
        write_keeps_zeros(call)
        or call.op in PRODUCT
        or (call.op in _ZERO_UNARY and call.op is not F.hardtanh)
        or _zero_at_zero(user, call)
    )


def _storage(n: fx.Node) -> int | None:
    if _STORAGE not in n.meta:
        value = n.meta.get(META)
        n.meta[_STORAGE] = storage_key(value) if isinstance(value, Tensor) else None
    return n.meta[_STORAGE]


_STORAGE = "skg.storage"  # node.meta: its meta value's storage, asked once
