"""The rule registry: how each op couples the axes of its inputs, outputs and parameters.

A rule is a function ``rule(ctx: RuleContext) -> None`` registered for a module type
(looked up along the MRO), a callable (``torch.cat``, ``operator.add``) or a tensor method
name (``"view"``). Users add rules for their own layers with the ``register_*`` decorators.
An op without a rule pins every axis it touches, and the plan says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ..registry import by_type, registrar
from .axes import AxisGraph, AxisId
from .trace import META

__all__ = [
    "RuleContext",
    "find_rule",
    "register_function_rule",
    "register_method_rule",
    "register_module_rule",
]

Rule = Callable[["RuleContext"], None]

_MODULE_RULES: dict[type, Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}


register_module_rule = registrar(_MODULE_RULES)
register_module_rule.__doc__ = "Register a rule for module types (subclasses inherit it unless they have their own)."
register_function_rule = registrar(_FUNCTION_RULES)
register_function_rule.__doc__ = "Register a rule for ``call_function`` targets such as ``torch.cat`` or ``operator.add``."
register_method_rule = registrar(_METHOD_RULES)
register_method_rule.__doc__ = "Register a rule for tensor methods (``call_method`` nodes) by method name."


def has_own_module_rule(module: nn.Module) -> bool:
    """A rule applies to this layer as it is: registered for its exact type, or for a base
    class whose ``forward`` it does not override. Such layers are traced as leaves."""
    cls = type(module)
    return any(k in _MODULE_RULES and cls.forward is k.forward for k in cls.__mro__)


def find_rule(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The registered rule for a node, or None (the op is unknown)."""
    if node.op == "call_module" and module is not None:
        return by_type(_MODULE_RULES, module)
    if node.op == "call_function":
        try:
            return _FUNCTION_RULES.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    return None


@dataclass
class RuleContext:
    """What a rule sees: the node, its module, and helpers to reach axes."""

    graph: AxisGraph
    node: fx.Node
    prefix: str
    module: nn.Module | None = None
    module_name: str = ""
    aliases: dict[str, str] | None = None  # get_attr node name -> parameter name

    # -- arguments -------------------------------------------------------------------
    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """Positional argument ``i`` or keyword ``name`` of the node."""
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

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
        return self.graph.add_value(self.prefix + x.name, x.meta[META])

    def out(self, i: int | None = None) -> list[AxisId]:
        """Axes of the node's output, or of element ``i`` of a tuple output."""
        value = self.out_value if i is None else self.out_value[i]
        name = self.prefix + self.node.name + ("" if i is None else f".{i}")
        return self.graph.add_value(name, value)

    def param(self, attr: str, axes: tuple[int, ...] | None = None) -> list[AxisId]:
        """Axes of the module's parameter/buffer ``attr`` (only ``axes`` if given)."""
        assert self.module is not None
        t = getattr(self.module, attr)
        name = f"{self.module_name}.{attr}" if self.module_name else attr
        return self.graph.add_param(self.graph.canonical.get(id(t), name), t, axes)

    def tensor_args(self) -> list[fx.Node]:
        """Every argument (positional, keyword, nested) whose value is a tensor."""
        found: list[fx.Node] = []
        fx.node.map_arg((self.node.args, self.node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if isinstance(n.meta.get(META), Tensor)]

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
        for x, y in zip(a, b):
            if self.graph.size(x) == self.graph.size(y) and self.graph.size(x) > 1:
                self.graph.link(x, y)

    def pin(self, axes: Iterable[AxisId], reason: str) -> None:
        for a in axes:
            self.graph.pin(a, reason)
            self.graph.mix(a, reason)

    def pin_everything(self, reason: str) -> None:
        """The safe default: no axis this op touches (or its module owns) may be pruned."""
        for n in self.tensor_args():
            self.pin(self.axes(n) or [], reason)
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
        target = self.node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        return f"{label} (node {self.node.name})"
