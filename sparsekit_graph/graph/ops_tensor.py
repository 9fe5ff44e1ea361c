"""Rules for tensor functions and methods: pointwise, layout, concat/split, indexing, reductions.

Rules read arguments by torch's names (see ``normalize.py``), so each covers every spelling.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from .context import RuleContext
from .ops_gather import gather_by_index
from .normalize import normalize
from .ops_reshape import link_read_lengths, read_axis
from .rules import register_function_rule, register_method_rule
from .singular import singular_operands, stays_nonzero
from .zeros import zero_breaker

# -- pointwise -----------------------------------------------------------------------------

_POINTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg, operator.pos,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.pow, operator.abs, operator.mod,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.pow, torch.sigmoid, torch.tanh, torch.relu, torch.clamp, torch.where, torch.maximum, torch.minimum,
    torch.erf, torch.sin, torch.cos, torch.square, torch.reciprocal, torch.sign, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.masked_fill, torch.log1p, torch.expm1, torch.exp2, torch.floor, torch.ceil, torch.round,
    torch.trunc, torch.frac, torch.fmod, torch.remainder, torch.nan_to_num, torch.sinh, torch.cosh, torch.atan,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.celu, F.mish,
    F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.logsigmoid,
    F.softsign, F.relu_, F.threshold, F.tanhshrink, F.softshrink, F.hardshrink, F.rrelu, F.prelu, F.leaky_relu_,
    F.elu_, F.hardtanh_, F.rrelu_, torch.special.expit, torch.special.erf, torch.special.exp2, torch.special.expm1,
    torch.rsub, torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or,
    torch.logical_not, torch.logical_xor, torch.bitwise_and, torch.bitwise_or, torch.bitwise_not, torch.bitwise_xor,
    operator.and_, operator.or_, operator.xor, operator.invert, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, torch.isnan, torch.isinf, torch.isfinite,
]  # fmt: skip
_POINTWISE_METHODS = ["masked_fill", "fill_", "zero_", "bernoulli", "uniform_", "normal_", "float_power"]
_SAME_SHAPE_METHODS = [
    "contiguous", "clone", "detach", "to", "float", "half", "bfloat16", "double", "type", "type_as", "cpu",
    "cuda", "requires_grad_", "view_as_real_if_complex",
]  # fmt: skip


_SCALINGS = {torch.mul, torch.div, operator.mul, operator.truediv, operator.floordiv, operator.imul, operator.itruediv}


@register_function_rule(*_POINTWISE_FUNCTIONS, torch.Tensor.data)
@register_method_rule(*_POINTWISE_METHODS, *_SAME_SHAPE_METHODS)
def pointwise(ctx: RuleContext) -> None:
    """Broadcasting elementwise op: axes aligned from the right couple unless one has size 1.
    A whole number that multiplies or divides is noted: it may be a size used as a value."""
    ctx.read_all()
    out = ctx.outputs()
    if not out:
        return
    if ctx.call.op in _SCALINGS:
        for v in ctx.call.args.values():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 2 and float(v).is_integer():
                ctx.graph.numbers.append((int(v), ctx.node))
    operands = [ctx.axes(ctx.input)] if ctx.node.op == "call_module" else ctx.tensor_axes()
    for axes in operands:
        ctx.same(reversed(axes or []), reversed(out[0]))
    for x in singular_operands(ctx.call):  # h / g: a masked channel divides by zero
        for d, a in enumerate(ctx.axes(x) or []):
            if ctx.graph.size(a) > 1 and not stays_nonzero(x, d, ctx.modules):
                ctx.mix([a], f"divisor or logarithm that vanishes with its channel at {ctx.where()}")


@register_method_rule("expand", "expand_as", "broadcast_to")
@register_function_rule(torch.broadcast_to)
def expand(ctx: RuleContext) -> None:
    """Axes kept, or new ones broadcast from size 1: fresh when their size follows the model
    (``x.size(1)``, ``expand_as``), pinned when it is a literal of the call."""
    src, out = ctx.axes(ctx.input), ctx.out()
    other = ctx.axes(ctx.arg("other"))
    sizes = ctx.arg("size", ctx.arg("shape"))
    lead = len(out) - len(src or [])
    for j, o in enumerate(out):
        i = j - lead
        if src is not None and i >= 0 and ctx.graph.size(src[i]) == ctx.graph.size(o):
            ctx.same([src[i]], [o])
        elif other is not None:
            ctx.same([other[j]], [o])
        elif isinstance(sizes, (tuple, list)) and ctx.constant_size(o, sizes[j]):
            ctx.pin([o], f"expand to a constant size at {ctx.where()}")
        else:
            ctx.fresh([o])


@register_function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.softmin)
def softmax(ctx: RuleContext) -> None:
    """Identity on every axis; the softmax axis mixes its entries."""
    pointwise(ctx)
    dim = ctx.arg("dim")
    out = ctx.out()
    ctx.mix(out if dim is None else [out[dim]], f"softmax at {ctx.where()}")


# -- layout --------------------------------------------------------------------------------


def _linked_permutation(ctx: RuleContext, perm: Sequence[int]) -> None:
    """Output axis ``i`` is input axis ``perm[i]``."""
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None or sorted(p % len(src) for p in perm) != list(range(len(src))):
        ctx.pin_everything(f"unreadable permutation {list(perm)} at {ctx.where()}")
        return
    ctx.same([src[p % len(src)] for p in perm], out)


@register_function_rule(torch.permute)
def permute(ctx: RuleContext) -> None:
    _linked_permutation(ctx, list(ctx.arg("dims")))


@register_function_rule(torch.transpose, torch.t, torch.Tensor.mT, torch.Tensor.mH, torch.adjoint)
def transpose(ctx: RuleContext) -> None:
    nd = ctx.meta(ctx.input).ndim
    if ctx.call.op in (torch.t, torch.Tensor.mT, torch.Tensor.mH, torch.adjoint):
        a, b = (nd - 2, nd - 1) if nd >= 2 else (0, 0)
    else:
        a, b = ctx.arg("dim0"), ctx.arg("dim1")
    perm = list(range(nd))
    if nd:
        perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
    _linked_permutation(ctx, perm)


@register_function_rule(torch.movedim, torch.moveaxis)
def movedim(ctx: RuleContext) -> None:
    """``movedim(x, source, destination)``: the permutation it describes."""
    nd = ctx.meta(ctx.input).ndim
    src, dst = ctx.arg("source"), ctx.arg("destination")
    src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
    src, dst = [s % nd for s in src], [d % nd for d in dst]
    rest = iter(d for d in range(nd) if d not in src)
    perm = [src[dst.index(i)] if i in dst else next(rest) for i in range(nd)]
    _linked_permutation(ctx, perm)


@register_function_rule(torch.Tensor.T, torch.Tensor.H)
def reverse_axes(ctx: RuleContext) -> None:
    _linked_permutation(ctx, list(range(ctx.meta(ctx.input).ndim))[::-1])


@register_function_rule(torch.unsqueeze)
def unsqueeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    d = ctx.arg("dim") % len(out)
    ctx.same(src, out[:d] + out[d + 1 :])


@register_function_rule(torch.squeeze)
def squeeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    ctx.arg("dim")  # whichever dims are squeezed, they have size 1 and never couple
    ctx.same([a for a in src if ctx.graph.size(a) != 1], [a for a in out if ctx.graph.size(a) != 1])


# -- concat, pad and split -----------------------------------------------------------------


@register_function_rule(torch.cat, torch.hstack)
def cat(ctx: RuleContext) -> None:
    """Input ``k`` occupies ``[offset_k, offset_k + n_k)`` of the output's concat axis
    (``hstack``: axis 1, or 0 for 1-D tensors)."""
    out = ctx.out()
    default = (1 if len(out) > 1 else 0) if ctx.call.op is torch.hstack else 0
    dim = ctx.arg("dim", default) % len(out)
    offset = 0
    for axes in ctx.tensor_axes("tensors"):
        if len(axes) != len(out):  # legacy: empty 1-D tensors are skipped by torch.cat
            continue
        size = ctx.graph.size(axes[dim])
        ctx.same(axes[:dim] + axes[dim + 1 :], out[:dim] + out[dim + 1 :])
        if size:
            ctx.graph.link(axes[dim], out[dim], np.arange(size), offset + np.arange(size), kind="offset")
        offset += size


@register_function_rule(torch.stack)
def stack(ctx: RuleContext) -> None:
    out = ctx.out()
    dim = ctx.arg("dim", 0) % len(out)
    ctx.pin([out[dim]], f"stack axis at {ctx.where()}")
    for axes in ctx.tensor_axes("tensors"):
        ctx.same(axes, out[:dim] + out[dim + 1 :])


@register_function_rule(F.pad, torch.constant_pad_nd)
def pad(ctx: RuleContext) -> None:
    """Constant padding is a concat with constants: input index ``i`` lands at ``before + i``,
    the padded slots are pinned constants. Other modes copy data into the padding: pinned."""
    src, out = ctx.axes(ctx.input), ctx.out()
    amounts, mode = list(ctx.arg("pad")), ctx.arg("mode", "constant")
    ctx.arg("value")
    if src is None or len(amounts) % 2 or len(amounts) // 2 > len(src):
        ctx.pin_everything(f"padding by computed amounts at {ctx.where()}")
        return
    computed = [len(src) - 1 - k for k in range(len(amounts) // 2) if not all(isinstance(p, int) for p in amounts[2 * k : 2 * k + 2])]
    if computed:  # ``F.pad(x, (0, 0, 0, pad_r, 0, pad_b))``: only the axes padded by computed amounts pin
        ctx.pin([src[d] for d in computed] + [out[d] for d in computed], f"padding by computed amounts at {ctx.where()}")
        amounts = [p if isinstance(p, int) else 0 for p in amounts]
        link_padding(ctx, src, out, amounts, mode, skip=set(computed))
        return
    link_padding(ctx, src, out, amounts, mode)


def link_padding(
    ctx: RuleContext, src: list, out: list, amounts: Sequence[int], mode: str, skip: set[int] | frozenset[int] = frozenset()
) -> None:
    """``amounts`` as ``F.pad`` takes them (last axis first, before/after pairs); axes in
    ``skip`` are left alone (pinned by the caller)."""
    nd = len(src)
    padded = {nd - 1 - k: (amounts[2 * k], amounts[2 * k + 1]) for k in range(len(amounts) // 2)}
    for d in range(nd):
        if d in skip:
            continue
        before, after = padded.get(d, (0, 0))
        if (before, after) == (0, 0):
            ctx.same([src[d]], [out[d]])
        elif mode != "constant":
            ctx.pin([src[d], out[d]], f"{mode} padding at {ctx.where()}")
        else:
            _offset_link(ctx, src[d], out[d], before, d)


def _offset_link(ctx: RuleContext, src: int | tuple, out: tuple, before: int, d: int) -> None:
    """Input index ``i`` is output index ``before + i`` (negative ``before`` crops); the
    output slots that no input index fills are constants, pinned slot by slot."""
    n_in, n_out = ctx.graph.size(src), ctx.graph.size(out)  # type: ignore[arg-type]
    i = np.arange(n_in)
    o = i + before
    keep = (o >= 0) & (o < n_out)
    if keep.any():
        ctx.graph.link(src, out, i[keep], o[keep], kind="offset")  # type: ignore[arg-type]
    if not keep.all():
        ctx.pin([src], f"cropping at {ctx.where()}")  # type: ignore[list-item]
    filled = np.zeros(n_out, dtype=bool)
    filled[o[keep]] = True
    if not filled.all():
        const = ctx.graph.add_axis(("v", f"{ctx.prefix}{ctx.node.name}:constant", d), int((~filled).sum()))
        ctx.pin([const], f"constant padding at {ctx.where()}")
        ctx.graph.link(const, out, np.arange(int((~filled).sum())), np.flatnonzero(~filled), kind="offset")


@register_function_rule(torch.chunk, torch.split, torch.tensor_split, torch.split_with_sizes)
def split(ctx: RuleContext) -> None:
    """Output ``k`` is a slice of the input. ``chunk(n)``, ``tensor_split(x, n)``, ``split`` by a
    size attribute of the model or by ``x.size(dim) // n`` give equal parts after pruning too,
    so position ``p`` of every part is tied together; other literal split sizes pin the axis."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    parts = ctx.outputs()
    dim = ctx.arg("dim", 0) % len(src)
    how = ctx.arg("chunks") if ctx.call.op is torch.chunk else ctx.arg("split_size", ctx.arg("sections", ctx.arg("indices")))
    ctx.arg("tensor_indices_or_sections")
    for part in parts:
        ctx.same(src[:dim] + src[dim + 1 :], part[:dim] + part[dim + 1 :])
    sizes = [ctx.graph.size(p[dim]) for p in parts]
    counted = ctx.call.op is torch.chunk or (ctx.call.op is torch.tensor_split and "sections" in ctx.call.args)
    is_chunk = (
        (counted and isinstance(how, int))
        or _length_over(ctx, how, src[dim], len(parts))
        or (isinstance(how, int) and not isinstance(how, bool) and all(not ctx.constant_size(p[dim], how) for p in parts))
    )  # ``split(self.split_size)``: equal parts of a size the model sets
    if not is_chunk or len(set(sizes)) != 1 or sum(sizes) != ctx.graph.size(src[dim]):
        ctx.pin([src[dim]] + [p[dim] for p in parts], f"split with fixed sizes {how} at {ctx.where()}")
    offset = 0
    for part, size in zip(parts, sizes):
        ctx.graph.link(src[dim], part[dim], offset + np.arange(size), np.arange(size), kind="offset")
        if part is not parts[0] and is_chunk:
            ctx.graph.link(parts[0][dim], part[dim], kind="tie")
        offset += size


