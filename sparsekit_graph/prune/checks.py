"""Does a pruned model's trace follow its plan? The checks ``prune`` runs before it hands a
model back, and the planner's export probe (``plan/probe.py``) runs on a pruned copy."""

from __future__ import annotations

import difflib
import math

import torch
import torch.fx as fx
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from ..errors import SparseKitError
from ..graph.export import CONSTANT_VALUE
from ..graph.meta import META
from ..graph.sizes import module_stack
from ..plan.schema import Plan
from ..plan.shared_sizes import size_drops

__all__ = ["changed_numbers", "check_pruned", "compensated", "same_code", "same_outputs", "sizes_followed"]


def check_pruned(plan: Plan, masks: dict[str, Tensor], before: fx.Graph, after: fx.Graph) -> None:
    """Raise ``SparseKitError`` when the pruned trace ``after`` changed the output shapes, runs
    other code than ``before``, or has an axis a pruned size attribute did not size."""
    same_outputs(before, after)
    same_code(before, after)
    sizes_followed(plan, masks, before, after)


def sizes_followed(plan: Plan, masks: dict[str, Tensor], before: fx.Graph, after: fx.Graph) -> None:
    """Every axis a size attribute shaped must have shrunk by that attribute's share of the
    removed channels (a head count 4 -> 2 makes ``view_3``'s axis 2 go 4 -> 2). A literal that
    only equalled an attribute (``view(b, n, 4, -1)`` beside an unused ``self.num_heads = 4``),
    or one config object that blocks read while they kept different counts, fails here."""
    old = {n.name: n.meta.get(META) for n in before.nodes}
    new = {name: n.meta.get(META) for name, n in _same_sites(before, after).items()}  # a code path gone (n_rep 1)
    drops = size_drops(plan.groups, {name: int(m.sum()) for name, m in masks.items()})
    for g in plan.groups:
        removed = int(masks[g.name].sum()) if g.name in masks else 0
        for ref in g.sizes:
            for use in ref.uses:
                node, _, axis = use.rpartition(":")
                a, b = old.get(node), new.get(node)
                if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or int(axis) >= min(a.ndim, b.ndim):
                    continue
                want = a.shape[int(axis)] - drops[(g.name, ref.owner, ref.attr)]
                if b.shape[int(axis)] != want:
                    raise SparseKitError(
                        f"after pruning group {g.name}, axis {axis} of node {node} has size {b.shape[int(axis)]}, not "
                        f"{want}: {ref.owner or 'model'}.{ref.attr} did not size it in the model's code"
                    )
        for f in g.follows:  # sizes torch.export wrote as literals (rotate_half's d/2)
            node, _, axis = f.use.rpartition(":")
            a, b = old.get(node), new.get(node)
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                continue
            want = a.shape[int(axis)] - f.per_channel * removed
            if b.shape[int(axis)] != want:
                raise SparseKitError(
                    f"after pruning group {g.name}, axis {axis} of node {node} has size {b.shape[int(axis)]}, not "
                    f"{want}: the model's code does not size it by these channels"
                )


def _same_sites(before: fx.Graph, after: fx.Graph) -> dict[str, fx.Node]:
    """``before``'s node names -> the nodes of ``after`` that are the same op at the same source
    line, paired in order (a pruned size can drop a code path: ``repeat_kv`` returns early at 1;
    a trace with static sizes lacks the symbolic size nodes, and names shift)."""

    def where(n: fx.Node) -> tuple:
        return n.target, n.meta.get("stack_trace"), tuple(module_stack(n))

    a = [n for n in before.nodes if not _symbolic(n)]
    b = [n for n in after.nodes if not _symbolic(n)]
    if [n.name for n in a] == [n.name for n in b] and all(where(x) == where(y) for x, y in zip(a, b)):
        return {x.name: y for x, y in zip(a, b)}
    match = difflib.SequenceMatcher(None, [where(n) for n in a], [where(n) for n in b], autojunk=False)
    return {a[i + k].name: b[j + k] for i, j, size in match.get_matching_blocks() for k in range(size)}


