"""Values computed from the model's own tensors alone: weights a product's operand stands for.

``x @ (w * mask).T``, ``torch.einsum("...c,oc->...o", x, w + lora_b @ lora_a)`` and
``x @ w.softmax(0).T`` pass a weight the forward computes from parameters, exactly as
``F.linear(x, w * mask)`` does. The rules of the ops that compute it link (or pin, or mix) its
axes to the parameters'; a product then produces its output channels from it, as it does from
a parameter used directly. Anything that reads an input or calls a layer upstream is an
activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from weakref import WeakKeyDictionary

import torch.fx as fx

__all__ = ["from_parameters"]

_MEMO: WeakKeyDictionary[fx.Graph, dict[fx.Node, bool]] = WeakKeyDictionary()


def from_parameters(x: fx.Node, aliases: Mapping[str, str] | None) -> bool:
    """Is ``x`` computed from parameters or buffers (``aliases``: get_attr node -> parameter
    name) and constants only, with at least one of them upstream and no input or layer call?"""
    memo = _MEMO.get(x.graph)
    if memo is None or x not in memo:
        memo = _MEMO[x.graph] = _classify(x.graph, aliases or {})
    return memo.get(x, False)


def _classify(graph: fx.Graph, aliases: Mapping[str, str]) -> dict[fx.Node, bool]:
    """One pass in topological order: a node is a parameter value if no input of it is an
    activation and some input (or the node itself) is a parameter or buffer."""
    active: dict[fx.Node, bool] = {}
    owned: dict[fx.Node, bool] = {}
    for n in graph.nodes:
        ins = n.all_input_nodes
        active[n] = n.op in ("placeholder", "call_module", "output") or any(active[a] for a in ins)
        owned[n] = (n.op == "get_attr" and n.name in aliases) or any(owned[a] for a in ins)
    return {n: owned[n] and not active[n] for n in graph.nodes}
