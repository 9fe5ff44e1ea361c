"""What a rule sees: the node in one spelling, its module, and helpers to reach and link axes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import torch.fx as fx
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm

from .axes import AxisGraph, AxisId
from .meta import META, ReadInt
from .normalize import Call, normalize
from .parametrized import modelled
from .sizes import size_sources
from .spectral import spectral_norm_axes
from .weight_norms import weight_norm_hook

__all__ = ["RuleContext"]

# Arguments that only ever name axes: a value computed for them in forward is a constant.
_STATIC_INTS = frozenset({"dim", "dim0", "dim1", "start_dim", "end_dim", "source", "destination"})


@dataclass
class RuleContext:
    """The node under a rule, with its normalised arguments and the axis graph.

    Rules read arguments by torch's names (``ctx.arg("dim")``; the primary tensor is
    ``ctx.input``). The planner checks afterwards that every argument the call passed was
    read (or is harmless), and that every output axis was linked to an input or parameter
    axis, marked ``fresh``, or pinned; anything else is pinned, naming the rule.
    """

    graph: AxisGraph
    node: fx.Node
    prefix: str
    module: nn.Module | None = None
    module_name: str = ""
    aliases: dict[str, str] | None = None  # get_attr node name -> parameter name
    modules: dict[str, nn.Module] = field(default_factory=dict)  # the model's modules by name
    exported: bool = False  # the graph comes from torch.export (ATen ops, sizes as literals)
    views: dict[str, tuple[fx.Node, tuple[int, ...]]] = field(default_factory=dict)  # see ``param_view``
    read: set[str] = field(default_factory=set)
    fresh_axes: set[AxisId] = field(default_factory=set)

    # -- arguments -------------------------------------------------------------------
    @cached_property
    def call(self) -> Call:
        return normalize(self.node, self.module)

    def arg(self, name: str | int, default: Any = None) -> Any:
        """Argument ``name`` of the call (torch's name; ``"input"`` for the primary tensor),
        or the ``name``-th argument in signature order."""
        args = self.call.args
        if isinstance(name, int):
            keys = list(args)
            if name >= len(keys):
                return default
            name = keys[name]
        self.read.add(name)
        value = args.get(name, default)
        if name in _STATIC_INTS and isinstance(value, fx.Node) and isinstance(value.meta.get(META), int):
            return value.meta[META]  # a dim computed in forward (``1 - g.dim()``) is a constant of the graph
        return value

    @property
    def input(self) -> Any:
        return self.arg("input")

    def read_all(self) -> None:
        """Declare every argument understood (e.g. scalars of a pointwise op)."""
        self.read.update(self.call.args)

    def meta(self, x: Any) -> Any:
        """The meta value of an argument (a node's traced value, or the literal itself)."""
        return x.meta.get(META) if isinstance(x, fx.Node) else x

    @property
    def out_value(self) -> Any:
        return self.node.meta.get(META)

    # -- axes ------------------------------------------------------------------------
    def axes(self, x: Any) -> list[AxisId] | None:
        """Axes of a tensor-valued argument (None if it is not a tensor)."""
        if not isinstance(x, fx.Node) or not isinstance(x.meta.get(META), Tensor):
            return None
        if self.aliases and x.name in self.aliases:
            return self.graph.add_param(self.aliases[x.name], x.meta[META])
        if x.name in self.views:  # ``w.T``: the parameter's axes, permuted
            root, perm = self.views[x.name]
            full = self.graph.add_param(self.aliases[root.name], root.meta[META])  # type: ignore[index]
            return [full[p] for p in perm]
        return self.graph.add_value(self.prefix + x.name, x.meta[META])

    def param_view(self, perm: list[int]) -> bool:
        """``w.detach()``, ``w.data``, ``w.transpose(0, 1)`` of a parameter ``w`` (or of a view
        of one): record the node as a view whose axis ``i`` is the input's axis ``perm[i]`` and
        link nothing. Ops that use the view reach the parameter's own axes, so a kernel axis a
        conv leaves out of the plan stays out whichever way the weight reached it.
        False (nothing recorded) when the input is no parameter or the call is in place."""
        x = self.input
        if not isinstance(x, fx.Node) or self.call.inplace or not isinstance(self.out_value, Tensor):
            return False
        if self.aliases and x.name in self.aliases and isinstance(x.meta.get(META), Tensor):
            root, base = x, tuple(range(x.meta[META].ndim))
        elif x.name in self.views:
            root, base = self.views[x.name]
        else:
            return False
        if sorted(perm) != list(range(len(base))) or self.out_value.ndim != len(base):
            return False
        self.read_all()
        self.views[self.node.name] = (root, tuple(base[p] for p in perm))
        return True

    def out(self, i: int | None = None) -> list[AxisId]:
        """Axes of the node's output, or of element ``i`` of a tuple output."""
        value = self.out_value if i is None else self.out_value[i]
        name = self.prefix + self.node.name + ("" if i is None else f".{i}")
        return self.graph.add_value(name, value)

    def param(self, attr: str, axes: tuple[int, ...] | None = None) -> list[AxisId]:
        """Axes of the module's parameter/buffer ``attr`` (only ``axes`` if given).

        A weight-normed parameter (``torch.nn.utils.parametrizations.weight_norm``) stands for
        its direction ``original1`` with the magnitude ``original0`` on its norm axis; any other
        parametrization, or a tensor the module computes itself, raises (the rule then pins).
        """
        m = self.module
        if m is None:
            raise ValueError(f"{self.where()} has no module")
        prefix = f"{self.module_name}." if self.module_name else ""
        if "parametrizations" in m._modules and parametrize.is_parametrized(m, attr):  # skip its AttributeError
            return self._parametrized(attr, prefix, axes)
        hook = weight_norm_hook(m, attr)
        if hook is not None:  # ``nn.utils.weight_norm``: ``attr_g`` and ``attr_v``, joined by a pre-hook
            g, v = getattr(m, f"{attr}_g"), getattr(m, f"{attr}_v")
            return self._weight_normed(g, v, hook.dim, f"{prefix}{attr}_g", f"{prefix}{attr}_v", f"{prefix}{attr}", axes)
        t = getattr(m, attr)
        if id(t) not in self.graph.canonical:
            raise ValueError(f"{prefix}{attr} is computed by the layer, not a parameter or buffer")
        return self.graph.add_param(self.graph.canonical[id(t)], t, axes)

    def _parametrized(self, attr: str, prefix: str, axes: tuple[int, ...] | None) -> list[AxisId]:
        plist = cast(parametrize.ParametrizationList, self.module.parametrizations[attr])  # type: ignore[union-attr, index]
        if not modelled(plist):  # the tracer traces such a layer; a rule reaching one pins
            kinds = ", ".join(type(p).__name__ for p in plist)
            raise ValueError(f"parametrization {kinds} of {prefix}{attr} is not modelled")
        norm = plist[0]
        if isinstance(norm, _SpectralNorm):
            axes_of = spectral_norm_axes(self.graph, plist, f"{prefix}parametrizations.{attr}")  # type: ignore[arg-type]
            return axes_of if axes is None else [axes_of[a] for a in axes]
        assert isinstance(norm, _WeightNorm) and norm.dim is not None  # what ``modelled`` leaves
        base = f"{prefix}parametrizations.{attr}"
        g, v = cast(Tensor, plist.original0), cast(Tensor, plist.original1)
        return self._weight_normed(g, v, norm.dim, f"{base}.original0", f"{base}.original1", f"{prefix}{attr}", axes)

    def _weight_normed(
        self, g: Tensor, v: Tensor, dim: int, g_name: str, v_name: str, label: str, axes: tuple[int, ...] | None
    ) -> list[AxisId]:
        """The axes of ``_weight_norm(v, g, dim)``: those of the direction ``v``; the magnitude ``g``
        follows axis ``dim``, where a zeroed row divides by a zero norm (not zero-invariant). With
        one norm over the whole weight (``dim=-1``: ``g`` is a scalar) a zeroed channel keeps it."""
        direction = self.graph.add_param(self.graph.canonical.get(id(v), v_name), v)
        if g.ndim > 0:
            magnitude = self.graph.add_param(self.graph.canonical.get(id(g), g_name), g, (dim % v.ndim,))
            row = direction[dim % v.ndim]
            self.same(magnitude, [row])
            self.graph.mix(row, f"weight norm of {label}: a zeroed row divides by a zero norm")
        return direction if axes is None else [direction[a] for a in axes]

    def weight_axes(self, x: Any, dims: tuple[int, ...]) -> list[AxisId] | None:
        """Axes ``dims`` of a weight passed in: only those of a parameter are created (its
        kernel axes stay out of the plan); all of a computed tensor's."""
        if isinstance(x, fx.Node) and self.aliases and x.name in self.aliases and isinstance(x.meta.get(META), Tensor):
            return self.graph.add_param(self.aliases[x.name], x.meta[META], dims)
        if isinstance(x, fx.Node) and x.name in self.views:  # ``w.detach()``: the same dims of ``w``
            root, perm = self.views[x.name]
            return self.graph.add_param(self.aliases[root.name], root.meta[META], tuple(perm[d] for d in dims))  # type: ignore[index]
        axes = self.axes(x)
        return None if axes is None else [axes[d] for d in dims]

    def element_axes(self, x: Any, i: int) -> list[AxisId] | None:
        """Axes of element ``i`` of a tuple-valued node (e.g. a part of ``chunk``)."""
        value = self.meta(x)
        if not isinstance(x, fx.Node) or not isinstance(value, (tuple, list)) or not isinstance(value[i], Tensor):
            return None
        return self.graph.add_value(f"{self.prefix}{x.name}.{i}", value[i])

    def tensor_axes(self, name: str | None = None) -> list[list[AxisId]]:
        """Axes of every tensor in argument ``name`` (or in all arguments): tensors, lists of
        them, and the elements of tuple-valued nodes."""
        if name is not None:
            self.read.add(name)
        found: list[fx.Node] = []
        where = self.call.args.get(name) if name is not None else (self.node.args, self.node.kwargs)
        fx.node.map_arg(where, lambda n: found.append(n) or n)
        out: list[list[AxisId]] = []
        for n in found:
            value = n.meta.get(META)
            if isinstance(value, Tensor):
                out.append(self.axes(n))  # type: ignore[arg-type]
            elif isinstance(value, (tuple, list)):
                out += [a for i in range(len(value)) if (a := self.element_axes(n, i)) is not None]
        return out

    def outputs(self) -> list[list[AxisId]]:
        """Axes of every tensor in the output (one entry per tensor)."""
        v = self.out_value
        if isinstance(v, Tensor):
            return [self.out()]
        if isinstance(v, (tuple, list)):
            return [self.out(i) for i, t in enumerate(v) if isinstance(t, Tensor)]
        return []

    # -- edits -----------------------------------------------------------------------
    def same(self, a: Iterable[AxisId], b: Iterable[AxisId]) -> None:
        """Identity-link axes pairwise (skipping size-1 axes, which never couple)."""
        sizes = self.graph.sizes
        for x, y in zip(a, b):
            if sizes[x] == sizes[y] and sizes[x] > 1:
                self.graph.link(x, y)

    def produce(self, source: AxisId, out: AxisId, ia: Any = None, ib: Any = None, kind: str = "identity") -> None:
        """``source`` (a parameter axis, or a weight passed in) determines output axis ``out``:
        its channels are produced here. A group with no producer is never prunable. A weight's
        unit axis that no link ties to a parameter (``F.conv2d(h, w[i].unsqueeze(0))``, one conv
        per row of ``w``: ``unsqueeze`` made it) produces nothing a parameter could lose."""
        self.graph.link(source, out, ia, ib, kind=kind)
        if source[0] == "p" or self.graph.size(source) > 1 or len(self.graph.adj[source]) > 1:
            self.graph.produce(source)

    def fresh(self, axes: Iterable[AxisId]) -> None:
        """Output axes that follow no input on purpose (broadcast by ``expand``: size 1 -> n)."""
        self.fresh_axes.update(axes)

    def size_follows_model(self, axis: AxisId, value: Any) -> bool:
        """Is ``value``, a literal size shaping ``axis``, an attribute of the layer or model?
        If so it is recorded on the axis (surgery rewrites it) and the axis may be pruned."""
        sources = size_sources(self.node, value, self.modules)
        if sources:
            self.graph.size_refs.setdefault(axis, set()).update(sources)
            for src in sources:
                self.graph.size_values[src] = value if isinstance(value, int) else value[0]
        return bool(sources)

    def constant_size(self, axis: AxisId, size: Any) -> bool:
        """A literal size in the call (not ``-1`` or ``1``) that is no size attribute of the
        layer or model: the code would not follow a pruned size there. An attribute read as 1
        (``view(b, t, self.num_kv_heads, d)`` with one KV head) is recorded: it counts this axis,
        so a number computed from it (``num_heads // num_kv_heads``) follows."""
        if isinstance(size, ReadInt) and size == 1:
            self.size_follows_model(axis, size)
        return isinstance(size, int) and size not in (-1, 1) and not self.size_follows_model(axis, size)

    def model_length(self, x: fx.Node) -> None:
        """Declare that this rule follows the axis length ``x`` it was passed (``t[:, : n // 2]``,
        a half that shrinks with the axis). An axis length reaching an op's argument that no
        rule declared, and that sizes no output axis linked to it, pins that axis."""
        self.graph.modelled_lengths.add((self.node, x))

    def pin(self, axes: Iterable[AxisId], reason: str) -> None:
        for a in axes:
            self.graph.pin(a, reason)
            self.graph.mix(a, reason)

    def mix(self, axes: Iterable[AxisId], reason: str) -> None:
        """Zeroing these axes' channels is not the same as removing them."""
        for a in axes:
            self.graph.mix(a, reason)

    def needs(self, axis: AxisId, count: str, label: str) -> None:
        """The op needs as many indices of ``axis`` as its argument ``count`` says (``topk``'s
        ``k``): the plan's group keeps at least its share of them (``Group.min_keep``). A count
        computed in forward (not a constant of the graph) pins the axis."""
        n = self.arg(count)
        if not isinstance(n, int) or isinstance(n, bool):
            self.pin([axis], f"{label} by a {count} computed in forward at {self.where()}")
        else:
            self.at_least(axis, n, f"{label} ({count}={n}) at {self.where()}")

    def at_least(self, axis: AxisId, n: int, reason: str) -> None:
        """The op needs ``n`` indices of ``axis`` to compute what it does (``Group.min_keep``)."""
        if n > 1:
            self.graph.at_least(axis, n, reason)

    def pin_everything(self, reason: str) -> None:
        """The safe default: no axis this op touches (or its module owns) may be pruned."""
        for axes in self.tensor_axes():
            self.pin(axes, reason)
        for axes in self.outputs():
            self.pin(axes, reason)
        if self.module is not None:
            for attr, t in (*self.module.named_parameters(recurse=True), *self.module.named_buffers(recurse=True)):
                name = f"{self.module_name}.{attr}" if self.module_name else attr
                if t.ndim:
                    self.pin(self.graph.add_param(self.graph.canonical.get(id(t), name), t), reason)

    def where(self) -> str:
        """Human-readable location of the node for pin reasons."""
        if self.node.op == "call_module":
            return f"{type(self.module).__name__} {self.module_name}"
        op = self.call.op
        label = op if isinstance(op, str) else getattr(op, "__name__", None) or repr(op)
        return f"{label} (node {self.node.name})"
