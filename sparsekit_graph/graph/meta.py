"""Keys of the analyses stored on ``node.meta`` (the ShapeProp idiom)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.fx as fx

__all__ = [
    "CALL",
    "COMPUTED_READS",
    "FOLLOWED_BY",
    "CONFIG_READS",
    "CONSTANT",
    "CONTROL",
    "DATA_SWAPPED",
    "EXPORTED",
    "GRAD_MODE_READ",
    "HIDDEN_SOURCES",
    "HIDDEN_WRITES",
    "KEPT_STATE",
    "META",
    "MODULE_READS",
    "ReadInt",
    "SIZE_CONTROL",
    "SIZE_READS",
    "SIZE_TESTS",
    "TO_CHECK",
    "TRACED_CONSTANT",
    "VALUE_READS",
    "is_exported",
    "output_node",
]

META = "skg.value"  # the node's value computed on the meta device
CALL = "skg.call"  # the node's normalised Call (see normalize.py)
EXPORTED = "skg.exported"  # on the output node of a graph traced by torch.export
GRAD_MODE_READ = "skg.grad_mode_read"  # on the output node: the autograd queries the forward made (``forward_modes``)
CONSTANT = "skg.constant"  # a small integer constant tensor torch.export lifted: its real values
WRITTEN_BUFFER = "skg.written_buffer"  # on a get_attr node: forward writes this buffer (``out=``, in place)
TRACED_CONSTANT = "skg.traced_constant"  # a tensor torch.fx made a constant (``torch.tensor(...)`` in forward)
CONTROL = "skg.control"  # a traced number Python read: "branch", "loop", "number", or "value" (``flow_values``)
CONFIG_READS = "skg.config_reads"  # on the output node: {id(config): attributes the forward read}
COMPUTED_READS = "skg.computed_reads"  # {(layer path, attribute)}: numbers the node's arguments computed from them
FOLLOWED_BY = "skg.followed_by"  # on a number: the users whose rules made the size it gives follow pruning (``C // heads``)
SIZE_READS = "skg.size_reads"  # {literal: {(layer path, attribute)}}: layer size attributes the node's arguments read
SIZE_CONTROL = "skg.size_control"  # on the output node: {(layer path, attribute): how Python control flow used it}
SIZE_TESTS = "skg.size_tests"  # on the output node: the SizeTests (decisions on one attribute) of the forward
VALUE_READS = "skg.value_reads"  # on the output node (torch.fx): {model tensor path: how forward used its values}
TO_CHECK = "skg.to_check"  # on the output node: why the graph is checked against the eager forward, whatever it asks
MODULE_READS = "skg.module_reads"  # on the output node (torch.fx): {module path: size attributes its forward read}
# On the output node (torch.fx): {model tensor path: True where every write the forward made into it past the graph
# kept zeros, False where one did not, None where it swapped the tensor's data} (``hidden_writes``)
HIDDEN_WRITES = "skg.hidden_writes"
KEPT_STATE = "skg.kept_state"  # on a node (torch.fx): the model attribute the forward kept it in (``self.h = h``)
HIDDEN_SOURCES = "skg.hidden_sources"  # on the output node: {written path: {model tensor path written into it: read as is}}
DATA_SWAPPED = "skg.data_swapped"  # on a node: the forward set its ``.data`` (where, in words)


def is_exported(graph: fx.Graph) -> bool:
    """Was this graph traced by ``torch.export`` (ATen ops, eval forward only)?"""
    return any(n.op == "output" and n.meta.get(EXPORTED) for n in reversed(graph.nodes))


class ReadInt(int):
    """An int argument of a node that the model's code read from one size attribute: ``site``
    is (layer path, attribute). Where two attributes have one value (4 heads of 4), its
    position in the call says which one it is; ``SIZE_READS`` (by value) cannot. ``derived``:
    a number the code computed from the attribute (``c // 2``), not its value. ``sites``: every
    attribute it was computed from (``self.num_heads // self.num_kv_heads``: both, derived;
    ``site`` is then the first of them and names no attribute of its value). ``formula``: for a
    number computed from one attribute, how (``attribute_sizes.Formula``), so a split size or
    slice bound can check that it follows the pruned attribute (``split_sizes``); None otherwise."""

    site: tuple[str, str]
    derived: bool
    sites: frozenset[tuple[str, str]]
    formula: Any = None

    def __new__(
        cls, value: int, site: tuple[str, str], derived: bool = False, sites: frozenset[tuple[str, str]] | None = None
    ) -> ReadInt:
        obj = int.__new__(cls, value)
        obj.site, obj.derived, obj.sites = site, derived, sites or frozenset({site})
        return obj

    def __getnewargs__(self) -> tuple[int, tuple[str, str], bool, frozenset[tuple[str, str]]]:  # copies keep the sites
        return int(self), self.site, self.derived, self.sites

    def __getstate__(self) -> dict[str, Any]:  # a formula is a function: copies share it, pickles drop it
        return {k: v for k, v in vars(self).items() if k != "formula"}

    def __deepcopy__(self, memo: dict) -> ReadInt:
        return self


def output_node(graph: fx.Graph) -> fx.Node:
    """The graph's output node (where whole-graph notes live)."""
    return next(n for n in reversed(graph.nodes) if n.op == "output")


def upstream(node: fx.Node) -> Iterator[fx.Node]:
    """``node`` and every node it reads, transitively, each once."""
    todo, seen = [node], {node}
    while todo:
        n = todo.pop()
        yield n
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
