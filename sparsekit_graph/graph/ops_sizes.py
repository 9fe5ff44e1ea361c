"""Rules for reading axis lengths and creating tensors: size/shape/numel, ``*_like``, zeros/empty/full."""

from __future__ import annotations

import builtins
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn

from .context import RuleContext
from .flow_values import VALUE
from .fresh_sizes import read_axes
from .meta import CONTROL
from .normalize import normalize
from .rules import register_function_rule, register_method_rule
from .size_args import link_lengths, link_read_lengths, product_follows

# -- sizes and fresh tensors ----------------------------------------------------------------

_SHAPE_ARGS = {"size", "shape", "split_size", "chunks", "sizes", "repeats", "normalized_shape", "output_size", "dims"}
# Per op, further arguments whose rule reads a length passed there off its axis, and links or
# pins that axis itself (``F.conv2d(h, w, groups=h.shape[1])``): the length is no value there.
_LENGTH_ARGS: dict[object, frozenset[str]] = {}


def register_length_args(names: Iterable[str], *ops: object) -> None:
    """Declare that the rules of ``ops`` model a length passed as argument ``names``."""
    for op in ops:
        _LENGTH_ARGS[op] = _LENGTH_ARGS.get(op, frozenset()) | frozenset(names)


def length_args(op: object) -> frozenset[str]:
    """The arguments of ``op`` whose rule models a length passed there (``register_length_args``)."""
    return _LENGTH_ARGS.get(op, frozenset())


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
    reads = [(n, axes) for n, axes in _length_uses(ctx.node, None if dim is None else [dim % max(nd, 1)], nd, ctx.modules)]
    for user, axes in reads:
        if user.meta.get(CONTROL) not in (None, VALUE):  # the traced code holds one branch / count of turns
            ctx.pin([src[d] for d in axes], f"python control flow on the length of an axis at node {user.name}")
        else:
            ctx.mix([src[d] for d in axes], f"length of an axis used as a value at node {user.name}")


def _length_uses(
    node: fx.Node, axes: list[int] | None, nd: int, modules: dict[str, nn.Module]
) -> list[tuple[fx.Node, list[int]]]:
    """(tensor-valued node using a length as a value, or a number Python control flow read
    (``CONTROL``), which axes' lengths) pairs."""
    found: list[tuple[fx.Node, list[int]]] = []
    if node.meta.get(CONTROL):  # ``for row in h``: the number of turns is h.size(0)
        found.append((node, axes if axes is not None else list(range(nd))))
    todo: list[tuple[fx.Node, list[int]]] = [(node, axes if axes is not None else list(range(nd)))]
    seen: set[tuple[fx.Node, tuple[int, ...]]] = set()  # a node reached with each length: ``tuple(h.shape)``
    while todo:
        n, read = todo.pop()
        for user in n.users:
            chosen = read
            if n is node and axes is None and user.target is operator.getitem:  # x.shape[1], x.size()[2:]
                index = user.args[1]
                chosen = [index % nd] if isinstance(index, int) else list(range(nd))[index] if isinstance(index, slice) else read
            if (user, tuple(chosen)) in seen:
                continue
            seen.add((user, tuple(chosen)))
            value = user.meta.get("skg.value")
            tensors = isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)  # split's parts
            if user.op == "output":
                found.append((user, chosen))
            elif tensors and user.op != "call_module" and _only_shapes(user, n):
                continue
            elif not isinstance(value, Tensor):
                todo.append((user, chosen))
                if user.meta.get(CONTROL):
                    found.append((user, chosen))
            elif user.op == "call_module" and _output_size_only(user, n, modules):
                continue  # ``self.up(h, output_size=skip.size())``: sizes (``length_uses`` checks them)
            elif user.op == "call_module" or not _only_shapes(user, n, direct=_direct(n, node, axes)):
                found.append((user, chosen))
    return found


