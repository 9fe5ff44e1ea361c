"""Under torch.fx: how each op takes the numbers the model's code made from layer sizes.

``size_reads.finish`` leaves a float made from size attributes in its node's arguments as a
``ReadFloat`` (and a read of one attribute as a ``ReadInt``). Once the graph has shapes, each
node holding one is bound to torch's argument names (``normalize``) and every such number is
classified by its argument (``number_args.takes_as_size``): a value costs the attributes'
groups their zero-invariance, a size pins them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from .meta import SIZE_READS, ReadInt
from .normalize import normalize
from .number_args import ReadFloat, SizeUse, takes_as_size
from .size_values import VALUE, Site

__all__ = ["size_arguments"]


def size_arguments(nodes: Iterable[fx.Node], modules: dict[str, nn.Module]) -> dict[Site, SizeUse | str]:
    """For each size attribute a node's arguments made a number of: ``VALUE`` where every op
    takes it as a value, else a ``SizeUse`` naming the argument and the node."""
    found: dict[Site, SizeUse | str] = {}

    def note(sites: Iterable[Site], use: SizeUse | str) -> None:
        for site in sites:
            if found.get(site) in (None, VALUE):
                found[site] = use

    for node in nodes:
        if node.op not in ("call_function", "call_method", "call_module") or not _holds_read(node):
            continue
        call = normalize(node, modules.get(str(node.target)) if node.op == "call_module" else None)
        if not call.bound:  # nothing says which argument a float is: fail closed
            for v in _numbers((node.args, node.kwargs)):
                if isinstance(v, ReadFloat):
                    note(v.sites, SizeUse(f"an argument of node {node.name}, which does not bind"))
            continue
        for arg, value in call.args.items():
            for v in _numbers(value):
                size = takes_as_size(call.op, arg, v)
                sites = _sites(v)
                if size:
                    note(sites, SizeUse(f"argument {arg} of node {node.name}"))
                elif size is not None:
                    note(sites, VALUE)
    return found


def _holds_read(node: fx.Node) -> bool:
    return SIZE_READS in node.meta or any(isinstance(v, ReadFloat) for v in _numbers((node.args, node.kwargs)))


def _sites(v: Any) -> frozenset[Site]:
    """The attributes number ``v`` was made from (none for a literal: a value equal to two
    attributes is a plain int, whose ``SIZE_READS`` entry may be another literal of that value)."""
    return v.sites if isinstance(v, (ReadFloat, ReadInt)) else frozenset()


def _numbers(a: Any) -> list[Any]:
    """The ints and floats in ``a`` (through tuples, lists and dicts), nodes left out."""
    out: list[Any] = []

    def visit(x: Any) -> None:
        if isinstance(x, (tuple, list)):
            for e in x:
                visit(e)
        elif isinstance(x, dict):
            for e in x.values():
                visit(e)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(x)

    visit(a)
    return out
