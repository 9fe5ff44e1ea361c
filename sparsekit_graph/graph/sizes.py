"""Where a literal size in a graph comes from: the module or config attribute it equals.

Models reshape with their own attributes (``view(b, s, self.num_heads, self.head_dim)``,
``split(self.split_size)``), and under ``torch.export`` every size is a literal. A literal
that shapes a channel axis is matched to an attribute named in ``SIZE_ATTRIBUTES``: first of
the innermost module running the op, then of its parents, then of the model's config. A
layer with a resizer (``register_resizer``) explains its own sizes: surgery recomputes them
from its weights (GPT-2's ``Conv1D`` views by its ``nf``). A match
means the size follows the model (surgery rewrites the attribute); a literal that matches
nothing pins its axis, since the code would not follow a pruned size.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import nn

from ..registry import RESIZERS
from .attribute_sizes import PLAIN_READS
from .config_reads import read_by_forward
from .meta import EXPORTED, META, MODULE_READS, SIZE_READS, ReadInt
from .size_tests import Site

__all__ = [
    "COUNT_ATTRIBUTES",
    "SIZE_ATTRIBUTES",
    "UNIT_ATTRIBUTES",
    "SizeSource",
    "count_plus_sources",
    "module_stack",
    "product_sources",
    "read_sites",
    "register_size_attribute",
    "running_unit",
    "size_sources",
]

SIZE_ATTRIBUTES: set[str] = {
    "num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads", "n_kv_heads",
    "head_dim", "attention_head_size", "head_size", "hidden_size", "embed_dim", "n_embd", "d_model",
    "all_head_size", "inner_dim", "intermediate_size", "n_inner", "ffn_dim", "d_ff", "split_size", "nf", "nx",
    "normalized_shape", "num_key_value_groups", "kv_heads", "hidden_dim", "dim", "word_embed_proj_dim",
    "embedding_size", "ffn_hidden_size", "attn_dim", "val_attn_dim", "heads", "n_local_heads", "n_local_kv_heads",
    "d_inner", "nheads", "headdim", "dim_head", "d_head",  # Mamba's reference code, lucidrains'
}  # fmt: skip


# A literal may be a count times a unit (``num_key_value_heads * head_dim``: Phi-3's bounds of
# its fused ``qkv_proj``); the count follows the channels, the unit never changes.
COUNT_ATTRIBUTES: tuple[str, ...] = (
    "num_attention_heads", "num_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads", "n_kv_heads",
    "kv_heads", "heads", "n_local_heads", "n_local_kv_heads", "nheads",  # lucidrains', LLaMA's, Mamba-2's reference code
)  # fmt: skip
UNIT_ATTRIBUTES: tuple[str, ...] = ("head_dim", "attention_head_size", "head_size", "d_kv", "headdim", "dim_head", "d_head")


def register_size_attribute(*names: str) -> None:
    """Declare attributes (of layers or configs) that hold sizes a forward reshapes with."""
    SIZE_ATTRIBUTES.update(names)


@dataclass(frozen=True)
class SizeSource:
    """Attribute ``attr`` of the module at ``owner`` (``"config"``: the model's config); an
    empty ``attr`` names a layer that resizes itself (a registered resizer)."""

    owner: str
    attr: str


def size_sources(node: fx.Node, value: Any, modules: dict[str, nn.Module]) -> list[SizeSource]:
    """The attributes ``value`` (an int, or a tuple of ints) equals, innermost owner first;
    empty when nothing explains it. A literal read from a module's own int attribute of no
    listed name (``attribute_sizes``) explains nothing here: only a split's or a slice's rule
    follows one (``split_sizes``); a reshape's constant factor, ``view(b, self.num_paths, -1)``,
    is no count that follows pruning."""
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        return []
    value = tuple(value) if isinstance(value, list) else value
    read = (node.meta.get(SIZE_READS) or {}).get(value)
    if isinstance(value, ReadInt):  # read from one attribute at this very position
        if value.derived:  # a number computed from it (``c // 2``): no attribute's value
            return []
        read = {value.site}
    elif _plain_read(node, value):
        return []
    if read and len(read) == 1:  # the code wrote a layer's size attribute there (``size_reads``)
        ((path, attr),) = read
        owner = modules.get(path)
        have = getattr(owner, attr, None)
        if have == value or (isinstance(have, tuple) and len(have) == 1 and have[0] == value):
            return [SizeSource(path, attr)]
        if owner is not None and _resizes_itself(owner) and _own_size(owner, value):
            return [SizeSource(path, "")]  # read from a layer that resizes itself (``bias_shape``)
    root = modules.get("")
    configs: list[tuple[str, Any]] = []
    stack = module_stack(node)
    innermost = modules.get(stack[-1]) if stack else None
    if innermost is not None and _resizes_itself(innermost) and _own_size(innermost, value):
        return [SizeSource(stack[-1], "")]  # the layer resizes itself from its weights
    for path in reversed(stack):
        module = modules.get(path)
        if module is None:
            continue
        hits = [a for a in _equal_attributes(module, value) if _read_by_module(node, path, a, value, module)]
        if hits:
            return [SizeSource(path, a) for a in hits]
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, nn.Module):
            configs.append((config_owner(config, modules), config))
    if root is not None and getattr(root, "config", None) is not None:
        configs.append(("config", root.config))
    for owner, config in configs:
        hits = [a for a in _equal_attributes(config, value) if read_by_forward(node, config, a)]
        if hits:
            return [SizeSource(owner, a) for a in hits]
    return []


def config_owner(config: object, modules: dict[str, nn.Module]) -> str:
    """One name per config object: ``"config"`` for the model's own, else ``"<path>.config"`` of
    the first module holding it, so blocks that share one config count one attribute (tied)."""
    root = modules.get("")
    if root is not None and getattr(root, "config", None) is config:
        return "config"
    path = next((p for p, m in modules.items() if m.__dict__.get("config") is config), "")
    return f"{path}.config" if path else "config"


def running_unit(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """The head size (``UNIT_ATTRIBUTES``) of the innermost module running ``node`` that has one."""
    running = (m for p in reversed(module_stack(node)) if (m := modules.get(p)) is not None)
    return next((u for m in running for a in UNIT_ATTRIBUTES if _is_count(u := getattr(m, a, None))), None)


def product_sources(node: fx.Node, value: Any, modules: dict[str, nn.Module]) -> tuple[list[SizeSource], int]:
    """``value`` as ``count * unit``: the unit is the innermost running module's head size
    (``UNIT_ATTRIBUTES``), the counts are ``COUNT_ATTRIBUTES`` of the innermost owner that has
    one matching (modules, then the model's config). Returns the counts and the unit, or
    ``([], 1)`` when nothing explains it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or _plain_read(node, value):
        return [], 1
    running = [(p, m) for p in reversed(module_stack(node)) if (m := modules.get(p)) is not None]
    unit = running_unit(node, modules)
    if unit is None or unit >= value or value % unit:
        return [], 1
    root = modules.get("")
    shared = getattr(root, "config", None) if root is not None else None
    owners: list[tuple[str, Any]] = []
    for path, module in running:
        owners.append((path, module))
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, nn.Module):
            owners.append((config_owner(config, modules), config))
    if shared is not None and not isinstance(shared, nn.Module):
        owners.append(("config", shared))
    for owner, obj in owners:
        hits = [a for a in COUNT_ATTRIBUTES if _is_count(c := getattr(obj, a, None)) and c * unit == value]
        hits = [a for a in hits if not isinstance(obj, nn.Module) or _read_by_module(node, owner, a, value, obj)]
        hits = [a for a in hits if isinstance(obj, nn.Module) or read_by_forward(node, obj, a)]
        if hits:
            return [SizeSource(owner, a) for a in hits], unit
    return [], 1


# A fused projection may hold its heads and one key and one value slot (Falcon's multi-query
# ``view(b, s, num_heads + 2, head_dim)``): a literal that many more than a count follows it.
EXTRA_SLOTS = (1, 2)


def count_plus_sources(node: fx.Node, value: Any, modules: dict[str, nn.Module]) -> list[SizeSource]:
    """``value`` as ``count + k`` (``k`` in ``EXTRA_SLOTS``): the ``COUNT_ATTRIBUTES`` of the
    innermost running module that has such a count; empty when none does. A literal that does
    not follow the count cannot hold the pruned rows: ``prune`` fails loudly."""
    if isinstance(value, bool) or not isinstance(value, int) or _plain_read(node, value):
        return []
    for path in reversed(module_stack(node)):
        module = modules.get(path)
        if module is None:
            continue
        hits = [a for a in COUNT_ATTRIBUTES if _is_count(c := getattr(module, a, None)) and value - c in EXTRA_SLOTS]
        if hits:
            return [SizeSource(path, a) for a in hits]
    return []


def _plain_read(node: fx.Node, value: Any) -> bool:
    """Did the code write a module's own int attribute (``attribute_sizes``) where ``node`` holds
    ``value``? Then that attribute explains it, and no other of equal value does: HF Hiera's
    ``reshape(b, -1, self.hidden_size_output)`` is not its config's ``embed_dim`` of 16."""
    return isinstance(value, int) and value in (node.meta.get(PLAIN_READS) or {})


def _read_by_module(node: fx.Node, path: str, attr: str, value: Any, module: Any = None) -> bool:
    """Did the traced code read ``attr`` of the module at ``path`` (True under torch.export,
    whose literals may come from anywhere, and where unrecorded but ``attr`` is the module's
    own: a class that could not be swapped)? Where the code's own reads were handed out as
    ``SizeRead``s, only a literal made of one counts (``node``'s ``SIZE_READS`` for ``value``).
    A literal that only equals an attribute nobody read (``view(b, 64, -1)`` beside ``self.dim
    = 64``), or a class attribute or property no trace records (surgery's instance attribute
    would not change what the code reads), stays a constant."""
    graph = getattr(node, "graph", None)
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None) if graph is not None else None
    recorded = out.meta.get(MODULE_READS, {}).get(path) if out is not None else None
    if recorded is None:
        return _exported(out) or module is None or attr in getattr(module, "__dict__", {})
    if attr in recorded:
        return True
    return (path, attr) in read_sites(node, value)