def _output_size_only(user: fx.Node, length: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Does a transposed conv take ``length`` as its ``output_size`` only?"""
    if not isinstance(modules.get(str(user.target)), nn.modules.conv._ConvTransposeNd) or _contains(user.args[:1], length):
        return False
    return all(k == "output_size" for k, v in user.kwargs.items() if _contains(v, length))


def _direct(n: fx.Node, read: fx.Node, dims: list[int] | None) -> bool:
    """Is ``n`` one axis's length as read: ``read`` itself with a ``dim`` (``h.size(1)``), or
    ``read[i]`` of a whole shape (``h.shape[1]``; not ``numel``)?"""
    if n is read:
        return dims is not None
    return dims is None and n.target is operator.getitem and n.args[0] is read and isinstance(n.args[1], int)


def _only_shapes(user: fx.Node, length: fx.Node, *, direct: bool = False) -> bool:
    """Does ``user`` take ``length`` only as sizes? ``direct``: ``length`` is the read itself
    (``h.size(1)``, ``h.shape[1]``), which a rule of ``_LENGTH_ARGS`` traces to its axis."""
    call = normalize(user)
    uses = [k for k, v in call.args.items() if _contains(v, length)]
    modelled = _LENGTH_ARGS.get(call.op, frozenset()) if direct else frozenset()
    return call.bound and all(k in _SHAPE_ARGS or k in modelled for k in uses)


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
    torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor, torch.linspace,
)  # fmt: skip
@register_method_rule("new_tensor")
def fresh_tensor(ctx: RuleContext) -> None:
    """Ops whose result carries no channel of its inputs (shapes, fresh tensors): pinned."""
    ctx.read_all()
    for axes in ctx.outputs():
        ctx.pin(axes, f"fresh tensor from {ctx.where()}")


# Ops that read only their input's shape (and dtype, device): ``torch.ones_like(h[:, :1])``.
_SHAPE_READERS = frozenset(
    {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
     torch.randint_like, torch.Tensor.size, torch.Tensor.shape, torch.Tensor.dim, torch.Tensor.new_zeros,
     torch.Tensor.new_ones, torch.Tensor.new_empty, torch.Tensor.new_full, torch.numel, torch.Tensor.numel}
)  # fmt: skip


_CALLS = ("call_function", "call_method")  # not a layer: ``normalize`` binds those with their module


def read_for_shape_only(node: fx.Node) -> bool:
    """Does every user of ``node`` read only its shape (``torchdiffeq``'s time channel
    ``torch.ones_like(x[:, :1]) * t``)? Then which channels it holds does not matter."""
    return bool(node.users) and all(u.op in _CALLS and _reads_shape(u) for u in node.users)


def _reads_shape(user: fx.Node) -> bool:
    """Does ``user`` read only its input's shape: a shape reader, or an index by numbers and
    slices whose own users do (``w[0][0].numel()``)?"""
    call = normalize(user)
    if call.op in _SHAPE_READERS:
        return True
    index = call.args.get("index")
    items = index if isinstance(index, tuple) else (index,)
    plain = all(
        i is None or i is Ellipsis or isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool)) for i in items
    )
    return call.op is operator.getitem and plain and read_for_shape_only(user)


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
    the model (T5's ``torch.zeros((1, self.n_heads, q, k))`` position bias of cross-attention),
    as does a product of such reads and attributes (``torch.zeros(b * self.num_heads, n, n)``:
    ``size_args.product_follows``); any other length (a literal factor: ``b * 4``) is pinned."""
    ctx.read_all()
    out = ctx.out()
    sizes = ctx.call.args.get("size")
    link_read_lengths(ctx, sizes, out)
    link_lengths(ctx, read_axes(ctx, len(out)), out)  # under torch.export: the literals read off an axis
    if isinstance(sizes, (tuple, list)) and len(sizes) == len(out):
        follows = [not ctx.graph.adj[o] and (ctx.size_follows_model(o, n) or product_follows(ctx, n)) for o, n in zip(out, sizes)]
        ctx.fresh(o for o, f in zip(out, follows) if f)
    ctx.pin([o for o in out if not ctx.graph.adj[o] and o not in ctx.fresh_axes], f"fresh tensor from {ctx.where()}")