def _length_over(ctx: RuleContext, x: object, axis: object, parts: int) -> bool:
    """Is ``x`` the node ``t.size(d) // parts`` (or ``t.shape[d] // parts``) of this very axis?"""
    if not isinstance(x, fx.Node) or x.op not in ("call_function", "call_method"):
        return False
    call = normalize(x)
    if call.op is not operator.floordiv or call.args.get("other") != parts:
        return False
    return read_axis(ctx, call.args.get("input")) == axis


@register_function_rule(operator.getitem)
def getitem(ctx: RuleContext) -> None:
    """Elements of a tuple, or tensor indexing (full slices keep axes; anything else pins)."""
    src_node, index = ctx.input, ctx.arg("index")
    value = ctx.meta(src_node)
    if isinstance(value, (tuple, list)):
        if isinstance(index, int):
            element = ctx.element_axes(src_node, index % len(value))
            if element is not None:
                ctx.same(element, ctx.out())
        elif isinstance(index, slice):
            for k, i in enumerate(range(len(value))[index]):
                element = ctx.element_axes(src_node, i)
                if element is not None:
                    ctx.same(element, ctx.out(k))
        else:
            ctx.pin_everything(f"indexing a tuple at {ctx.where()}")
        return
    if isinstance(value, dict):  # forward(batch) / forward(**extra): an input of the model
        for axes in ctx.outputs():
            ctx.pin(axes, f"model input {ctx.where()}")
        return
    if not isinstance(value, Tensor) or not isinstance(ctx.out_value, Tensor):
        return
    if gather_by_index(ctx):  # table[index]: one integer index tensor
        return
    src, out = ctx.axes(src_node), ctx.out()
    assert src is not None
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, fx.Node) or (i is not None and not isinstance(i, (int, slice, type(Ellipsis)))) for i in items):
        ctx.pin(src + out, f"indexing at {ctx.where()}")
        return
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(src) - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * fill + items[k + 1 :]
    items += [slice(None)] * (len(src) - sum(1 for i in items if i is not None))
    si = oi = 0
    for it in items:
        if it is None:
            oi += 1
        elif isinstance(it, int):
            ctx.pin([src[si]], f"indexing at {ctx.where()}")
            si += 1
        else:
            if it == slice(None):
                ctx.same([src[si]], [out[oi]])
            else:  # which indices it takes (as split does), pinned: the bounds would not follow
                bounds = [ctx.meta(b) if isinstance(b, fx.Node) else b for b in (it.start, it.stop, it.step)]
                if all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds):
                    picked = np.arange(ctx.graph.size(src[si]))[slice(*bounds)]  # computed bounds: their values
                    if len(picked):
                        ctx.graph.link(src[si], out[oi], picked, np.arange(len(picked)), kind="offset")
                ctx.pin([src[si], out[oi]], f"slicing at {ctx.where()}")
            si += 1
            oi += 1