# torch.export's runtime checks of what it assumed of symbolic sizes (``u1 <= 16``): a dynamic and
# a static trace of one code assume different things of a data-dependent size (BART's count of
# ``eos`` tokens) and check them in different numbers; no value of the model's comes from them.
_SIZE_ASSERTS = {torch.ops.aten._assert_scalar.default, torch.ops.aten.sym_constrain_range_for_size.default}


def _symbolic(n: fx.Node) -> bool:
    """A size computation torch.export writes only where sizes are dynamic (``sym_size``,
    arithmetic on them, checks of them): the same code traced with static sizes has plain ints
    instead."""
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)) or n.target in _SIZE_ASSERTS


def _output_shapes(graph: fx.Graph) -> list[tuple[int, ...]]:
    out = next(n for n in graph.nodes if n.op == "output")
    found: list[fx.Node] = []
    fx.node.map_arg(out.args, found.append)
    return [tuple(n.meta[META].shape) for n in found if isinstance(n.meta.get(META), Tensor)]


def same_code(before: fx.Graph, after: fx.Graph) -> None:
    """The pruned model runs the same ops in the same order. A forward that branches in Python
    on a size that pruning changes (``if h.shape[1] == 8``, ``if self.conv.out_channels > 4``)
    traces to other code: its output would no longer equal the masked model's."""
    a, b = _ops(before), _ops(after)
    if a != b:
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        where = a[i][1] if i < len(a) else "the end of forward"
        raise SparseKitError(
            f"the pruned model runs other code from {getattr(where, '__name__', where)!s} on (forward branches on a "
            "pruned size, or rebuilds a tensor of a fixed size: pin the group whose size it reads)"
        )


# Ops that only re-view values (no arithmetic, no reordering): code that drops them when a size
# becomes 1 computes the same (``repeat_kv`` returns its input at one query head per KV group;
# torch.export leaves out a ``contiguous`` whose input already is, e.g. a permute of one head;
# ``buffer_view`` spells a 1-channel buffer's ``view(1, -1, 1, 1)`` as a ``squeeze`` and four
# ``unsqueeze``s, where 16 channels need no ``squeeze``).
_REVIEWS = {torch.ops.aten.unsqueeze.default, torch.ops.aten.expand.default, torch.ops.aten.reshape.default,
            torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.contiguous.default,
            torch.ops.aten.alias.default, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims,
            torch.ops.aten.squeeze.default, "unsqueeze", "squeeze", "expand", "reshape", "view", "contiguous"}  # fmt: skip


def _ops(graph: fx.Graph) -> list[tuple[str, object]]:
    """What a graph runs, in order (constants by kind: fx names them anew per trace), less
    re-views and whole-axis slices."""
    return [(n.op, None if n.op == "get_attr" else n.target) for n in _kept_nodes(graph)]


def _whole_slice(n: fx.Node) -> bool:
    """``x[:, :, None]``'s ``aten.slice(x, d, 0, INT64_MAX)``: every element, as it was. Also any
    slice whose output has its input's shape at the traced sizes (it picks all ``L`` of ``L``
    positions in order: the identity), however its bounds are written: a dynamic trace keeps
    DeBERTa's ``rel[:query_size, :]`` (``slice(rel, 0, 0, s)``) and MPT's ALiBi
    ``bias[:, max(0, 1 - s):]`` (``slice(bias, 1, sym_max)``), not provably whole, where a
    static trace of the same code drops them."""
    if n.target is not torch.ops.aten.slice.Tensor:
        return False
    start = n.args[2] if len(n.args) > 2 else n.kwargs.get("start", 0)
    end = n.args[3] if len(n.args) > 3 else n.kwargs.get("end")
    step = n.args[4] if len(n.args) > 4 else n.kwargs.get("step", 1)
    if start in (0, None) and step == 1 and (end is None or (isinstance(end, int) and end >= 2**62)):
        return True
    return _keeps_shape(n)


