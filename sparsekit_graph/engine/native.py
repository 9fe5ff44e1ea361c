"""Optional C++ loops for the Euclidean prox's per-weight passes (``engine/sweeps.py``), built at run time.

Off by default: nothing is compiled at install time, and the pure-torch kernels run. With
``set_native(True)`` or ``SPARSEKIT_GRAPH_EUCLID_KERNELS=native``, the first call builds four plain
loops with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler at run time; minutes on a busy
2-core machine, then cached on disk by torch) and the CPU float32 passes take them: weighted column
and row sums of squares, ``M[o, i] = sum_k w[o, i, k]^2`` and the two-factor write, each one pass
over the weight with no scratch buffer (the eager kernels square into scratch, then run a GEMV).
They release the GIL, so the worker threads of ``engine/workers.py`` run them side by side. Sums
are float32 as in the eager path (in another order: equal to rounding); the write multiplies in the
eager order, so it is bit-identical. If building fails, one warning, and the eager kernels from then on.
"""

from __future__ import annotations

import os
import threading
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

__all__ = ["enabled", "m_sums", "set_native", "weighted_cols", "weighted_rows", "write_two"]

_ENV = "SPARSEKIT_GRAPH_EUCLID_KERNELS"
_state: dict[str, object] = {"on": os.environ.get(_ENV, "eager") == "native", "ext": None, "broken": None}
_LOCK = threading.Lock()  # worker threads may ask first: one build

_SRC = r"""
#include <torch/extension.h>
// acc[c] += v[r] x[r, c]^2 over rows r (v empty: ones); rows at stride ld, columns contiguous
void wcols(torch::Tensor x, torch::Tensor v, torch::Tensor acc) {
  const int64_t R = x.size(0), C = x.size(1), ld = x.stride(0);
  const float* __restrict xp = x.data_ptr<float>();
  const float* vp = v.numel() ? v.data_ptr<float>() : nullptr;
  float* __restrict a = acc.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const float w = vp ? vp[r] : 1.0f;
    const float* row = xp + r * ld;
    for (int64_t c = 0; c < C; ++c) a[c] += w * row[c] * row[c];
  }
}
// out[r] = sum_c v[c] x[r, c]^2
void wrows(torch::Tensor x, torch::Tensor v, torch::Tensor out) {
  const int64_t R = x.size(0), C = x.size(1), ld = x.stride(0);
  const float* __restrict xp = x.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const float* row = xp + r * ld;
    float s[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= C; c += 16)
      for (int j = 0; j < 16; ++j) s[j] += vp[c + j] * row[c + j] * row[c + j];
    float t = 0;
    for (int j = 0; j < 16; ++j) t += s[j];
    for (; c < C; ++c) t += vp[c] * row[c] * row[c];
    o[r] = t;
  }
}
// m[n] = sum_k x[n, k]^2 over a contiguous (N, K)
void msum(torch::Tensor x, torch::Tensor m) {
  const int64_t N = m.numel(), K = x.numel() / std::max<int64_t>(N, 1);
  const float* __restrict xp = x.data_ptr<float>();
  float* __restrict mp = m.data_ptr<float>();
  if (K == 9) {
    for (int64_t n = 0; n < N; ++n) {
      const float* p = xp + n * 9;
      mp[n] = p[0] * p[0] + p[1] * p[1] + p[2] * p[2] + p[3] * p[3] + p[4] * p[4] + p[5] * p[5] + p[6] * p[6] +
              p[7] * p[7] + p[8] * p[8];
    }
    return;
  }
  for (int64_t n = 0; n < N; ++n) {
    float s = 0;
    for (int64_t k = 0; k < K; ++k) s += xp[n * K + k] * xp[n * K + k];
    mp[n] = s;
  }
}
// x[r, c] = (x[r, c] * f[r]) * g[c] (rows_first) or (x[r, c] * g[c]) * f[r]: the eager order
void scale2(torch::Tensor x, torch::Tensor f, torch::Tensor g, bool rows_first) {
  const int64_t R = x.size(0), C = x.size(1), ld = x.stride(0);
  float* __restrict xp = x.data_ptr<float>();
  const float* fp = f.data_ptr<float>();
  const float* __restrict gp = g.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    float* row = xp + r * ld;
    const float a = fp[r];
    if (rows_first) for (int64_t c = 0; c < C; ++c) row[c] = (row[c] * a) * gp[c];
    else for (int64_t c = 0; c < C; ++c) row[c] = (row[c] * gp[c]) * a;
  }
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("wcols", &wcols, py::call_guard<py::gil_scoped_release>());
  m.def("wrows", &wrows, py::call_guard<py::gil_scoped_release>());
  m.def("msum", &msum, py::call_guard<py::gil_scoped_release>());
  m.def("scale2", &scale2, py::call_guard<py::gil_scoped_release>());
}
"""


def set_native(on: bool) -> bool:
    """Turn the C++ kernels on or off; returns the previous setting."""
    was = bool(_state["on"])
    _state["on"] = bool(on)
    return was


def _ext() -> ModuleType | None:
    if not _state["on"] or _state["broken"] is not None:
        return None
    if _state["ext"] is not None:
        return _state["ext"]  # type: ignore[return-value]
    with _LOCK:
        return _state["ext"] if _state["ext"] is not None else _build()  # type: ignore[return-value]


def _build() -> ModuleType | None:
    if _state["broken"] is None:
        try:
            from torch.utils.cpp_extension import load_inline

            flags = ["-O3"] + (["-march=native"] if os.uname().machine == "x86_64" else [])
            _state["ext"] = load_inline("sparsekit_graph_euclid", cpp_sources=[_SRC], extra_cflags=flags, verbose=False)
        except Exception as exc:  # noqa: BLE001 - no compiler, headers, or platform support: eager from now on
            _state["broken"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"sparsekit_graph: native Euclidean kernels unavailable, using eager ones ({_state['broken']})", stacklevel=4
            )
    return _state["ext"]  # type: ignore[return-value]


def _loaded() -> Any:
    return _state["ext"]


def _fits(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1)


def enabled(x: Tensor) -> bool:
    """Whether the native kernels take ``x`` (CPU float32, rows of contiguous columns), building them first."""
    return bool(_state["on"]) and _fits(x) and _ext() is not None


def weighted_cols(x2: Tensor, weights: Tensor | None) -> Tensor:
    """``sum_r weights[r] x[r, c]^2`` (weights default 1) of an ``enabled`` ``(rows, cols)``."""
    acc = torch.zeros(x2.shape[1], dtype=torch.float32)
    w = torch.empty(0) if weights is None else weights.contiguous()
    _loaded().wcols(x2, w, acc)
    return acc


def weighted_rows(x2: Tensor, weights: Tensor) -> Tensor:
    """``sum_c x[r, c]^2 weights[c]`` of an ``enabled`` ``(rows, cols)``."""
    out = torch.empty(x2.shape[0], dtype=torch.float32)
    _loaded().wrows(x2, weights.contiguous(), out)
    return out


def m_sums(chunk: Tensor, out: Tensor) -> None:
    """``out[o, i] = sum_k chunk[o, i, k]^2`` of a contiguous ``(O, I, K)`` into a contiguous ``(O, I)``."""
    _loaded().msum(chunk, out)


def write_two(x2: Tensor, rows: Tensor, cols: Tensor, rows_first: bool) -> None:
    """``x2 *= rows[:, None] * cols[None, :]`` in place, multiplied in the eager kernels' order."""
    _loaded().scale2(x2, rows.contiguous(), cols.contiguous(), rows_first)