# -- reductions ----------------------------------------------------------------------------

_SUMS = {torch.sum, torch.nansum}
_NORMS = {torch.norm, torch.linalg.vector_norm, torch.linalg.norm, F.normalize}


@register_function_rule(
    torch.mean, torch.sum, torch.nansum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp, torch.prod,
    torch.max, torch.min, torch.norm, torch.linalg.vector_norm, torch.linalg.norm, torch.nanmean, torch.median,
    torch.argmax, torch.argmin, torch.all, torch.any, torch.count_nonzero,
)  # fmt: skip
def reduce(ctx: RuleContext) -> None:
    """Kept axes map to the output; reduced axes vanish.

    Only a sum, or a vector norm with ``p > 0``, of values that are zero where the channels'
    members are zero is zero-invariant over a channel axis: a mean, variance, max, product
    or logsumexp changes when a zero is added, and a sum of ``sigmoid(h)`` gets 0.5 per
    removed channel.
    """
    if ctx.arg("other") is not None:  # torch.max(a, b): elementwise
        pointwise(ctx)
        return
    src = ctx.axes(ctx.input)
    if src is None:
        return
    ctx.read_all()
    outs = ctx.outputs()
    nd = len(src)
    dim = ctx.arg("dim")
    if dim is None or dim == [] or dim == ():
        dims = set(range(nd))
    else:
        dims = {d % max(nd, 1) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    keep = bool(ctx.arg("keepdim", False))
    for d in dims:
        reason = _reduction_mix(ctx, d)
        if reason:
            ctx.mix([src[d]], reason)
    kept = [src[d] for d in range(nd) if d not in dims]
    for out in outs:
        ctx.same(kept, [out[d] for d in range(nd) if d not in dims] if keep else out)


def _reduction_mix(ctx: RuleContext, d: int) -> str | None:
    op = ctx.call.op
    label = getattr(op, "__name__", str(op))
    if op in _NORMS:
        p = ctx.arg("p", ctx.arg("ord", 2))
        if not (p is None or p == "fro" or (isinstance(p, (int, float)) and p > 0)):
            return f"{label} with p={p} over an axis at {ctx.where()}"
    elif op not in _SUMS:
        return f"{label} over an axis at {ctx.where()}"
    breaker = zero_breaker(ctx.input, d, ctx.modules)
    if breaker is not None:
        return f"{label} over an axis at {ctx.where()} of values not zero for removed channels (at {breaker})"
    return None


@register_function_rule(F.normalize)
def normalize_vectors(ctx: RuleContext) -> None:
    """``x / ||x||_p`` along ``dim``: zero-invariant there like the norm itself."""
    pointwise(ctx)
    d = ctx.arg("dim", 1) % ctx.meta(ctx.input).ndim
    reason = _reduction_mix(ctx, d)
    if reason:
        ctx.mix([ctx.out()[d]], reason)


# -- spatial ops ---------------------------------------------------------------------------

_SPATIAL_FUNCTIONS = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2, F.interpolate: -1,
    F.upsample: -1, F.upsample_nearest: -1, F.upsample_bilinear: -1, torch.max_pool1d: 1, torch.max_pool2d: 2,
    torch.max_pool3d: 3, torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1, torch.adaptive_max_pool1d: 1,
    # what F.interpolate calls when traced through (an nn.Upsample built inside forward)
    torch._C._nn.upsample_nearest1d: 1, torch._C._nn.upsample_nearest2d: 2, torch._C._nn.upsample_nearest3d: 3,
    torch._C._nn._upsample_nearest_exact1d: 1, torch._C._nn._upsample_nearest_exact2d: 2,
    torch._C._nn._upsample_nearest_exact3d: 3, torch._C._nn.upsample_linear1d: 1, torch._C._nn.upsample_bilinear2d: 2,
    torch._C._nn.upsample_trilinear3d: 3, torch._C._nn.upsample_bicubic2d: 2, torch._C._nn._upsample_bilinear2d_aa: 2,
    torch._C._nn._upsample_bicubic2d_aa: 2,
    # F.max_pool2d(..., return_indices=True) and kin: (values, positions), channels pass through
    F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3,
    F.adaptive_max_pool1d_with_indices: 1, F.adaptive_max_pool2d_with_indices: 2, F.adaptive_max_pool3d_with_indices: 3,
    F.fractional_max_pool2d: 2, F.fractional_max_pool3d: 3, F.fractional_max_pool2d_with_indices: 2,
    F.fractional_max_pool3d_with_indices: 3,
}  # fmt: skip


