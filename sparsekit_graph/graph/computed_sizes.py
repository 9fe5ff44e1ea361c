"""Sizes the model's code computed from a size attribute rather than read (``C //
self.num_heads``, ``self.a.out_channels // 2``).

Surgery rewrites an attribute to its layer's new count; a number computed from it then changes
too, but by its own formula: ``C // num_heads`` grows while each kept head keeps its width. So
such a number, held by a node none of whose axes follows the attribute (``size_refs``: a rule
that modelled it, such as a merge of heads), is a use of the attribute as a size: the axes the
attribute counts pin (``size_pins``). Kept apart from reads: a number computed from a read
is never its value (``sizes.size_sources``), only the identity (``n * 1``, ``n + 0``) is.
A division or remainder of lengths by a read (``C // self.num_heads`` with ``C`` a traced
length) is one as well: the quotient moves against the count. A number of several attributes
(``self.num_heads // self.num_kv_heads``, a GQA repeat that whole KV groups keep) is left to the
rules where some axis counts each of them; where one counts none (``q.view(b, n, -1, d)``),
surgery leaves it as it is while it rewrites the others, and the number moves: a use of the
others.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch.fx as fx

from .axes import AxisGraph
from .meta import COMPUTED_READS, CONTROL, FOLLOWED_BY, META, SIZE_READS, ReadInt
from .normalize import normalize
from .number_args import SizeUse
from .size_tests import Site

__all__ = ["computed_sizes"]

_QUOTIENTS = (operator.floordiv, operator.truediv, operator.mod)


def computed_sizes(graph: AxisGraph, nodes: Iterable[fx.Node], prefix: str) -> dict[Site, SizeUse]:
    """For each attribute a number computed from it sized a node no axis of which follows it:
    how (``SizeUse``), naming the first such node."""
    found: dict[Site, SizeUse] = {}
    refs: dict[Any, set[Site]] | None = None
    for n in nodes:
        if set(n.users) <= n.meta.get(FOLLOWED_BY, set()) and CONTROL not in n.meta:
            continue  # never used (``head_dim = C // self.heads``), or only where a rule follows it (``ops_reshape``)
        sites = set(n.meta.get(COMPUTED_READS, ()))
        if _number(n) and (SIZE_READS in n.meta or _reads(n)) and normalize(n).op in _QUOTIENTS:
            sites |= _reads(n) | {s for v in (n.meta.get(SIZE_READS) or {}).values() for s in v}
        if not sites:
            continue
        if refs is None:
            refs = {}
            for axis, sources in graph.size_refs.items():
                refs.setdefault(axis, set()).update((s.owner, s.attr) for s in sources)
        near = [prefix + n.name] + [prefix + a.name for a in n.all_input_nodes]
        followed = {s for name in near for a in graph.values.get(name, ()) for s in refs.get(a, ())}
        for site in sorted(sites - followed):
            found.setdefault(site, SizeUse(f"a number computed from it at node {n.name}"))
    if refs is None:
        refs = {axis: {(s.owner, s.attr) for s in sources} for axis, sources in graph.size_refs.items()}
    # an attribute that counts only axes of length 1 (one KV head) is one surgery never rewrites
    counted = set().union(*(sites for axis, sites in refs.items() if graph.size(axis) > 1))
    for n in nodes:
        own = {s for a in graph.values.get(prefix + n.name, ()) for s in refs.get(a, ())}
        for r in _reads_of_several(n):
            if r.sites & own:  # its own axis follows the count (``record_copies``: one KV head's copies)
                continue
            stale = sorted(r.sites - counted)
            for site in sorted(r.sites & counted) if stale else ():
                other = f"{stale[0][0] or 'model'}.{stale[0][1]}"
                why = f"a number computed from it and {other}, which counts no axis, at node {n.name}"
                found.setdefault(site, SizeUse(why))
    return found


def _reads_of_several(n: fx.Node) -> list[ReadInt]:
    """The numbers among the node's arguments computed from several attributes."""
    out: list[ReadInt] = []
    fx.node.map_aggregate((n.args, n.kwargs), lambda x: out.append(x) if isinstance(x, ReadInt) and len(x.sites) > 1 else None)
    return out


def _number(n: fx.Node) -> bool:
    """Is ``n`` arithmetic on Python numbers (lengths), not on tensors (``y / self.num_heads``
    is a value: ``number_uses``)?"""
    value = n.meta.get(META)
    return n.op == "call_function" and isinstance(value, (int, float)) and not isinstance(value, bool)


def _reads(n: fx.Node) -> set[Site]:
    """Sites of the ``ReadInt``s among the node's arguments."""
    out: set[Site] = set()
    fx.node.map_aggregate((n.args, n.kwargs), lambda x: out.update(x.sites) if isinstance(x, ReadInt) else None)
    return out
