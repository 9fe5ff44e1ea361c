"""Rules for tensor functions and methods: pointwise, shape, concat/split and reductions."""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from .rules import RuleContext, register_function_rule, register_method_rule

# -- pointwise -----------------------------------------------------------------------------

_POINTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg, operator.pos,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.pow, operator.abs,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide, torch.true_divide,
    torch.neg, torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.pow, torch.sigmoid, torch.tanh,
    torch.relu, torch.clamp, torch.clip, torch.where, torch.maximum, torch.minimum, torch.erf, torch.sin,
    torch.cos, torch.square, torch.reciprocal, torch.sign, torch.lerp, torch.addcmul, torch.addcdiv,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.logsigmoid, F.softsign, F.relu_, F.threshold,
]  # fmt: skip
_POINTWISE_METHODS = [
    "add", "sub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow", "sigmoid", "tanh", "relu",
    "clamp", "clip", "square", "reciprocal", "sign", "add_", "sub_", "mul_", "div_", "relu_", "clamp_",
    "sigmoid_", "tanh_", "masked_fill", "masked_fill_", "where", "maximum", "minimum", "lerp", "addcmul",
    "exp_", "pow_", "sqrt_", "neg_", "abs_",
]  # fmt: skip
_UNARY_METHODS = [
    "contiguous", "clone", "detach", "to", "float", "half", "bfloat16", "double", "type", "type_as", "cpu",
    "cuda", "requires_grad_", "bernoulli_", "fill_", "zero_", "uniform_", "normal_", "bernoulli", "float_",
]  # fmt: skip


@register_function_rule(*_POINTWISE_FUNCTIONS)
@register_method_rule(*_POINTWISE_METHODS)
def pointwise(ctx: RuleContext) -> None:
    """Broadcasting elementwise op: axes aligned from the right couple unless one has size 1."""
    out = ctx.outputs()
    if not out:
        return
    for n in ctx.tensor_args():
        ctx.same(reversed(ctx.axes(n) or []), reversed(out[0]))


@register_method_rule(*_UNARY_METHODS, "expand", "expand_as", "repeat")
@register_function_rule(torch.clone, torch.Tensor.contiguous)
def unary(ctx: RuleContext) -> None:
    """Output follows the first input axis for axis (right-aligned; other tensor args ignored)."""
    src = ctx.axes(ctx.arg(0))
    out = ctx.outputs()
    if src is not None and out:
        if ctx.node.target == "repeat":
            reps = ctx.node.args[1:]
            if any(not isinstance(r, int) or r != 1 for r in reps):
                ctx.pin(src + out[0], f"repeat at {ctx.where()}")
                return
        ctx.same(reversed(src), reversed(out[0]))


@register_function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
@register_method_rule("softmax", "log_softmax")
def softmax(ctx: RuleContext) -> None:
    """Identity on every axis; the softmax axis mixes its entries."""
    pointwise(ctx)
    dim = ctx.arg(1, "dim")
    out = ctx.out()
    if isinstance(dim, int):
        ctx.graph.mix(out[dim], f"softmax at {ctx.where()}")


# -- shapes --------------------------------------------------------------------------------