@register_function_rule(*_SPATIAL_FUNCTIONS)
def spatial_function(ctx: RuleContext) -> None:
    """Ops on the trailing (spatial) axes only: the leading axes pass through."""
    ctx.read_all()
    k = _SPATIAL_FUNCTIONS[ctx.call.op]
    spatial_axes(ctx, k if k > 0 else max(ctx.meta(ctx.input).ndim - 2, 0))


def spatial_axes(ctx: RuleContext, k: int) -> None:
    """Leading axes pass through; the ``k`` trailing (spatial) axes, in and out, are pinned."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    ctx.pin(src[len(src) - k :], f"spatial axis of {ctx.where()}")
    for out in ctx.outputs():
        ctx.same(src[: len(src) - k], out[: len(out) - k])
        ctx.pin(out[len(out) - k :], f"spatial axis of {ctx.where()}")


# -- sizes and fresh tensors ----------------------------------------------------------------

_SHAPE_ARGS = {"size", "shape", "split_size", "chunks", "sizes", "repeats", "normalized_shape", "output_size", "dims"}


@register_function_rule(torch.Tensor.size, torch.Tensor.shape, torch.numel)
@register_method_rule("numel")
def axis_lengths(ctx: RuleContext) -> None:
    """Reading an axis length is harmless where it only shapes tensors (``view(B, -1)``);
    a length used as a value (``h.sum(1) / h.size(1)``) changes when channels are removed."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    dim = ctx.arg("dim")
    nd = len(src)
    reads = [(n, axes) for n, axes in _length_uses(ctx.node, None if dim is None else [dim % max(nd, 1)], nd)]
    for user, axes in reads:
        ctx.mix([src[d] for d in axes], f"length of an axis used as a value at node {user.name}")


