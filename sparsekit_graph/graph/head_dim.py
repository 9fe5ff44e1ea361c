"""What head_dim pruning must prove at an attention (``plan(head_dim=True)``).

The scores ``q k^T * scale`` sum over head_dim, and ``scale = 1/sqrt(head_dim)`` changes when
head_dim does. Pruning stays exact if the query is multiplied by ``sqrt(d_new / d_old)``: the
parameters to multiply are found by walking back from the attention's query through ops that
are homogeneous of degree one in it (views, transposes, slices, ``cat``, ``neg``, sums of such
terms, products with tensors that do not depend on it: RoPE's ``q*cos + rotate_half(q)*sin``)
to the projection that made it. A scale passed as a number must equal ``head_dim ** -0.5`` and
an attribute of a running module (rewritten with the new head_dim). Rotary embeddings pair
channel ``i`` with ``i + d/2``: a slice that is one half of an axis (``rotate_half``) is an
offset map whose size prune checks afterwards (``half_slice``).
"""

from __future__ import annotations

import dis
import inspect
import operator
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .aten import NO_EFFECT_OPS
from .axes import AxisGraph, AxisId
from .meta import META, upstream
from .normalize import canonical_op, normalize
from .sizes import module_stack

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["ScaleSite", "attention_scale", "drop_partial_scales", "half_slice"]


def _ops(*targets: Any) -> frozenset:
    return frozenset(canonical_op(t)[0] for t in targets)


# Ops whose output is a rearrangement (or negation) of their tensor input: q -> c q passes through.
_REARRANGE = _ops(
    "view", torch.reshape, torch.transpose, torch.permute, "contiguous", torch.clone, "to", torch.unsqueeze,
    torch.squeeze, "expand", torch.ops.aten.slice, torch.neg, torch.select, torch.cat, torch.Tensor.mT, torch.Tensor.T,
    torch.t, torch.movedim, torch.flatten, torch.unflatten,
)  # fmt: skip
_SUMS = _ops(torch.add, torch.sub, operator.add, operator.sub)
_PRODUCTS = _ops(torch.mul, operator.mul, torch.div, operator.truediv)
_LINEAR = _ops(F.linear)


@dataclass(frozen=True)
class ScaleSite:
    """One attention's scale: the query parameters to multiply, the attribute holding the
    scale it passes (None: the default ``1/sqrt(head_dim)``) and head_dim before pruning."""

    query: tuple[str, ...]
    owner: str | None
    attr: str | None
    head_dim: int
    node: str = ""  # the attention's node
    shared: frozenset[str] = frozenset()  # every attention node passing the attribute's value


def attention_scale(ctx: RuleContext, query: Any, scale: Any, head_dim: int) -> tuple[ScaleSite | None, str]:
    """The site that compensates this attention's scale when head_dim shrinks, or None and why."""
    owner = attr = None
    shared: frozenset[str] = frozenset()
    if scale is not None:
        if not isinstance(scale, float) or not np.isclose(scale, head_dim**-0.5, rtol=1e-6):
            return None, f"the attention scale {scale!r} is not 1/sqrt({head_dim})"
        found = _scale_attribute(ctx, scale)
        if found is None:
            return None, f"the attention scale {scale!r} is no attribute of a running module"
        owner, attr = found
        shared = frozenset(
            f"{ctx.prefix}{n.name}"
            for n in ctx.node.graph.nodes
            if n.target == ctx.node.target and scale in _floats(n) and _holder(ctx, n, scale)[0] == owner
        )
    params = _query_parameters(ctx, query)
    if not params:
        return None, "no projection found whose scaling scales the query (a norm or a nonlinear op between)"
    tied = _tied(ctx, params)
    if tied:
        return None, f"the query's {tied} is tied to another tensor of the model (scaling it would scale that one too)"
    return ScaleSite(tuple(params), owner, attr, head_dim, f"{ctx.prefix}{ctx.node.name}", shared), ""


def drop_partial_scales(graph: AxisGraph) -> None:
    """A scale attribute several attentions pass (``scale=self.scale`` in a loop over blocks)
    holds one value for all: rewriting it is exact only if every one of them proved its site
    (their groups are then tied, ``plan.head_dim.tie_shared_scales``). Where one did not (another
    head_dim, a norm on its query), the others' sites are dropped: their head_dim pins."""
    sites: dict[tuple[str, str], list[ScaleSite]] = {}
    for found in graph.scales.values():
        for site in found:
            if site.attr is not None:
                sites.setdefault((site.owner, site.attr), []).append(site)
    partial = set()
    for key, found in sites.items():
        if set().union(*(s.shared for s in found)) - {s.node for s in found}:
            partial.add(key)
    for axis in list(graph.scales):
        kept = [s for s in graph.scales[axis] if (s.owner, s.attr) not in partial]
        if kept:
            graph.scales[axis] = kept
        else:
            del graph.scales[axis]


