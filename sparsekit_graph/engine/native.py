"""Native loops for the Euclidean prox's per-weight passes (``engine/sweeps.py``): plain C, built once.

On by default on CPU: the first call builds four plain C loops with the system C compiler (no torch
or Python headers: about a second, see ``engine/cbuild.py``), caches the shared library per user and
loads it with ``ctypes``; later processes only load it. The CPU float32 passes then take them:
weighted column and row sums of squares, ``M[o, i] = sum_k w[o, i, k]^2`` and the two-factor write,
each one pass over the weight with no scratch buffer (the eager kernels square into scratch, then run
a GEMV). ``ctypes`` releases the GIL during each call, so the worker threads of ``engine/workers.py``
run them side by side. Sums are float32 as in the eager path (in another order: equal to rounding);
the write multiplies in the eager order, so it is bit-identical. No compiler, or a failed build: one
warning, and the eager kernels from then on. ``set_native(False)`` or
``SPARSEKIT_GRAPH_EUCLID_KERNELS=eager`` forces the eager kernels, ``native`` (or ``set_native(True)``)
the loops.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings

import torch
from torch import Tensor

from . import cbuild
from .native_source import SOURCE

__all__ = ["SOURCE", "enabled", "m_sums", "set_native", "weighted_cols", "weighted_rows", "write_two"]

_ENV = "SPARSEKIT_GRAPH_EUCLID_KERNELS"
_state: dict[str, object] = {"on": os.environ.get(_ENV, "native") != "eager", "lib": None, "broken": None}
_LOCK = threading.Lock()  # worker threads may ask first: one build


_P, _N = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "sk_wcols": [_P, _N, _N, _N, _P, _P],
    "sk_wrows": [_P, _N, _N, _N, _P, _P],
    "sk_msum": [_P, _N, _N, _P],
    "sk_scale2": [_P, _N, _N, _N, _P, _P, ctypes.c_int],
    "sk_reads": [_P, _N],
    "sk_writes": [_P, _N],
    "sk_factors": [_P, _P, _P, _N, _P, ctypes.c_int, _N, ctypes.c_double, ctypes.c_double, _P, _P, _P, _P],
    "sk_program": [_P, _P, _N, _N, ctypes.c_int, ctypes.c_double, ctypes.c_double],
}
_RETURNS = {"sk_program": ctypes.c_int64}


def flags() -> list[str]:
    """The compiler flags (``-march=native`` on x86-64: the AVX the loops are written for)."""
    return ["-O3", "-std=gnu11", "-fno-math-errno", "-pthread"] + (["-march=native"] if os.uname().machine == "x86_64" else [])


def set_native(on: bool) -> bool:
    """Turn the native loops on or off; returns the previous setting."""
    was = bool(_state["on"])
    _state["on"] = bool(on)
    return was


def _lib() -> ctypes.CDLL | None:
    if not _state["on"] or _state["broken"] is not None:
        return None
    if _state["lib"] is not None:
        return _state["lib"]  # type: ignore[return-value]
    with _LOCK:
        return _state["lib"] if _state["lib"] is not None else _build()  # type: ignore[return-value]


def _build() -> ctypes.CDLL | None:
    if _state["broken"] is None:
        try:
            lib = cbuild.load("sparsekit_graph_euclid", SOURCE, flags())
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, _RETURNS.get(name)
            _state["lib"] = lib
        except (cbuild.BuildError, OSError, AttributeError) as exc:  # no compiler or a failed build: eager from now on
            _state["broken"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"sparsekit_graph: native Euclidean kernels unavailable, using eager ones ({_state['broken']})", stacklevel=4
            )
    return _state["lib"]  # type: ignore[return-value]


def _loaded() -> ctypes.CDLL:
    return _state["lib"]  # type: ignore[return-value]


def _fits(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1)


def enabled(x: Tensor) -> bool:
    """Whether the native loops take ``x`` (CPU float32, rows of contiguous columns), building them first."""
    return bool(_state["on"]) and _fits(x) and _lib() is not None


def weighted_cols(x2: Tensor, weights: Tensor | None) -> Tensor:
    """``sum_r weights[r] x[r, c]^2`` (weights default 1) of an ``enabled`` ``(rows, cols)``."""
    rows, cols = x2.shape
    acc = torch.zeros(cols, dtype=torch.float32)
    w = None if weights is None else weights.contiguous()  # held: the pointer must outlive the call
    _loaded().sk_wcols(x2.data_ptr(), rows, cols, x2.stride(0), None if w is None else w.data_ptr(), acc.data_ptr())
    return acc


def weighted_rows(x2: Tensor, weights: Tensor) -> Tensor:
    """``sum_c x[r, c]^2 weights[c]`` of an ``enabled`` ``(rows, cols)``."""
    rows, cols = x2.shape
    out = torch.empty(rows, dtype=torch.float32)
    w = weights.contiguous()
    _loaded().sk_wrows(x2.data_ptr(), rows, cols, x2.stride(0), w.data_ptr(), out.data_ptr())
    return out


def m_sums(chunk: Tensor, out: Tensor) -> None:
    """``out[o, i] = sum_k chunk[o, i, k]^2`` of a contiguous ``(O, I, K)`` into a contiguous ``(O, I)``."""
    n = out.numel()
    _loaded().sk_msum(chunk.data_ptr(), n, chunk.numel() // max(n, 1), out.data_ptr())


def write_two(x2: Tensor, rows: Tensor, cols: Tensor, rows_first: bool) -> None:
    """``x2 *= rows[:, None] * cols[None, :]`` in place, multiplied in the eager kernels' order."""
    r, c = rows.contiguous(), cols.contiguous()
    n, width = x2.shape
    _loaded().sk_scale2(x2.data_ptr(), n, width, x2.stride(0), r.data_ptr(), c.data_ptr(), int(rows_first))