def _length_uses(node: fx.Node, axes: list[int] | None, nd: int) -> list[tuple[fx.Node, list[int]]]:
    """(tensor-valued node using a length as a value, which axes' lengths) pairs."""
    found: list[tuple[fx.Node, list[int]]] = []
    todo: list[tuple[fx.Node, list[int]]] = [(node, axes if axes is not None else list(range(nd)))]
    seen: set[fx.Node] = set()
    while todo:
        n, read = todo.pop()
        for user in n.users:
            if user in seen:
                continue
            seen.add(user)
            chosen = read
            if n is node and axes is None and user.target is operator.getitem:  # x.shape[1], x.size()[2:]
                index = user.args[1]
                chosen = [index % nd] if isinstance(index, int) else list(range(nd))[index] if isinstance(index, slice) else read
            value = user.meta.get("skg.value")
            tensors = isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)  # split's parts
            if user.op == "output":
                found.append((user, chosen))
            elif tensors and user.op != "call_module" and _only_shapes(user, n):
                continue
            elif not isinstance(value, Tensor):
                todo.append((user, chosen))
            elif user.op == "call_module" or not _only_shapes(user, n):
                found.append((user, chosen))
    return found


def _only_shapes(user: fx.Node, length: fx.Node) -> bool:

    call = normalize(user)
    uses = [k for k, v in call.args.items() if _contains(v, length)]
    return call.bound and all(k in _SHAPE_ARGS for k in uses)