def _keeps_shape(n: fx.Node) -> bool:
    """Has ``n``'s output the shape of its first argument (both traced values)?"""
    src = n.args[0].meta.get(META) if isinstance(n.args[0], fx.Node) else None
    out = n.meta.get(META)
    return isinstance(src, Tensor) and isinstance(out, Tensor) and src.shape == out.shape


def same_outputs(before: fx.Graph, after: fx.Graph) -> None:
    """The pruned model returns outputs of the shapes the model returned."""
    if _output_shapes(before) != _output_shapes(after):
        raise SparseKitError(f"pruning changed the output shapes {_output_shapes(before)} -> {_output_shapes(after)}")


# Pointwise arithmetic whose integer operands are values, not sizes (``h / 16``, ``h * 4``).
_ARITHMETIC = {torch.ops.aten.mul.Tensor, torch.ops.aten.mul.Scalar, torch.ops.aten.div.Tensor, torch.ops.aten.div.Scalar,
               torch.ops.aten.add.Tensor, torch.ops.aten.add.Scalar, torch.ops.aten.sub.Tensor, torch.ops.aten.sub.Scalar,
               torch.ops.aten.rsub.Scalar, torch.ops.aten.pow.Tensor_Scalar, torch.ops.aten.pow.Scalar}  # fmt: skip


def changed_numbers(before: fx.Graph, after: fx.Graph, compensated: frozenset[tuple[float, float]] = frozenset()) -> list[str]:
    """Nodes of ``before`` (which runs the same code as ``after``) given a number that pruning
    changed: a float anywhere, an int in arithmetic (``h * h.shape[-1] ** -0.5``). The model
    computes values from a pruned size, so the pruned model is not the masked one. A change
    ``(old, new)`` in ``compensated`` is one surgery makes up for (an attention scale
    ``head_dim ** -0.5`` whose queries ``rescale_queries`` multiplied)."""
    changed = []
    made_before, made_after = _constant_part(before), _constant_part(after)
    for a, b in zip(_kept_nodes(before), _kept_nodes(after)):
        old, new = _numbers(a), _numbers(b)
        if a in made_before and b in made_after and _folds_a_changed_extent(a, b, made_before):
            changed.append(a.name)
            continue
        if old.keys() != new.keys() and not _sized_by_symbol(a, b, old, new):
            changed.append(a.name)
        elif any(x != new[k] and (x, new[k]) not in compensated for k, x in old.items() if k in new):
            changed.append(a.name)
    return changed


def compensated(plan: Plan, masks: dict[str, Tensor]) -> frozenset[tuple[float, float]]:
    """The attention scales surgery compensates: ``(head_dim ** -0.5, pruned ** -0.5)``."""
    pairs = set()
    for g in plan.groups:
        removed = int(masks[g.name].sum()) if g.name in masks else 0
        for s in g.scales if removed else ():
            pairs.add((float(s.head_dim) ** -0.5, float(s.factor(removed)[0]) ** -0.5))
    return frozenset(pairs)


def _sized_by_symbol(a: fx.Node, b: fx.Node, old: dict, new: dict) -> bool:
    """Do ``a``'s and ``b``'s numbers differ only where one holds a symbolic size (a node) and
    the other the plain int a static trace writes for it?"""
    args = dict(_flat_arguments(a))
    other = dict(_flat_arguments(b))
    return all(isinstance(args.get(k), fx.Node) or isinstance(other.get(k), fx.Node) for k in old.keys() ^ new.keys())


