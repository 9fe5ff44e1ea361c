"""Which attributes of a model's own config objects its forward reads while traced.

Literal sizes are matched to the attributes they equal (``sizes.py``); a plain config object
(a dataclass, nanoGPT's ``GPTConfig``) may hold two attributes of one value, only one of
which the code reads (``view(..., self.config.width)`` beside ``hidden_size`` of the same
value). Surgery rewrites the matched attribute, so a match counts only if the forward read
it. Hugging Face configs keep their own handling (their attributes are read in ``__init__``
and rewritten by the HF surgery); a config whose class cannot be swapped is not recorded, and
every attribute of it may match, as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.fx as fx
from torch import nn

from .meta import CONFIG_READS, EXPORTED
from .size_reads import wrap_config_read

__all__ = ["config_reads", "read_by_forward", "recording_config_reads"]


@contextmanager
def recording_config_reads(modules: Iterable[nn.Module]) -> Iterator[dict[int, set[str]]]:
    """While active, every attribute read of a plain ``config`` of these layers (a model's
    ``modules()``) is recorded: ``{id(config): names}``. The configs' classes are restored afterwards."""
    reads: dict[int, set[str]] = {}
    swapped: list[tuple[Any, type]] = []
    configs = {id(c): c for m in modules if _plain(c := m.__dict__.get("config"))}  # no __getattr__ misses
    try:
        for c in configs.values():
            names: set[str] = reads.setdefault(id(c), set())
            cls = type(c)
            try:
                object.__setattr__(c, "__class__", _recorder(cls, names))
            except TypeError:  # a builtin or slotted class: not recorded
                del reads[id(c)]
                continue
            swapped.append((c, cls))
        yield reads
    finally:
        for c, cls in swapped:
            object.__setattr__(c, "__class__", cls)


def _recorder(cls: type, names: set[str]) -> type:
    def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807
        names.add(name)
        return wrap_config_read(self, name, cls.__getattribute__(self, name))

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__})


def _plain(c: object) -> bool:
    """A config object of the user's own (not a layer, not a Hugging Face config)."""
    if c is None or isinstance(c, (nn.Module, int, float, str, bool, dict, list, tuple)):
        return False
    transformers = sys.modules.get("transformers")
    hf = getattr(transformers, "PretrainedConfig", None) if transformers is not None else None
    return hf is None or not isinstance(c, hf)


def config_reads(graph: fx.Graph, reads: dict[int, set[str]]) -> None:
    """Keep the recorded reads on ``graph``'s output node."""
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    if out is not None:
        out.meta[CONFIG_READS] = {k: frozenset(v) for k, v in reads.items()}


def read_by_forward(node: fx.Node, config: object, attr: str) -> bool:
    """Did the forward that ``node`` belongs to read ``config.attr``? Where unrecorded: True
    under torch.export (its literals may come from anywhere; Hugging Face configs are rewritten
    by their own surgery), False under torch.fx (a ``SimpleNamespace`` or Hugging Face config of
    a user's module: a literal ``4`` beside ``config.num_attention_heads = 4`` is no read)."""
    graph = getattr(node, "graph", None)
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None) if graph is not None else None
    recorded = out.meta.get(CONFIG_READS, {}).get(id(config)) if out is not None else None
    if recorded is None:
        return out is None or bool(out.meta.get(EXPORTED))
    return attr in recorded