def _contains(v: object, node: fx.Node) -> bool:
    if v is node:
        return True
    if isinstance(v, (tuple, list)):
        return any(_contains(e, node) for e in v)
    if isinstance(v, dict):
        return any(_contains(e, node) for e in v.values())
    return False


@register_function_rule(
    builtins.getattr, torch.Tensor.dim, torch.Tensor.ndim, torch.Tensor.dtype, torch.Tensor.device, torch.arange,
    torch.tensor, torch.linspace,
)  # fmt: skip
@register_method_rule("new_tensor")
def fresh_tensor(ctx: RuleContext) -> None:
    """Ops whose result carries no channel of its inputs (shapes, fresh tensors): pinned."""
    ctx.read_all()
    for axes in ctx.outputs():
        ctx.pin(axes, f"fresh tensor from {ctx.where()}")


@register_function_rule(
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
    torch.randint_like,
)  # fmt: skip
def like(ctx: RuleContext) -> None:
    """``zeros_like(x)``: a tensor shaped like ``x`` whatever ``x``'s channels become."""
    ctx.read_all()
    ctx.same(ctx.axes(ctx.input) or [], ctx.out())


@register_function_rule(torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full)
@register_method_rule("new_zeros", "new_ones", "new_empty", "new_full")
def sized_tensor(ctx: RuleContext) -> None:
    """``torch.zeros(x.shape)`` / ``x.new_zeros(b, x.size(1))``: an axis whose length is read off
    another tensor's axis follows it; an axis whose literal length is a size attribute follows
    the model (T5's ``torch.zeros((1, self.n_heads, q, k))`` position bias of cross-attention);
    any other literal length is pinned."""
    ctx.read_all()
    out = ctx.out()
    sizes = ctx.call.args.get("size")
    link_read_lengths(ctx, sizes, out)
    if isinstance(sizes, (tuple, list)) and len(sizes) == len(out):
        ctx.fresh(o for o, n in zip(out, sizes) if not ctx.graph.g.degree(o) and ctx.size_follows_model(o, n))
    ctx.pin([o for o in out if not ctx.graph.g.degree(o) and o not in ctx.fresh_axes], f"fresh tensor from {ctx.where()}")


