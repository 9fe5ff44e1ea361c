"""Tensor types named by a string, ``x.type("torch.DoubleTensor")``: the dtype they convert to.

The string also names a device (``"torch.cuda.HalfTensor"``), which changes no shape, so for
planning the call is ``x.to(dtype)``; on the shape pass's meta tensors a device move stays on
meta (torch cannot copy a meta tensor out)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["dtype_named", "move_on_meta"]

_DTYPES = (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
)  # fmt: skip
_NAMED: dict[str, torch.dtype] = {}
for _dtype in _DTYPES:
    _name = torch.empty(0, dtype=_dtype).type()  # "torch.DoubleTensor"
    _NAMED[_name] = _dtype
    _NAMED[_name.replace("torch.", "torch.cuda.", 1)] = _dtype


def dtype_named(name: object) -> torch.dtype | None:
    """The dtype of a tensor type's name (``"torch.cuda.DoubleTensor"``: float64), or None."""
    return _NAMED.get(name) if isinstance(name, str) else None


def move_on_meta(name: str, x: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """``x.cpu()``, ``x.cuda(0)``, ``x.to("cpu", torch.float64)``, ``x.type("torch.DoubleTensor")``
    of a meta tensor, kept on meta; None where the method is no device move or the call is not
    one (``x.type()`` names the type; ``x.to(other)``)."""
    if name in ("cpu", "cuda"):
        return x
    if name == "type" and args and not kwargs:
        dtype = dtype_named(args[0])
        return x.to(dtype) if dtype is not None and len(args) == 1 else None
    if name == "to" and not any(isinstance(v, Tensor) for v in (*args, *kwargs.values())):
        devices = {k: "meta" for k in kwargs if k == "device"}
        moved: list[Any] = ["meta" if isinstance(v, (str, torch.device)) else v for v in args]
        return x.to(*moved, **(kwargs | devices))
    return None