@register_function_rule(torch.permute)
@register_method_rule("permute")
def permute(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    dims = ctx.node.args[1:] if ctx.node.op == "call_method" else (ctx.arg(1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if src is None:
        return
    for i, d in enumerate(dims):
        ctx.same([src[d % len(src)]], [out[i]])


@register_function_rule(torch.transpose, torch.swapaxes)
@register_method_rule("transpose", "swapaxes", "t")
def transpose(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    if src is None:
        return
    nd = len(src)
    a, b = (ctx.arg(1, "dim0", 0), ctx.arg(2, "dim1", 1)) if nd > 1 else (0, 0)
    perm = list(range(nd))
    perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
    ctx.same([src[p] for p in perm], out)


@register_function_rule(torch.flatten)
@register_method_rule("flatten")
def flatten(ctx: RuleContext) -> None:
    x = ctx.meta(ctx.arg(0))
    nd = x.ndim
    start, end = ctx.arg(1, "start_dim", 0) % max(nd, 1), ctx.arg(2, "end_dim", -1) % max(nd, 1)
    out_shape = list(ctx.out_value.shape)
    reshape_axes(ctx, literal=[False] * len(out_shape), groups=[(list(range(start, end + 1)), [start])])


@register_function_rule(torch.reshape)
@register_method_rule("view", "reshape")
def view(ctx: RuleContext) -> None:
    """Reshape: axes are matched by equal products; the literal sizes in the call are pinned."""
    if ctx.node.target in ("view",) and len(ctx.node.args) == 2 and not _is_shape_arg(ctx.node.args[1]):
        ctx.pin_everything(f"view as dtype at {ctx.where()}")
        return
    raw = ctx.node.args[1:] if ctx.node.op == "call_method" else (ctx.arg(1, "shape"),)
    if len(raw) == 1 and isinstance(raw[0], (tuple, list, fx.Node)):
        raw = raw[0]
        if isinstance(raw, fx.Node):  # a whole torch.Size from .size(): every entry is dynamic
            raw = [None] * ctx.out_value.ndim
    literal = [isinstance(s, int) and s != -1 for s in raw]
    in_shape, out_shape = list(ctx.meta(ctx.arg(0)).shape), list(ctx.out_value.shape)
    reshape_axes(ctx, literal=literal, groups=_factor_groups(in_shape, out_shape))


def _is_shape_arg(x: object) -> bool:
    return isinstance(x, (int, tuple, list, fx.Node, torch.Size))


def _factor_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Split two shapes into runs of dims with equal products: ([dims of a], [dims of b])."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        ga, gb = ([i], a[i]) if i < len(a) else ([], 1), ([j], b[j]) if j < len(b) else ([], 1)
        (da, pa), (db, pb) = ga, gb
        i, j = i + len(da), j + len(db)
        while pa != pb and (i < len(a) or j < len(b)):
            if (pa < pb and i < len(a)) or j >= len(b):
                da.append(i)
                pa *= a[i]
                i += 1
            else:
                db.append(j)
                pb *= b[j]
                j += 1
        groups.append((da, db))
    return groups


def reshape_axes(ctx: RuleContext, literal: list[bool], groups: list[tuple[list[int], list[int]]]) -> None:
    """Couple input and output axes of a reshape, group by group.

    In each group the outermost non-unit input axis carries the channels into the outermost
    non-unit output axis whose size is not a literal of the call; the other axes of the
    group are pinned (they are head_dim, spatial or literal group counts). Output axes
    given as literal sizes are pinned: the call would not follow a pruned size.
    """
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    if src is None:
        return
    where = ctx.where()
    in_shape = [ctx.graph.size(a) for a in src]
    out_shape = [ctx.graph.size(a) for a in out]
    for j, lit in enumerate(literal):
        if lit and j < len(out):
            ctx.pin([out[j]], f"reshape with constant size at {where}")
    for ga, gb in groups:
        big_a = [d for d in ga if in_shape[d] > 1]
        big_b = [d for d in gb if out_shape[d] > 1]
        if not big_a or not big_b:
            continue
        carriers_b = [d for d in big_b if not (d < len(literal) and literal[d])]
        if not carriers_b:
            ctx.pin([src[d] for d in big_a], f"reshape with constant size at {where}")
            continue
        ca, cb = big_a[0], carriers_b[0]
        ctx.pin([src[d] for d in big_a if d != ca], f"reshape factor at {where}")
        ctx.pin([out[d] for d in big_b if d != cb], f"reshape factor at {where}")
        if len(big_a) == 1 and len(big_b) == 1:
            ctx.graph.link(src[ca], out[cb])
            continue
        ia, ib = _digit_pairs([in_shape[d] for d in ga], ga.index(ca), [out_shape[d] for d in gb], gb.index(cb))
        ctx.graph.link(src[ca], out[cb], ia, ib, kind="block")


def _digit_pairs(sa: list[int], ka: int, sb: list[int], kb: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (digit ka of flat index in sa, digit kb of the same index in sb) pairs."""
    n = math.prod(sa)
    flat = np.arange(n, dtype=np.int64)
    da = flat // math.prod(sa[ka + 1 :]) % sa[ka]
    db = flat // math.prod(sb[kb + 1 :]) % sb[kb]
    pairs = np.unique(da * sb[kb] + db)
    return pairs // sb[kb], pairs % sb[kb]


@register_function_rule(torch.unsqueeze)
@register_method_rule("unsqueeze")
def unsqueeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    if src is None:
        return
    d = ctx.arg(1, "dim") % len(out)
    ctx.same(src, out[:d] + out[d + 1 :])


@register_function_rule(torch.squeeze)
@register_method_rule("squeeze")
def squeeze(ctx: RuleContext) -> None:
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    if src is None:
        return
    kept = [a for a in src if ctx.graph.size(a) != 1]
    ctx.same(kept, [a for a in out if ctx.graph.size(a) != 1])


# -- concat and split ----------------------------------------------------------------------


@register_function_rule(torch.cat, torch.concat, torch.concatenate)
def cat(ctx: RuleContext) -> None:
    """Input ``k`` occupies ``[offset_k, offset_k + n_k)`` of the output's concat axis."""
    out = ctx.out()
    dim = ctx.arg(1, "dim", 0) % len(out)
    offset = 0
    for n in ctx.arg(0, "tensors"):
        axes = ctx.axes(n)
        if axes is None:
            continue
        size = ctx.graph.size(axes[dim])
        ctx.same(axes[:dim] + axes[dim + 1 :], out[:dim] + out[dim + 1 :])
        if size:
            ctx.graph.link(axes[dim], out[dim], np.arange(size), offset + np.arange(size), kind="offset")
        offset += size


@register_function_rule(torch.stack)
def stack(ctx: RuleContext) -> None:
    out = ctx.out()
    dim = ctx.arg(1, "dim", 0) % len(out)
    ctx.pin([out[dim]], f"stack axis at {ctx.where()}")
    for n in ctx.arg(0, "tensors"):
        ctx.same(ctx.axes(n) or [], out[:dim] + out[dim + 1 :])


@register_function_rule(torch.chunk, torch.split, torch.tensor_split)
@register_method_rule("chunk", "split", "tensor_split")
def split(ctx: RuleContext) -> None:
    """Output ``k`` is a slice of the input. ``chunk(n)`` recomputes equal parts after pruning,
    so position ``p`` of every part is tied together; literal split sizes pin the axis."""
    src = ctx.axes(ctx.arg(0))
    if src is None:
        return
    parts = ctx.outputs()
    dim = ctx.arg(2, "dim", 0) % len(src)
    how = ctx.arg(1)
    is_chunk = ctx.node.target in (torch.chunk, "chunk")
    for part in parts:
        ctx.same(src[:dim] + src[dim + 1 :], part[:dim] + part[dim + 1 :])
    sizes = [ctx.graph.size(p[dim]) for p in parts]
    if not is_chunk or len(set(sizes)) != 1 or sum(sizes) != ctx.graph.size(src[dim]):
        ctx.pin([src[dim]] + [p[dim] for p in parts], f"split with fixed sizes {how} at {ctx.where()}")
    offset = 0
    for part, size in zip(parts, sizes):
        ctx.graph.link(src[dim], part[dim], offset + np.arange(size), np.arange(size), kind="offset")
        if parts and part is not parts[0] and is_chunk:
            ctx.graph.link(parts[0][dim], part[dim], kind="tie")
        offset += size


@register_function_rule(operator.getitem)
def getitem(ctx: RuleContext) -> None:
    """Element of a tuple, or tensor indexing (full slices keep axes; anything else pins)."""
    src_node, index = ctx.arg(0), ctx.arg(1)
    value = ctx.meta(src_node)
    if isinstance(value, (tuple, list)) and isinstance(index, int):
        index %= len(value)  # x[-1] is the same element as x[n - 1]
        if isinstance(value[index], Tensor) and isinstance(src_node, fx.Node):
            element = ctx.graph.add_value(f"{ctx.prefix}{src_node.name}.{index}", value[index])
            ctx.same(element, ctx.out())
        return
    if not isinstance(value, Tensor) or not isinstance(ctx.out_value, Tensor):
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
            else:
                ctx.pin([src[si], out[oi]], f"slicing at {ctx.where()}")
            si += 1
            oi += 1


# -- reductions and resampling ------------------------------------------------------------


@register_function_rule(torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp)
@register_method_rule("mean", "sum", "amax", "amin", "std", "var", "logsumexp")
def reduce(ctx: RuleContext) -> None:
    """Kept axes map to the output; reduced axes vanish (a mean or std mixes its entries)."""
    src = ctx.axes(ctx.arg(0))
    if src is None:
        return
    out = ctx.outputs()[0] if ctx.outputs() else []
    dim = ctx.arg(1, "dim")
    keep = bool(ctx.arg(2, "keepdim", False))
    nd = len(src)
    dims = set(range(nd)) if dim is None else {d % nd for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    mixing = ctx.node.target not in (torch.sum, "sum")  # a zero adds nothing; it can change a max or mean
    for d in dims:
        if mixing:
            ctx.graph.mix(src[d], f"{getattr(ctx.node.target, '__name__', ctx.node.target)} over axis at {ctx.where()}")
    kept = [src[d] for d in range(nd) if d not in dims]
    ctx.same(kept, [out[d] for d in range(nd) if d not in dims] if keep else out)


@register_function_rule(
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.interpolate,
    F.pad, torch.nn.functional.upsample,
)  # fmt: skip
def leading_axes(ctx: RuleContext) -> None:
    """Ops on the trailing (spatial) axes only: the leading axes pass through."""
    src, out = ctx.axes(ctx.arg(0)), ctx.out()
    if src is None:
        return
    spatial = _spatial_dims(ctx)
    ctx.same(src[: len(src) - spatial], out[: len(out) - spatial])


def _spatial_dims(ctx: RuleContext) -> int:
    target = ctx.node.target
    if target is F.pad:
        return len(ctx.arg(1, "pad")) // 2
    name = getattr(target, "__name__", "") if not isinstance(target, str) else target
    for k in (1, 2, 3):
        if name.endswith(f"{k}d"):
            return k
    return max(ctx.meta(ctx.arg(0)).ndim - 2, 0)


@register_function_rule(
    builtins.getattr,
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.rand,
    torch.randn,
    torch.full,
    torch.arange,
)
@register_method_rule("size", "dim", "numel", "new_zeros", "new_ones", "new_empty", "new_full")
def no_coupling(ctx: RuleContext) -> None:
    """Ops whose result carries no channel of its inputs (shapes, fresh tensors)."""
    for axes in ctx.outputs():
        ctx.pin(axes, f"fresh tensor from {ctx.where()}")