def _scale_attribute(ctx: RuleContext, value: float) -> tuple[str, str] | None:
    """The float attribute equal to ``value`` (``scaling``) of the innermost running module that
    has one; None where that module has two (which one the code passed cannot be told) or the
    value is a number of a node other than an attention (the code may have read it there:
    rewriting it would change that use)."""
    path, hits = _holder(ctx, ctx.node, value)
    if not hits:
        return None
    elsewhere = any(n.target != ctx.node.target and value in _floats(n) for n in ctx.node.graph.nodes)
    once = len(hits) == 1 and _reads_in_methods(type(ctx.modules[path]), hits[0]) == 1
    return (path, hits[0]) if once and not elsewhere else None


def _holder(ctx: RuleContext, node: fx.Node, value: float) -> tuple[str | None, list[str]]:
    """The innermost module running ``node`` with float attributes equal to ``value``, and their names."""
    for path in reversed(module_stack(node)):
        module = ctx.modules.get(path)
        if module is None:
            continue
        hits = [a for a, v in vars(module).items() if isinstance(v, float) and not a.startswith("_") and v == value]
        if hits:
            return path, hits
    return None, []


def _reads_in_methods(cls: type, attr: str) -> int:
    """How often the class's methods (``__init__`` aside) read ``self.<attr>``: the scale's one
    read, or also ``out * self.scale``, which rewriting the attribute would change."""
    seen: set[CodeType] = set()

    def count(code: CodeType) -> int:
        if code in seen:
            return 0
        seen.add(code)
        steps = list(dis.get_instructions(code))
        reads = [k for k, i in enumerate(steps) if i.opname in ("LOAD_ATTR", "LOAD_METHOD") and i.argval == attr]
        if any(not _of_self(code, steps[k - 1]) for k in reads if k > 0) or reads[:1] == [0]:
            return 2  # ``self.config.scale``: another object's attribute of that name, not this one's
        return len(reads) + sum(count(c) for c in code.co_consts if isinstance(c, CodeType))

    classes = [k for k in cls.__mro__ if k.__module__.split(".")[0] != "torch"]
    methods = [inspect.unwrap(f) for k in classes for n, f in vars(k).items() if n != "__init__"]
    return sum(count(f.__code__) for f in methods if hasattr(f, "__code__"))


def _of_self(code: CodeType, step: dis.Instruction) -> bool:
    """Does ``step`` load the method's first argument (``self``)?"""
    if not code.co_argcount or not step.opname.startswith(("LOAD_FAST", "LOAD_DEREF")):
        return False
    me = code.co_varnames[0]
    names = step.argval if isinstance(step.argval, tuple) else (step.argval,)
    return names[-1] in (me, "self")


def _floats(n: fx.Node) -> list[float]:
    out: list[float] = []
    fx.node.map_aggregate((n.args, n.kwargs), lambda a: out.append(a) if isinstance(a, float) else None)
    return out


def _query_parameters(ctx: RuleContext, query: Any) -> list[str]:
    """Parameters (projection weight and bias) that scale the query linearly, in a chain whose
    values nothing else reads; empty if there is none."""
    path: set[fx.Node] = set()
    found: list[str] = []
    if not isinstance(query, fx.Node) or not _walk(ctx, query, path, found):
        return []
    if any(u not in path and u is not ctx.node for n in path for u in n.users if not _no_effect(u)):
        return []  # the projection's output (or a step of the chain) is read elsewhere too
    others: list[fx.Node] = []
    fx.node.map_arg((ctx.node.args, ctx.node.kwargs), others.append)
    others.remove(query)
    if any(a in path for a in others):
        return []  # the chain is the key or value as well (``sdpa(qk, qk, v)``, ``cat([q, k])`` as the query)
    if _read_elsewhere(ctx, path, set(found)):
        return []
    return sorted(set(found))


def _tied(ctx: RuleContext, params: list[str]) -> str | None:
    """The first of ``params`` that another name of the model holds too (``k.weight = q.weight``,
    a query weight shared by two layers), or None."""
    held: dict[int, int] = {}
    for m in ctx.modules.values():
        for t in m._parameters.values():
            if t is not None:
                held[id(t)] = held.get(id(t), 0) + 1
    for name in params:
        owner, _, attr = name.rpartition(".")
        if held.get(id(getattr(ctx.modules.get(owner), attr, None)), 0) > 1:
            return name
    return None


