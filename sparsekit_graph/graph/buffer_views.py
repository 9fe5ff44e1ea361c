"""A buffer reshaped in forward stays the buffer: ``self.scale[:, None, None]``.

torch.fx hands the model's code its buffers as real tensors (``proxy_buffer_attributes`` off:
control flow on a buffer's data, ``self.steps += 1``, must keep working), so an op on a buffer
alone runs at trace time and the graph holds its result as a fresh constant that no rule ties
to the buffer: a per-channel scale indexed to ``(C, 1, 1)`` pinned the channels it scales,
where the same scale kept as a ``(1, C, 1, 1)`` buffer prunes. ``buffer_view`` gives such a
result back as graph ops on the buffer where it is the buffer with unit axes added or dropped
(indexing with ``None``, ``unsqueeze``, ``view(1, -1, 1, 1)``, ``squeeze``): a ``get_attr``
then ``squeeze`` / ``unsqueeze`` nodes, which the rules link to the buffer's axes and the
pruner slices. Any other view (a slice, a transpose, an expand) stays a constant.
"""

from __future__ import annotations

import torch.fx as fx
from torch import Tensor

__all__ = ["buffer_view"]


def buffer_view(tracer: fx.Tracer, a: Tensor, names: dict[int, str]) -> fx.Node | None:
    """``a`` as nodes reading the buffer it views (``names``: buffer id -> its path), or None
    where ``a`` is not a buffer with unit axes added or dropped."""
    base = a._base
    name = names.get(id(base)) if base is not None else None
    if base is None or name is None or not _unit_reshape(a, base):
        return None
    node = tracer.create_node("get_attr", name, (), {})
    for d in reversed(range(base.ndim)):
        if base.shape[d] == 1:
            node = tracer.create_node("call_method", "squeeze", (node, d), {})
    for d, n in enumerate(a.shape):
        if n == 1:
            node = tracer.create_node("call_method", "unsqueeze", (node, d), {})
    return node


def _unit_reshape(a: Tensor, base: Tensor) -> bool:
    """Is ``a`` all of ``base``, in its order, with only unit axes added or dropped?"""
    if a.numel() != base.numel() or a.storage_offset() != base.storage_offset():
        return False
    if not (a.is_contiguous() and base.is_contiguous()) or a.dtype != base.dtype:
        return False
    return [n for n in a.shape if n != 1] == [n for n in base.shape if n != 1]