def _exported(out: fx.Node | None) -> bool:
    return out is not None and bool(out.meta.get(EXPORTED))


def read_sites(node: fx.Node, value: Any) -> set[Site]:
    """The attributes the code read to write ``value`` at ``node`` (``SIZE_READS``), or in the
    size tuple it passes: ``view(c.size()[:-2] + (self.num_heads * self.head_size,))`` records
    them on the ``add`` that concatenates the tuples, whose element reaches ``view``."""
    found: set[Site] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        found.update((n.meta.get(SIZE_READS) or {}).get(value, ()))
        todo += [
            a
            for a in n.all_input_nodes
            if a.op == "call_function" and a.target in _TUPLE_OPS and isinstance(a.meta.get(META), tuple)
        ]
    return found


_TUPLE_OPS = (operator.add, operator.getitem)  # concatenating size tuples, taking one element


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _resizes_itself(module: nn.Module) -> bool:
    """A layer whose registered resizer recomputes the sizes its forward uses: timm's
    ``RelPosBias.bias_shape``, a torch layer running torch's forward (a depthwise conv's literal
    ``groups`` under torch.export). Not a subclass of a torch layer with a forward of its own:
    the resizer sets torch's attributes only, and a size the subclass keeps (``self.dim``) is no
    concern of it."""
    cls = next((c for c in type(module).__mro__ if c in RESIZERS), None)
    if cls is None:
        return False
    return not cls.__module__.startswith("torch.") or getattr(type(module).forward, "__module__", "").startswith("torch.")


def _own_size(module: nn.Module, value: int | tuple[int, ...]) -> bool:
    """Is ``value`` the size of an axis of one of the layer's own parameters?"""
    sizes = {n for p in module.parameters(recurse=False) for n in p.shape}
    return value in sizes if isinstance(value, int) else len(value) == 1 and value[0] in sizes


def _equal_attributes(obj: Any, value: int | tuple[int, ...]) -> list[str]:
    out = []
    for attr in sorted(SIZE_ATTRIBUTES):
        v = getattr(obj, attr, None)
        v = tuple(v) if isinstance(v, (list, tuple)) else v
        if v == value and not isinstance(v, bool):
            out.append(attr)
    return out


def module_stack(node: fx.Node) -> list[str]:
    """Qualified names of the modules running ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [str(v[0]) for v in stack.values()] + ([str(node.target)] if node.op == "call_module" else [])
    paths = [p.removeprefix("L['self'].").removeprefix("L['self']") for p in paths]
    return [""] + [p for p in paths if p]  # the model's own forward runs everything