def _read_elsewhere(ctx: RuleContext, path: set[fx.Node], params: set[str]) -> bool:
    """Do nodes off the chain read the parameters to multiply (the projection called twice)?"""
    for n in ctx.node.graph.nodes:
        if n in path:
            continue
        if n.op == "call_module" and any(p.rpartition(".")[0] == str(n.target) for p in params):
            return True
        if n.op == "get_attr" and ctx.aliases and ctx.aliases.get(n.name) in params and any(u not in path for u in n.users):
            return True
    return False


def _walk(ctx: RuleContext, n: fx.Node, path: set[fx.Node], found: list[str]) -> bool:
    """Is ``n`` homogeneous of degree one in some projections' parameters? Collects them."""
    if n in path:
        return True
    params = _projection(ctx, n)
    if params is not None:
        path.add(n)
        found += params
        return True
    if n.op == "call_module" and type(ctx.modules.get(str(n.target))) is nn.Identity and n.args:  # timm's q_norm slot
        ok = isinstance(n.args[0], fx.Node) and _walk(ctx, n.args[0], path, found)
        if ok:
            path.add(n)
        return ok
    if n.op not in ("call_function", "call_method"):
        return False
    call = normalize(n)
    tensors = [v for v in _tensor_args(call.args) if v is not None]
    if call.op in _SUMS and any(_number(v) for k, v in call.args.items() if k != "alpha"):
        return False  # ``q + 0.5``: a constant term does not scale with the query
    if call.op in _REARRANGE or call.op in _SUMS:
        ok = bool(tensors) and all(_walk(ctx, t, path, found) for t in tensors)
    elif call.op in _PRODUCTS:
        scaled = [t for t in tensors if _walk(ctx, t, set(path), [])]
        if len(scaled) != 1 or (len(tensors) == 2 and _depends(tensors[tensors.index(scaled[0]) - 1], path | {scaled[0]})):
            return False
        if len(tensors) == 2 and call.op in _ops(torch.div, operator.truediv) and tensors[1] is scaled[0]:
            return False  # 1 / q is not linear in q
        ok = _walk(ctx, scaled[0], path, found)
    else:
        return False
    if ok:
        path.add(n)
    return ok


def _projection(ctx: RuleContext, n: fx.Node) -> list[str] | None:
    """``F.linear(x, W, b)`` with parameters W (and b), or an ``nn.Linear`` layer: their names."""
    if n.op == "call_module":
        m = ctx.modules.get(str(n.target))
        if type(m) is nn.Linear:
            return [f"{n.target}.{k}" for k, p in m.named_parameters(recurse=False) if p is not None]
        return None
    if n.op != "call_function" or normalize(n).op not in _LINEAR:
        return None
    args = normalize(n).args
    names = [_param_name(ctx, args.get(k)) for k in ("weight", "bias") if args.get(k) is not None]
    return names if names and None not in names else None  # type: ignore[return-value]


def _param_name(ctx: RuleContext, x: Any) -> str | None:
    if isinstance(x, fx.Node) and x.op == "get_attr" and ctx.aliases and x.name in ctx.aliases:
        return ctx.aliases[x.name]
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0


def _tensor_args(args: dict[str, Any]) -> list[fx.Node | None]:
    out: list[fx.Node | None] = []
    fx.node.map_arg(tuple(args.values()), lambda a: out.append(a if isinstance(a.meta.get(META), Tensor) else None) or a)
    return out


def _depends(n: fx.Node, on: set[fx.Node]) -> bool:
    """Does ``n`` read any node of ``on`` (transitively)?"""
    return any(x in on for x in upstream(n))


def _no_effect(n: fx.Node) -> bool:
    return n.op == "call_function" and getattr(n.target, "__name__", "").split(".")[0] in NO_EFFECT_OPS


def half_slice(ctx: RuleContext, src: AxisId, out: AxisId, start: int, end: Any) -> bool:
    """``x[..., : n/2]`` or ``x[..., n/2 :]`` (RoPE's ``rotate_half``): output index ``i`` is input
    index ``start + i``; the output's size must follow the axis (checked by prune). False for any
    other part."""
    n = ctx.graph.size(src)
    half = n // 2
    stop = n if end is None or (isinstance(end, int) and end >= n) else end
    if n % 2 or (start, stop) not in ((0, half), (half, n)):
        return False
    i = np.arange(half)
    ctx.graph.link(src, out, start + i, i, kind="offset")
    ctx.graph.follows[out] = f"{ctx.prefix}{ctx.node.name}:{out[2]}"
    return True
