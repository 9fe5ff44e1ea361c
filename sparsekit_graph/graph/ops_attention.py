"""Rules for the ops transformers are made of, in torch and ATen spellings: attention,
embeddings, slicing and selecting, and the checks ``torch.export`` leaves in a graph."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from .aten import NO_EFFECT_OPS, aten_op, is_aten
from .axes import AxisId
from .computed_repeats import follows_counts, ratio_repeats, record_copies, uncounted
from .context import RuleContext
from .head_dim import attention_scale, half_slice
from .ops_matmul import is_weight, zeroed_by_masks
from .ops_sizes import read_for_shape_only
from .positions import index_by_positions
from .rules import register_function_rule
from .sizes import COUNT_ATTRIBUTES, count_plus_sources, product_sources, size_sources
from .unbind_merge import rejoined
from .zeros import zero_breaker

# -- attention -----------------------------------------------------------------------------


@register_function_rule(F.scaled_dot_product_attention)
def attention(ctx: RuleContext) -> None:
    """``(..., H, L, E) x (..., Hk, S, E) x (..., Hk, S, Ev) -> (..., H, L, Ev)``.

    Query heads pass to the output; key/value heads are the query heads themselves, or with
    ``enable_gqa`` each of ``Hk`` heads serves ``H / Hk`` consecutive query heads (index map
    ``h -> h // (H / Hk)``), so a key/value head and its query heads form one channel. The
    head dimensions pin: the default scale ``1/sqrt(E)`` and rotary embeddings depend on them,
    unless ``plan(head_dim=True)`` and the scale can be compensated (see ``_head_dim``).
    """
    q, k, v = ctx.axes(ctx.arg("query")), ctx.axes(ctx.arg("key")), ctx.axes(ctx.arg("value"))
    out = ctx.out()
    mask = ctx.axes(ctx.arg("attn_mask"))
    ctx.arg("dropout_p"), ctx.arg("is_causal")
    gqa = bool(ctx.arg("enable_gqa", False))
    if q is None or k is None or v is None or min(len(q), len(k), len(v)) < 3:
        ctx.pin_everything(f"attention with unreadable operands at {ctx.where()}")
        return
    for x in (q, k, v):
        ctx.same(reversed(x[:-3]), reversed(out[:-3]))
    heads, kv_heads = ctx.graph.size(q[-3]), ctx.graph.size(k[-3])
    ctx.same([q[-3], q[-2], v[-1]], [out[-3], out[-2], out[-1]])
    ctx.same([k[-3], k[-2]], [v[-3], v[-2]])
    if kv_heads == heads:
        ctx.same([k[-3]], [q[-3]])
    elif kv_heads > 1 and gqa and heads % kv_heads == 0:
        h = np.arange(heads)
        ctx.graph.link(k[-3], q[-3], h // (heads // kv_heads), h, kind="repeat")
    elif kv_heads > 1:
        ctx.pin([q[-3], k[-3], v[-3], out[-3]], f"{heads} query heads and {kv_heads} key heads at {ctx.where()}")
    ctx.same([q[-1]], [k[-1]])
    _head_dim(ctx, q[-1], v[-1], ctx.arg("scale"))
    ctx.mix([k[-2]], f"softmax over keys at {ctx.where()}")
    if mask is not None:
        scores = [*out[:-3], q[-3], q[-2], k[-2]]  # (..., H, L, S)
        ctx.same(reversed(mask), reversed(scores))


def _head_dim(ctx: RuleContext, qd: AxisId, vd: AxisId, scale: Any) -> None:
    """``head_dim=True``: the query/key head size is prunable where the scale it sets can be
    compensated (``head_dim.attention_scale``); the value head size then shares its channels
    when it is as long (one ``head_dim`` attribute sizes q, k, v and o_proj's input)."""
    where = ctx.where()
    if not ctx.graph.head_dim:
        ctx.pin([qd, vd], f"head_dim at {where}: the attention scale and rotary embeddings depend on it")
        return
    site, why = attention_scale(ctx, ctx.arg("query"), scale, ctx.graph.size(qd))
    if site is None:
        ctx.pin([qd], f"head_dim at {where}: {why}")
        return
    ctx.graph.scales.setdefault(qd, []).append(site)
    if ctx.graph.size(vd) == ctx.graph.size(qd):
        ctx.graph.link(vd, qd)


@register_function_rule(torch.einsum)
def einsum(ctx: RuleContext) -> None:
    """``einsum("bhqd,bhkd->bhqk", q, k)``: an index kept in the output links every operand's
    axis of that index to it (produced there by a weight's axis); a contracted index links the
    operands' axes with each other. Repeated indices in one operand (diagonals) or an ellipsis
    pin everything. A contraction of activations alone is zero-invariant only if one keeps zeros."""
    if "args" in ctx.call.args:  # torch.einsum(equation, *operands) or (equation, [operands])
        equation, *operands = ctx.arg("args")
    else:  # aten.einsum(equation, tensors, path)
        equation, operands, _ = ctx.arg("equation"), ctx.arg("tensors"), ctx.arg("path")
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = list(operands[0])
    if not isinstance(equation, str):  # einsum(op1, sublist1, op2, sublist2, [sublist_out])
        equation, operands = _from_sublists([equation, *operands])
    spelled = _without_ellipsis(equation, [ctx.meta(x) for x in operands]) if isinstance(equation, str) else None
    if spelled is None:
        ctx.pin_everything(f"einsum {equation!r} at {ctx.where()}")
        return
    _contract(ctx, *spelled, operands, f"einsum {equation!r}")


@register_function_rule(torch.tensordot)
def tensordot(ctx: RuleContext) -> None:
    """``tensordot(a, b, dims)``: the einsum that contracts ``a``'s axes ``dims[0]`` with ``b``'s
    ``dims[1]`` (an int ``n``: ``a``'s last ``n`` with ``b``'s first ``n``); the output is ``a``'s
    other axes, then ``b``'s (tensordot pinned everything). ``torch.inner`` normalises to it."""
    a, b, dims = ctx.input, ctx.arg("b"), ctx.arg("dims", 2)
    ma, mb = ctx.meta(a), ctx.meta(b)
    if not isinstance(ma, Tensor) or not isinstance(mb, Tensor) or ma.ndim + mb.ndim > 26:
        ctx.pin_everything(f"tensordot with unreadable operands at {ctx.where()}")
        return
    if isinstance(dims, int):
        dims = (list(range(ma.ndim - dims, ma.ndim)), list(range(dims)))
    ok = isinstance(dims, (tuple, list)) and len(dims) == 2
    da, db = ([d] if isinstance(d, int) else d for d in dims) if ok else ([], [1])
    if not (isinstance(da, (tuple, list)) and isinstance(db, (tuple, list)) and len(da) == len(db)) or not (
        all(isinstance(i, int) and -ma.ndim <= i < ma.ndim for i in da)
        and all(isinstance(j, int) and -mb.ndim <= j < mb.ndim for j in db)
    ):
        ctx.pin_everything(f"tensordot with unreadable dims {dims!r} at {ctx.where()}")
        return
    letters = iter(string.ascii_letters)
    ta = [next(letters) for _ in range(ma.ndim)]
    tb = [next(letters) for _ in range(mb.ndim)]
    for i, j in zip(da, db):
        tb[j % mb.ndim] = ta[i % ma.ndim]
    shared = {ta[i % ma.ndim] for i in da}
    result = "".join(c for c in ta + tb if c not in shared)
    _contract(ctx, f"{''.join(ta)},{''.join(tb)}", result, [a, b], f"tensordot dims {dims!r}")


def _contract(ctx: RuleContext, inputs: str, result: str, operands: list[Any], label: str) -> None:
    """The links of the contraction ``inputs -> result`` (no ellipsis) of ``operands``."""
    terms = inputs.split(",")
    axes = [ctx.axes(x) for x in operands]
    out = ctx.out()
    if len(terms) != len(axes) or any(a is None or len(a) != len(t) or len(set(t)) != len(t) for a, t in zip(axes, terms)):
        ctx.pin_everything(f"{label} at {ctx.where()}")
        return
    weights = [is_weight(ctx, x) for x in operands]
    zeroed = [zeroed_by_masks(ctx, x) for x in operands]
    for letter in dict.fromkeys(inputs.replace(",", "")):
        found = [(a[t.index(letter)], w) for a, t, w in zip(axes, terms, weights) if letter in t]  # type: ignore[index]
        if letter in result:
            target = out[result.index(letter)]
            for axis, weight in found:
                if ctx.graph.size(axis) == ctx.graph.size(target) > 1:
                    (ctx.produce if weight else ctx.graph.link)(axis, target)
            continue
        ctx.same([found[0][0]] * (len(found) - 1), [a for a, _ in found[1:]])
        # A sum over the letter: exact where a masked channel makes some factor zero (a parameter
        # masks zero, or an activation that keeps zeros); ``sigmoid(h)`` alone adds 0.5 per channel.
        held = [(x, t.index(letter), z) for x, t, z in zip(operands, terms, zeroed) if letter in t]
        if not any(z or zero_breaker(x, d, ctx.modules) is None for x, d, z in held):
            ctx.mix([found[0][0]], f"{label} at {ctx.where()} sums {letter!r} over values not zero for removed channels")


def _without_ellipsis(equation: str, values: list[object]) -> tuple[str, str] | None:
    """``"...d,hd->...h"`` as ``("ABd,hd", "ABh")`` for these operands (letters unused in the
    equation stand for the ellipsis), an implicit output spelled out as torch reads it; None
    where operands' ellipses cover different numbers of axes."""
    equation = equation.replace(" ", "")
    if "->" not in equation:  # implicit output: the letters used once, sorted (A-Z, then a-z)
        letters = equation.replace(".", "").replace(",", "")
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        equation = f"{equation}->{'...' if '...' in equation else ''}{''.join(once)}"
    inputs, result = equation.split("->")
    terms = inputs.split(",")
    if "..." not in equation:
        return inputs, result
    if len(terms) != len(values) or any("..." in t and not isinstance(v, Tensor) for t, v in zip(terms, values)):
        return None
    spans = {v.ndim - len(t.replace("...", "")) for t, v in zip(terms, values) if "..." in t}  # type: ignore[union-attr]
    if len(spans) != 1:
        return None
    n = spans.pop()
    free = [c for c in string.ascii_letters if c not in equation]
    if n < 0 or n > len(free):
        return None
    fill = "".join(free[:n])
    return ",".join(t.replace("...", fill) for t in terms), result.replace("...", fill)


def _from_sublists(args: list[Any]) -> tuple[str | None, list[Any]]:
    """``einsum(a, [0, 1], b, [1, 2], [0, 2])`` as ``("Ab,bC->AC", [a, b])`` (torch numbers the
    letters A-Z then a-z, ``...`` as ``Ellipsis``); None for the equation where a sublist is not
    a literal list of such numbers."""

    def letters(sub: Any) -> str | None:
        if not isinstance(sub, (list, tuple)):
            return None
        out = []
        for i in sub:
            if i is Ellipsis:
                out.append("...")
            elif isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 52:
                out.append(string.ascii_uppercase[i] if i < 26 else string.ascii_lowercase[i - 26])
            else:
                return None
        return "".join(out)

    explicit = len(args) % 2 == 1
    pairs = args[:-1] if explicit else args
    operands, subs = pairs[0::2], [letters(s) for s in pairs[1::2]]
    result = letters(args[-1]) if explicit else ""
    if not pairs or any(s is None for s in subs) or result is None:
        return None, operands
    return ",".join(subs) + (f"->{result}" if explicit else ""), operands  # type: ignore[arg-type]


# -- embeddings ----------------------------------------------------------------------------


@register_function_rule(F.embedding, torch.embedding)
def embedding_function(ctx: RuleContext) -> None:
    """``F.embedding(ids, weight)`` / ``aten.embedding(weight, indices)``: rows are looked up
    (the vocabulary pins), columns produce the output's last axis."""
    ids = ctx.axes(ctx.arg("indices") if "indices" in ctx.call.args else ctx.input)
    w, out = ctx.axes(ctx.arg("weight")), ctx.out()
    for harmless in ("padding_idx", "scale_grad_by_freq", "sparse"):
        ctx.arg(harmless)
    if ctx.arg("max_norm") is not None or w is None or len(w) != 2:
        ctx.pin_everything(f"embedding with a computed or renormalised weight at {ctx.where()}")
        return
    ctx.same(ids or [], out[:-1])
    ctx.produce(w[1], out[-1])
    index = ctx.arg("indices") if "indices" in ctx.call.args else ctx.input
    aten = ctx.call.op is torch.embedding or is_aten(ctx.node.target)  # their -1: no padding row
    unpadded = ctx.arg("padding_idx") == (-1 if aten else None)
    if not (unpadded and index_by_positions(ctx, index, w[0])):  # as ``w[ids]``
        ctx.pin([w[0]], f"vocabulary of {ctx.where()}")


# -- slicing -------------------------------------------------------------------------------


@register_function_rule(torch.ops.aten.slice)
def slice_axis(ctx: RuleContext) -> None:
    """``x[..., start:end:step]`` on one axis: a whole slice keeps the axis.

    Under ``torch.export`` a contiguous part as long as a head count times the head size
    (Phi-3's ``qkv[..., :q_pos]``, ``[q_pos:kv_pos]``) is an offset map: the parts of a fused
    projection become members of its heads' groups, and the count attribute follows them.
    Literals downstream (the heads of a later ``view``) are size attributes ``prune`` checks
    after surgery, so a bound that does not follow fails loudly. Any other part pins, as does
    every part under torch.fx, which keeps literals as written: a hard-coded bound cannot be
    told from a computed one.
    """
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    d = ctx.arg("dim", 0) % len(src)
    start, end, step = ctx.arg("start"), ctx.arg("end"), ctx.arg("step", 1)
    size = ctx.graph.size(src[d])
    whole = (start in (None, 0)) and step == 1 and (end is None or (isinstance(end, int) and end >= size))
    ctx.same(src[:d] + src[d + 1 :], out[:d] + out[d + 1 :])
    if whole:
        ctx.same([src[d]], [out[d]])
    elif ctx.graph.head_dim and step == 1 and isinstance(start, int) and half_slice(ctx, src[d], out[d], start, end):
        pass  # rotate_half's halves: channel i pairs with i + n/2
    elif start in (None, 0) and step == 1 and type(end) is int and 0 < end < size and read_for_shape_only(ctx.node):
        ctx.at_least(src[d], end, f"slicing at {ctx.where()}")  # ``ones_like(h[:, :1])``: a shape
        ctx.pin([out[d]], f"slicing at {ctx.where()}")
    elif not (
        ctx.exported
        and step == 1
        and isinstance(start, int)
        and (heads_part(ctx, src[d], out[d], start) or _count_part(ctx, src[d], out[d], start))
    ):
        ctx.pin([src[d], out[d]], f"slicing at {ctx.where()}")


def heads_part(ctx: RuleContext, src: AxisId, out: AxisId, start: int) -> bool:
    """A part as long as ``count * head_dim`` (Phi-3's ``num_key_value_heads * head_dim``):
    output index ``i`` is input index ``start + i``, and the part's heads are a factor axis
    (``i // head_dim``) sized by the count, which surgery rewrites. False if no such count.
    Also the parts of ``qkv.split([num_heads * head_dim, kv, kv])`` (see ``ops_join.split``)."""
    length, size = ctx.graph.size(out), ctx.graph.size(src)
    sources, unit = product_sources(ctx.node, length, ctx.modules)
    if not sources or not 0 < length < size:
        return False
    i = np.arange(length)
    ctx.graph.link(src, out, (start % size) + i, i, kind="offset")
    heads = ctx.graph.add_axis(("v", f"{out[1]}:heads", out[2]), length // unit)  # one per part of a split
    ctx.graph.link(out, heads, i, i // unit, kind="block")
    ctx.graph.size_refs.setdefault(heads, set()).update(sources)
    ctx.graph.bounds.update(sources)  # a bound is computed from the count: forward reads it
    for s in sources:
        ctx.graph.size_values[s] = length // unit
    return True


def _count_part(ctx: RuleContext, src: AxisId, out: AxisId, start: int) -> bool:
    """A leading part as long as a head count of the running layer, of an axis one or two
    slots longer than that count (Falcon's multi-query ``qkv[..., :-2, :]``, its query heads
    before one key and one value slot): output index ``i`` is input index ``i``, and the count
    follows the part. False otherwise (a crop of a spatial axis as long as a head count)."""
    length, size = ctx.graph.size(out), ctx.graph.size(src)
    if start != 0 or not 1 < length < size:
        return False
    sources = [s for s in size_sources(ctx.node, length, ctx.modules) if s.attr in COUNT_ATTRIBUTES and s.owner != "config"]
    extra = count_plus_sources(ctx.node, size, ctx.modules)  # the part's axis holds the count and one or two slots
    if not sources or not {(s.owner, s.attr) for s in sources} & {(s.owner, s.attr) for s in extra}:
        return False
    ctx.graph.link(src, out, np.arange(length), np.arange(length), kind="offset")
    ctx.graph.size_refs.setdefault(out, set()).update(sources)
    for s in sources:
        ctx.graph.size_values[s] = length
    return True


@register_function_rule(torch.select)
def select(ctx: RuleContext) -> None:
    """``x.select(dim, i)``: one index of an axis (pinned); the other axes pass through."""
    src, out = ctx.axes(ctx.input), ctx.out()
    if src is None:
        return
    d, i = ctx.arg("dim") % len(src), ctx.arg("index")
    if type(i) is int and i >= 0 and read_for_shape_only(ctx.node):  # ``ones_like(h[:, 0])``: a shape
        ctx.at_least(src[d], i + 1, f"indexing at {ctx.where()}")
    else:
        ctx.pin([src[d]], f"indexing at {ctx.where()}")
    ctx.same(src[:d] + src[d + 1 :], out)


@register_function_rule(torch.unbind)
def unbind(ctx: RuleContext) -> None:
    """``x.unbind(dim)``: part ``k`` is ``x.select(dim, k)`` (the unbound axis pins)."""
    src = ctx.axes(ctx.input)
    if src is None:
        return
    d = ctx.arg("dim", 0) % len(src)
    if not rejoined(ctx.node):  # parts joined again in order: ``cat`` merges the axis (``unbind_merge``)
        ctx.pin([src[d]], f"unbinding at {ctx.where()}")
    for part in ctx.outputs():
        ctx.same(src[:d] + src[d + 1 :], part)


@register_function_rule(torch.repeat_interleave)
def repeat_interleave(ctx: RuleContext) -> None:
    """``x.repeat_interleave(r, dim)``: output index ``i`` is input index ``i // r`` (GQA's
    key/value heads repeated for their query heads); ``q.shape[1] // k.shape[1]`` as its value
    (``computed_repeats``); a tensor of repeats pins."""
    src, out = ctx.axes(ctx.input), ctx.out()
    r, d = ctx.arg("repeats"), ctx.arg("dim")
    given = r
    ctx.arg("output_size")
    if src is not None and isinstance(d, int) and -len(src) <= d < len(src) and isinstance(r, fx.Node):
        r = ratio_repeats(ctx, r, src[d], out[d]) or r  # ``q.shape[1] // k.shape[1]``: two head counts' ratio
    if src is None or d is None or not isinstance(r, int) or isinstance(r, bool) or r < 1:
        ctx.pin_everything(f"repeat_interleave with computed repeats or no dim at {ctx.where()}")
        return
    d %= len(src)
    ctx.same(src[:d] + src[d + 1 :], out[:d] + out[d + 1 :])
    # surgery leaves it while it rewrites the others: the count the code computes moves (where it
    # rewrites none, pruning whole key/value groups keeps the ratio)
    stale = uncounted(ctx, given, partly=not ctx.graph.divert_repeats)
    if stale:
        ctx.pin([src[d], out[d]], f"repeat count computed from {stale}, which counts no axis, at {ctx.where()}")
    elif r > 1 and ctx.graph.divert_repeats and not follows_counts(ctx, given):  # query heads per group change: r must follow
        ctx.pin([src[d], out[d]], f"gqa='query_heads': repeat_interleave by the literal {r} at {ctx.where()}")
    if ctx.graph.size(src[d]) == 1 and _copies_follow(ctx, given, r, out[d]):
        ctx.fresh([out[d]])  # one KV head for all, as many copies as query heads: a broadcast that follows them
        return
    i = np.arange(ctx.graph.size(out[d]))
    ctx.graph.link(src[d], out[d], i // r, i, kind="repeat")


def _copies_follow(ctx: RuleContext, given: object, r: int, out: AxisId) -> bool:
    """As many copies of one head as query heads, by a count that follows them: read off their
    lengths (``q.shape[1] // k.shape[1]``, linked already), or an attribute that counts them
    (``self.num_heads``, ``self.num_heads // self.num_kv_heads``: ``record_copies``)."""
    return given is not r or record_copies(ctx, given, out)


# -- checks ---------------------------------------------------------------------------------


def no_effect(ctx: RuleContext) -> None:
    """Runtime checks that ``torch.export`` records: they compute nothing."""
    ctx.read_all()


for _name in NO_EFFECT_OPS:
    _packet = getattr(torch.ops.aten, _name, None)
    if _packet is not None:
        register_function_rule(*(aten_op(getattr(_packet, o))[0] for o in _packet.overloads()))(no_effect)