# -- products ------------------------------------------------------------------------------

_WEIGHT_VIEWS = {torch.Tensor.T, torch.Tensor.mT, torch.t, torch.transpose, torch.permute, torch.Tensor.data,
                 torch.Tensor.detach, torch.detach, torch.Tensor.contiguous, torch.Tensor.to,
                 torch.Tensor.index, torch.Tensor.expand, torch.Tensor.expand_as,
                 torch.broadcast_to}  # fmt: skip  (index: stacked experts gathered per token)


def is_weight(ctx: RuleContext, x: object) -> bool:
    """A parameter, or a view of one (``w.T``): its axes are members, zeroed with the group."""

    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            return bool(ctx.aliases and x.name in ctx.aliases)
        if x.op not in ("call_function", "call_method") or normalize(x).op not in _WEIGHT_VIEWS:
            return False
        x = normalize(x).args.get("input")
    return False


def zeroed_by_masks(ctx: RuleContext, x: object) -> bool:
    """A parameter, or a view of one: masking a channel zeroes it. Masks leave buffers alone,
    so ``sigmoid(h) @ self.buffer`` still adds ``0.5 * buffer`` for a masked channel."""
    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            name = (ctx.aliases or {}).get(x.name)
            owner, _, attr = (name or "").rpartition(".")
            return name is not None and isinstance(getattr(ctx.modules.get(owner), attr, None), torch.nn.Parameter)
        if x.op not in ("call_function", "call_method") or normalize(x).op not in _WEIGHT_VIEWS:
            return False
        x = normalize(x).args.get("input")
    return False