def _kept_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The nodes ``_ops`` lists, in order."""
    return [
        n
        for n in graph.nodes
        if n.op not in ("placeholder", "output") and n.target not in _REVIEWS and not _whole_slice(n) and not _symbolic(n)
    ]


def _arguments(n: fx.Node) -> list[tuple[object, object]]:
    return [*enumerate(n.args), *n.kwargs.items()]


def _numbers(n: fx.Node) -> dict[object, object]:
    """The node's numbers by argument position or keyword: floats; ints in arithmetic or at an
    argument ATen types ``Scalar`` (a value: ``full``'s ``fill_value``, ``where``'s ``other``,
    ``addcmul``'s ``value``, ``arange``'s ``end``); a small constant tensor's values
    (``torch.tensor(h.size(-1))``, which torch.export lifts) under ``"value"``."""
    scalars = _scalar_arguments(n)
    found: dict[object, object] = {
        k: v
        for k, v in _flat_arguments(n)
        if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and (k in scalars or n.target in _ARITHMETIC))
    }
    value = n.meta.get(CONSTANT_VALUE) if n.op == "get_attr" else None
    if isinstance(value, Tensor):
        found["value"] = (tuple(value.shape), tuple(value.reshape(-1).tolist()))
    return found


def _flat_arguments(n: fx.Node) -> list[tuple[object, object]]:
    """``_arguments``, each element of a list or tuple argument under ``(key, index)``."""
    return [
        item
        for k, v in _arguments(n)
        for item in ([((k, i), x) for i, x in enumerate(v)] if isinstance(v, (list, tuple)) else [(k, v)])
    ]


def _scalar_arguments(n: fx.Node) -> set[object]:
    """Positions and names of ``n``'s arguments that its ATen schema types ``Scalar``."""
    schema = getattr(n.target, "_schema", None)
    if schema is None:
        return set()
    return {
        key
        for i, a in enumerate(schema.arguments)
        if isinstance(a.type, torch.NumberType)
        for key in ((a.name,) if a.kwarg_only else (a.name, i))
    }


def _folds_a_changed_extent(a: fx.Node, b: fx.Node, made: set[fx.Node]) -> bool:
    """Does ``a`` (``b`` in the pruned trace), a tensor made from no input, fold an extent that
    pruning changed into its values (``ones([2, C]).sum(1)``, ``eye(C).trace()``,
    ``ones(1).expand(C).sum()``): an input whose element count changed by another factor than
    the output's? A fresh tensor that only changed shape (T5's ``zeros(1, n_heads, q, k)``)
    does not; nor does ``h.new_ones(size)``, whose ``h`` gives only the dtype (not in ``made``),
    nor an input that kept its extent (a causal mask broadcast over the heads pruning removed)."""
    out_a, out_b = _numel(a), _numel(b)
    ins = zip(a.all_input_nodes, b.all_input_nodes)
    return any(_numel(x) != _numel(y) and _numel(x) * out_b != _numel(y) * out_a for x, y in ins if x in made)


def _numel(n: fx.Node) -> int:
    """``n``'s element count, but of the extents torch.export left data-dependent (an unbacked
    size, ``x[torch.where(idx == e)[0]]``): on meta inputs those are guesses, not the example's."""
    value, fake = n.meta.get(META), n.meta.get("val")
    if not isinstance(value, Tensor):
        return 1
    if isinstance(fake, Tensor) and fake.dim() == value.dim():
        return math.prod(int(d) for d, f in zip(value.shape, fake.shape) if not free_unbacked_symbols(f))
    return int(value.numel())


# ``h.new_ones(size)``: ``h`` gives only the dtype and device.
_FRESH = {torch.ops.aten.new_ones.default, torch.ops.aten.new_zeros.default, torch.ops.aten.new_full.default,
          torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default}  # fmt: skip


def _constant_part(graph: fx.Graph) -> set[fx.Node]:
    """Tensors of ``graph`` computed from no input, parameter or buffer (sizes may come from
    inputs: ``ones(h.shape)``; ``new_ones``' tensor gives only the dtype); a lifted constant
    counts as made."""
    data: set[fx.Node] = set()
    made: set[fx.Node] = set()
    for n in graph.nodes:
        tensor = isinstance(n.meta.get(META), Tensor)
        if n.op == "placeholder" or (n.op == "get_attr" and CONSTANT_VALUE not in n.meta):
            data.add(n)
        elif n.target not in _FRESH and any(m in data for m in n.all_input_nodes if isinstance(m.meta.get(META), Tensor)):
            data.add(n)
        elif tensor and n.op != "output":
            made.add(n)
    return made
