"""The rule registry: how each op couples the axes of its inputs, outputs and parameters.

A rule is a function ``rule(ctx: RuleContext) -> None`` registered for a module type
(looked up along the MRO, for subclasses that keep their parent's ``forward``), or for an op:
a torch function (``torch.cat``), a tensor method name (``"view"``) or an ``operator``
function. Ops are keyed by their canonical form (see ``normalize.py``), so a rule registered
for ``torch.permute`` also serves ``x.permute(...)`` and ``torch.Tensor.permute``. Users add
rules for their own layers with the ``register_*`` decorators. An op without a rule pins
every axis it touches, and the plan says why. One rule per key: registering a second rule
for a key warns and is recorded (``rule_clashes``) unless ``replace=True`` says it is meant;
a rule that extends another calls it (compose), it does not shadow it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from functools import cache
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch import nn

from .normalize import canonical_op, normalize

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = [
    "Rule",
    "find_rule",
    "inherits_forward",
    "module_rule",
    "module_rule_for",
    "register_function_rule",
    "register_method_rule",
    "register_module_rule",
    "rule_clashes",
]

Rule = Callable[["RuleContext"], None]

_MODULE_RULES: dict[type, Rule] = {}
_OP_RULES: dict[Hashable, Rule] = {}
_CLASHES: list[tuple[Hashable, Rule, Rule]] = []  # (key, the rule replaced, the rule that replaced it)


def register_module_rule(*types: type, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for module types (subclasses that keep ``forward`` inherit it).
    ``replace=True``: replacing an existing rule is meant (no warning)."""

    def deco(rule: Rule) -> Rule:
        _store(_MODULE_RULES, types, rule, replace)
        module_rule_for.cache_clear()
        return rule

    return deco


def register_function_rule(*targets: Any, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for ``call_function`` targets such as ``torch.cat`` or ``operator.add``.
    ``replace=True``: replacing an existing rule is meant (no warning)."""
    keys = [canonical_op(t)[0] for t in targets]
    return lambda rule: _store(_OP_RULES, keys, rule, replace)


def register_method_rule(*names: str, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for tensor methods by name (``"view"``); in-place variants share it.
    ``replace=True``: replacing an existing rule is meant (no warning)."""
    keys = [canonical_op(n)[0] for n in names]
    return lambda rule: _store(_OP_RULES, keys, rule, replace)


def _store(table: dict, keys: Any, rule: Rule, replace: bool) -> Rule:
    for k in keys:
        old = table.get(k)
        if old is not None and old is not rule and not replace:
            _CLASHES.append((k, old, rule))
            warnings.warn(
                f"rule {_label(rule)} replaces rule {_label(old)} for {k!r}: compose them, or pass replace=True",
                stacklevel=3,
            )
        table[k] = rule
    return rule


def _label(rule: Rule) -> str:
    return f"{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', repr(rule))}"


def rule_clashes() -> list[tuple[Hashable, str, str]]:
    """Keys registered twice without ``replace=True``: (key, replaced rule, replacing rule)."""
    return [(k, _label(old), _label(new)) for k, old, new in _CLASHES]


# What a subclass may define and still run its parent's computation: set-up, printing, state
# loading and train/eval switches (a frozen BatchNorm overriding ``train``).
_HARMLESS_OVERRIDES = frozenset(
    {"__init__", "extra_repr", "reset_parameters", "__repr__", "__setstate__", "__getstate__", "_load_from_state_dict",
     "_save_to_state_dict", "train", "eval", "__init_subclass__", "__class_getitem__", "__dict__", "__weakref__",
     "__annotate__"}
)  # fmt: skip


def inherits_forward(cls: type, base: type) -> bool:
    """``cls`` is ``base`` or a subclass that runs ``base.forward`` unchanged: it overrides
    neither ``forward`` nor any method or property ``forward`` may call (``_conv_forward``
    multiplying the weight by a mask buffer, a ``weight`` property). Classes of torch itself
    (``BatchNorm2d._check_input_dim``) and the planner's own read recorders (``__getattribute__``
    of ``size_reads`` / ``config_reads``) are trusted; any other override is traced through."""
    if not issubclass(cls, base) or cls.forward is not base.forward:  # type: ignore[attr-defined]
        return False
    mro = cls.__mro__
    for klass in mro[: mro.index(base)]:
        if klass.__module__.split(".")[0] == "torch":
            continue
        for name, value in vars(klass).items():
            if name in _HARMLESS_OVERRIDES or getattr(value, "__module__", "").startswith(__package__ + "."):
                continue
            if callable(value) or hasattr(value, "__get__"):
                return False
    return True


def module_rule(module: nn.Module) -> Rule | None:
    """The rule that applies to this layer as it is: registered for its type, or for the
    nearest base class whose ``forward`` it does not override. Such layers are traced as leaves.
    None for a layer whose instance replaces a method of its class (``patched_on_instance``)."""
    if patched_on_instance(module):
        return None
    return module_rule_for(type(module))


def patched_on_instance(module: nn.Module) -> bool:
    """The instance replaces a method of its class (``conv.forward = MethodType(f, conv)``,
    ``bn._check_input_dim = f``): its own computation, traced through, never given a rule."""
    attributes = vars(module)
    if not any(map(callable, attributes.values())):  # the common case, checked in C
        return False
    cls = type(module)
    return any(callable(v) and callable(getattr(cls, k, None)) and not hasattr(v, TRACED_CALL) for k, v in attributes.items())


TRACED_CALL = "skg_traced_call"  # marks the tracer's own ``forward`` of a leaf while traced (``fast_tracer``)


@cache
def module_rule_for(cls: type) -> Rule | None:
    """``module_rule`` by class."""
    for klass in cls.__mro__:
        if klass in _MODULE_RULES and (klass is cls or inherits_forward(cls, klass)):
            return _MODULE_RULES[klass]
    return None


def find_rule(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The registered rule for a node, or None (the op is unknown)."""
    if node.op == "call_module":
        return module_rule(module) if module is not None else None
    if node.op in ("call_function", "call_method"):
        try:
            return _OP_RULES.get(normalize(node).op)
        except TypeError:  # unhashable target
            return None
    return None
