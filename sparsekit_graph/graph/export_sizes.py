"""Concrete sizes for an exported graph's fake values, data-dependent ones included.

``torch.export`` gives each node a fake value whose sizes may be symbolic. A backed symbol (the
dynamic batch) has its example's value as a hint; an unbacked one (``aten.item``: DeBERTa's
``torch.tensor(min(...))`` attention span, XLM's ``lengths.max().item()``, BART's count of
``eos`` tokens) has none, and ``int()`` of it raises ``GuardOnDataDependentSymNode``. Where the
graph holds such a symbol, the exported graph is run once on the example inputs (``real_run``)
and each such node takes the value it computed there: the sizes the forward had on the example,
as the hints are for backed symbols. Where it cannot run (meta inputs, or ``prune``'s zero
inputs on which the code fails), torch's guess within the symbol's known range stands in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

__all__ = ["meta_value", "real_run"]


def real_run(ep: torch.export.ExportedProgram, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The values the nodes whose fake value holds an unbacked symbol take on the example, by
    name; empty where none does, or where the graph cannot run on the example (meta inputs: no
    data to decide on, and ``meta_value`` raises torch's error as before)."""
    wanted = {n.name for n in ep.graph.nodes if free_unbacked_symbols(n.meta.get("val"))}
    if not wanted:
        return {}
    found: dict[str, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in wanted:
                found[n.name] = out
            return out

    try:
        flat = ep._graph_module_flat_inputs(args, kwargs)
        with torch.no_grad():
            _Recorder(ep.graph_module).run(*flat)
    except Exception:  # noqa: BLE001 - no run, no values: the caller sizes what it can and raises otherwise
        return {}
    return found


def meta_value(v: Any, real: Any = None) -> Any:
    """A fake value as meta tensors with concrete sizes: a symbolic size takes its example's
    (the hint, else ``real``: the node's value in ``real_run``)."""
    if isinstance(v, Tensor):
        shape = real.shape if isinstance(real, Tensor) and real.dim() == v.dim() else [None] * v.dim()
        return torch.empty([_int(s, r) for s, r in zip(v.shape, shape)], dtype=v.dtype, device="meta")
    if isinstance(v, (tuple, list)):
        parts = real if isinstance(real, (tuple, list)) and len(real) == len(v) else [None] * len(v)
        return type(v)(meta_value(x, r) for x, r in zip(v, parts))
    if isinstance(v, torch.SymInt):
        return _int(v, real)
    return v


def _int(s: Any, real: Any = None) -> int:
    """``s``'s example value: its hint, else its value in ``real_run``, else the shape
    environment's guess within what the trace assumed of it (``optimization_hint``: ``prune``
    traces with zero inputs, on which BART finds no ``eos`` and the graph cannot run; both of
    its traces guess alike)."""
    if isinstance(s, torch.SymInt):
        hint = s.node.hint
        if hint is not None:
            return int(hint)
        if isinstance(real, (int, Tensor)) and not isinstance(real, bool):
            return int(real)
        env = s.node.shape_env
        try:
            return int(env.optimization_hint(s.node.expr)) if env is not None else int(s)
        except Exception:  # noqa: BLE001 - no guess: torch's own error below
            pass
    return int(s)
