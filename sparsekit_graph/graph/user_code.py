"""Whose code is running: the model's own (a use it makes of a tracked size is recorded) or
torch's or ours (``size_values``, ``length_reads``)."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

__all__ = ["INTERNAL", "by_user", "caller", "is_stand_in", "stand_in"]

INTERNAL = tuple(os.path.dirname(str(m.__file__)) + os.sep for m in (torch, sys.modules[__package__.rpartition(".")[0]]))


def _stand_in_codes() -> frozenset[Any]:
    """Code of torch functions that stand in for builtins while the forward is traced:
    ``torch.export``'s ``max``/``min``, torch.fx's wrapper of a ``math`` function it patched
    (``from math import sqrt`` in the model's module): a use they make is the model's own."""
    codes: set[Any] = set()
    try:
        from torch._export.non_strict_utils import _tensor_min_max
    except ImportError:  # another torch: nothing stands in
        pass
    else:
        codes |= {_tensor_min_max.__code__, *(c for c in _tensor_min_max.__code__.co_consts if hasattr(c, "co_filename"))}
    codes.add(torch.is_tensor.__code__)  # ``isinstance(obj, torch.Tensor)`` on the model's behalf
    wrap = getattr(torch.fx._symbolic_trace, "_create_wrapped_func", None)
    if wrap is not None:
        codes.add(wrap(abs).__code__)
    return frozenset(codes)


_STAND_INS = set(_stand_in_codes())


def stand_in(fn: Any) -> Any:
    """Count ``fn`` (ours, standing in for a builtin: ``length_reads``' ``len``) as its caller."""
    _STAND_INS.add(fn.__code__)
    return fn


def is_stand_in(frame: Any) -> bool:
    """Does ``frame`` run a stand-in for a builtin (a use it makes is its caller's)?"""
    return frame.f_code in _STAND_INS


def by_user(depth: int) -> bool:
    """Is the frame ``depth`` levels up the model's own code (not torch's, not ours)? Frames
    of torch's stand-ins for builtins (``_STAND_INS``) count as their caller's."""
    frame = sys._getframe(depth + 1)
    while frame.f_code in _STAND_INS and frame.f_back is not None:
        frame = frame.f_back
    return not frame.f_code.co_filename.startswith(INTERNAL)


def caller(frame: Any) -> str:
    """Where torch's code converted a number: ``Upsample.__init__``."""
    code = frame.f_code
    return f"{getattr(code, 'co_qualname', code.co_name)} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