def link_matmul(ctx: RuleContext, a_node: object, b_node: object, out: list) -> None:
    """``a @ b`` with torch.matmul's broadcasting: rows of ``a`` and columns of ``b`` pass to the
    output (produced there when the operand is a weight), the contracted axes are linked. A
    contraction of two activations is zero-invariant only if one of them keeps zeros."""
    a, b = ctx.axes(a_node), ctx.axes(b_node)
    if a is None or b is None:
        ctx.pin_everything(f"product with a non-tensor at {ctx.where()}")
        return
    va, vb = (a if len(a) > 1 else [None, a[0]]), (b if len(b) > 1 else [b[0], None])
    ka, kb = va[-1], vb[-2]
    ctx.graph.link(ka, kb)
    rows, cols = va[-2], vb[-1]
    tail = [x for x in (rows, cols) if x is not None]
    for axis, node in ((rows, a_node), (cols, b_node)):
        if axis is None:
            continue
        target = out[len(out) - len(tail) + tail.index(axis)]
        (ctx.produce if is_weight(ctx, node) else ctx.graph.link)(axis, target)
    batch_a, batch_b = va[:-2], vb[:-2]
    batch_out = out[: len(out) - len(tail)]
    ctx.same(reversed(batch_a), reversed(batch_out))
    ctx.same(reversed(batch_b), reversed(batch_out))
    if not (zeroed_by_masks(ctx, a_node) or zeroed_by_masks(ctx, b_node)):
        da, db = ctx.meta(a_node).ndim - 1, max(ctx.meta(b_node).ndim - 2, 0)
        breaks = [zero_breaker(a_node, da, ctx.modules), zero_breaker(b_node, db, ctx.modules)]  # type: ignore[arg-type]
        if None not in breaks:
            ctx.mix([ka], f"product of two activations at {ctx.where()} (neither zero for removed channels)")


@register_function_rule(torch.matmul, torch.mm, torch.bmm, operator.matmul)
def matmul(ctx: RuleContext) -> None:
    link_matmul(ctx, ctx.input, ctx.arg("other", ctx.arg("mat2")), ctx.out())


@register_function_rule(torch.addmm, torch.baddbmm)
def addmm(ctx: RuleContext) -> None:
    """``beta * input + alpha * mat1 @ mat2`` (``baddbmm``: batched ``batch1 @ batch2``;
    ``input`` broadcasts like a bias)."""
    ctx.read_all()
    out = ctx.out()
    a, b = ("batch1", "batch2") if ctx.call.op is torch.baddbmm else ("mat1", "mat2")
    link_matmul(ctx, ctx.arg(a), ctx.arg(b), out)
    bias = ctx.axes(ctx.input)
    if bias is not None:
        ctx.same(reversed(bias), reversed(out))


@register_function_rule(operator.setitem)
def setitem(ctx: RuleContext) -> None:
    """``out[:, a:b] = y`` writes through a view: nothing it touches may be pruned."""
    ctx.pin_everything(f"slice assignment at {ctx.where()}")
