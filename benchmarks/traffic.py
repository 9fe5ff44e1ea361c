"""Bytes a call moves through memory, counted op by op: a figure the machine's load cannot disturb.

``Traffic`` is a ``TorchDispatchMode`` that adds up, for every aten op, the bytes of the tensors it
reads and writes (an in-place or ``out=`` argument counts as written; views and metadata ops count
nothing). Only tensors that memory holds rather than a cache are counted: those on a persistent
storage (the parameters and optimizer state handed in) and temporaries larger than ``cache`` bytes;
a small scratch buffer reused chunk by chunk is taken to stay in cache. Where a call is bound by
memory bandwidth (large tensors on a few cores of a server), its time is about its bytes over the
bandwidth, so ratios of bytes predict ratios of times; where it is bound by kernel count or compute,
they do not, which is why ``ops`` is counted too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_VIEWS = {
    "_reshape_alias", "_unsafe_view", "alias", "as_strided", "chunk", "detach", "expand", "lift_fresh", "narrow",
    "permute", "reshape", "select", "slice", "split", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view",
}  # fmt: skip


def _bytes(t: Tensor) -> int:
    """Bytes addressed by ``t`` (a broadcast view counts its storage once)."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    return min(t.numel(), span) * t.element_size()


def _key(t: Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


class Traffic(TorchDispatchMode):
    """Counts ``read``, ``written`` bytes and ``ops`` (aten ops other than views) while active.

    Args:
        persistent: Tensors whose storages are always counted (parameters, optimizer state).
        cache: Temporaries up to this many bytes are taken to stay in cache.
    """

    def __init__(self, persistent: Iterable[Tensor] = (), cache: int = 1 << 21) -> None:
        super().__init__()
        self.keep = {t.untyped_storage().data_ptr() for t in persistent}
        self.cache, self.read, self.written, self.ops = cache, 0, 0, 0

    @property
    def total(self) -> int:
        return self.read + self.written

    def _counted(self, t: Tensor) -> bool:
        st = t.untyped_storage()
        return st.data_ptr() in self.keep or st.nbytes() > self.cache

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._schema.name.split("::")[-1] in _VIEWS:
            return out
        self.ops += 1
        mutated: list[Tensor] = []
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                v = kwargs.get(a.name, args[i] if i < len(args) else None)
                mutated += [x for x in tree_flatten(v)[0] if isinstance(x, Tensor)]
        written = {m.untyped_storage().data_ptr() for m in mutated}
        fresh = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor) and o.untyped_storage().data_ptr() not in written]
        ins = list({_key(a): a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)}.values())  # x * x reads x once
        self.read += sum(_bytes(a) for a in ins if self._counted(a))
        self.written += sum(_bytes(o) for o in mutated + fresh if self._counted(o))
        return out


def count(fn: Any, persistent: Iterable[Tensor]) -> Traffic:
    """Run ``fn()`` once under a ``Traffic`` counter and return it."""
    with torch.no_grad(), Traffic(persistent) as tr:
        fn()
    return tr
