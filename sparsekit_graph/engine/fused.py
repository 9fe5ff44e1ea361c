"""Fused kernels of the conditioned prox: one compiled loop per sweep over a piece (optional).

The conditioned prox (``engine/solve.py``) sweeps every piece a few times: once for the setup sums,
once per Newton step, once for the write. Eager torch spells each sweep as a handful of
elementwise kernels over cache-sized chunks; ``torch.compile`` (inductor; a C++ compiler on CPU)
fuses a sweep into one loop that reads ``w`` and ``h`` once and keeps nothing else in memory. The
formulas are the eager path's (the write is bit-identical to it; sums agree to float32 rounding,
which Newton's stopping test is built for).

Which path runs is ``kernel_mode()``: ``"eager"`` (never compile), ``"compiled"`` (every float32 or
half piece), ``"auto"`` (the default: pieces of at least ``MIN_NUMEL`` elements, where a sweep is long
enough for compiling to pay back; small models never compile). Set it with ``set_kernel_mode`` or
the environment variable ``SPARSEKIT_GRAPH_PROX_KERNELS``. If compiling fails (no compiler, an
unsupported platform), a warning is issued once and the eager path is used from then on: nothing
needs to be compiled at install time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..errors import SparseKitError

__all__ = ["MIN_NUMEL", "kernel_mode", "set_kernel_mode", "setup_sums", "sweep_sums", "sweep_sums_exact", "write_shrink"]

MIN_NUMEL = 1 << 16  # "auto": pieces from this size on are compiled (65,536 elements)
_MODES = ("auto", "eager", "compiled")
_ENV = "SPARSEKIT_GRAPH_PROX_KERNELS"
_RECOMPILES = 64  # layouts (outer/inner sizes of 1, reduction lengths) each get a kernel; ResNet-50 needs ~10


def _initial_mode() -> str:
    mode = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    return mode if mode in _MODES else "auto"


_state: dict[str, Any] = {"mode": _initial_mode(), "broken": None, "fns": {}}


def kernel_mode() -> str:
    """``"auto"``, ``"eager"`` or ``"compiled"``: which kernels the conditioned prox uses."""
    return str(_state["mode"])


def set_kernel_mode(mode: str) -> str:
    """Choose the conditioned prox's kernels; returns the previous mode.

    Raises:
        SparseKitError: ``mode`` is not one of ``"auto"``, ``"eager"``, ``"compiled"``.
    """
    if mode not in _MODES:
        raise SparseKitError(f"kernel mode must be one of {_MODES}, got {mode!r}")
    old, _state["mode"] = _state["mode"], mode
    return str(old)


def wants(w: Tensor) -> bool:
    """Whether a piece's sweeps go through the compiled kernels (never under a Python dispatch
    mode, e.g. an op counter or ``FakeTensorMode``: compiled code cannot run there)."""
    mode = _state["mode"]
    if mode == "eager" or _state["broken"] is not None or w.dtype == torch.float64 or not w.numel():
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    return mode == "compiled" or w.numel() >= MIN_NUMEL


def wants_exact(w: Tensor, h: Tensor) -> bool:
    """Whether a float64 copy of rows ``(1, R, P)`` (Newton's copies of the blocks near death) sweeps
    through the compiled float64 kernel: in ``"compiled"`` mode, and in ``"auto"`` once some piece
    has compiled in this process (the copies are small, but swept a few times every call)."""
    mode = _state["mode"]
    if mode == "eager" or _state["broken"] is not None or not w.numel() or w.shape[0] != 1:
        return False
    if w.dtype != torch.float64 or h.dtype != torch.float64 or _get_current_dispatch_mode() is not None:
        return False
    return mode == "compiled" or bool(_state["fns"])


# -- the kernels, written once for eager semantics and compiled -------------------------------------
# Three layouts, each its own compiled function (fewer recompiles): rows (A = 1, as (R, P)),
# columns (A > 1, short P: float32 over P, float64 down A) and wide (A > 1, long P: float64 over
# both). Elements are float32, sums accumulate in float64: a sum's error is then its terms'
# rounding (a few float32 ulps), which the solver's float64 re-solve criterion relies on.
def _setup_terms(w: Tensor, h: Tensor) -> list[Tensor]:
    w, h = w.float(), h.float()
    y, q = h * w, w / h
    yy = y * y
    return [yy, w * w, w * q, q * q, yy * h]  # ||y||^2, ||w||^2, sum w^2/h, sum w^2/h^2, sum y^2 h


def _sweep_terms(w: Tensor, h: Tensor, mu: Tensor) -> list[Tensor]:
    w, h = w.float(), h.float()
    d = h + mu
    u = h * w / d
    return [u * u, u * (u / d)]  # y^2/(h+mu)^2, y^2/(h+mu)^3


def _rows_setup(w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([t.double().sum(1) for t in _setup_terms(w, h)])


def _rows_sweep(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:
    return torch.stack([t.double().sum(1) for t in _sweep_terms(w, h, mu[:, None])])


def _cols_setup(w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([t.sum(2).double().sum(0) for t in _setup_terms(w, h)])


def _cols_sweep(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:
    return torch.stack([t.sum(2).double().sum(0) for t in _sweep_terms(w, h, mu[None, :, None])])


def _wide_setup(w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([t.double().sum((0, 2)) for t in _setup_terms(w, h)])


def _wide_sweep(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:
    return torch.stack([t.double().sum((0, 2)) for t in _sweep_terms(w, h, mu[None, :, None])])


def _flat_setup(w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([t.double().sum(0) for t in _setup_terms(w, h)])


def _flat_sweep(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:
    return torch.stack([t.double().sum(0) for t in _sweep_terms(w, h, mu[None, :])])


# Tiled: the outer axis cut into (A / TILE, TILE) sums TILE terms in float32 first, so the loop
# converts to float64 once per TILE elements (2x faster on a 1x1 conv's input channels; a few
# float32 ulps of error, like the float32 runs of "cols"). Rows are not tiled: inductor makes the
# two reductions two loops with float32 partial sums in memory between them, and over a row that
# costs more than the conversions it saves (setup 7.2 -> 5.4 ms, sweep 5.4 -> 3.4 ms on a 2048 x
# 4608 piece, 1 thread; the flat layout keeps its tiles: 2048 x 512 setup 1.25 tiled, 2.38 not).
def _rows_sweep64(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:  # float64 throughout: Newton's float64 copies
    d = h + mu[:, None]
    u = h * w / d
    return torch.stack([(u * u).sum(1), (u * (u / d)).sum(1)])


def _flat8_setup(w: Tensor, h: Tensor) -> Tensor:  # (A / TILE, TILE, N)
    return torch.stack([t.sum(1).double().sum(0) for t in _setup_terms(w, h)])


def _flat8_sweep(w: Tensor, h: Tensor, mu: Tensor) -> Tensor:
    return torch.stack([t.sum(1).double().sum(0) for t in _sweep_terms(w, h, mu[None, None, :])])


_SHORT = 64  # inner runs up to this long are summed in float32 first (a 3x3 kernel: 9 terms)
TILE = 8
_KERNELS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "rows": (_rows_setup, _rows_sweep),
    "flat": (_flat_setup, _flat_sweep),
    "flat8": (_flat8_setup, _flat8_sweep),
    "cols": (_cols_setup, _cols_sweep),
    "wide": (_wide_setup, _wide_sweep),
}


def _flat(x: Tensor) -> bool:
    """Rows and their runs are one contiguous run per outer index: ``(A, R, P)`` reads as ``(A, R P)``."""
    return (x.shape[2] == 1 or x.stride(2) == 1) and (x.shape[1] == 1 or x.stride(1) == x.shape[2])


def _layout(w: Tensor, h: Tensor) -> str:
    """rows: ``A = 1``; flat: ``(R, P)`` contiguous (a conv's input channels, ``P`` = its kernel size,
    1 included: the sums run down ``A`` over contiguous vectors, then over ``P``); else cols (short
    ``P``) or wide."""
    if w.shape[0] == 1:
        return "rows"
    if _flat(w) and _flat(h):  # also a 1x1 conv's input channels, (A, R, 1)
        return "flat"
    return "cols" if w.shape[2] <= _SHORT else "wide"


def _write(w: Tensor, h: Tensor, mu: Tensor) -> None:
    """``w <- w h / (h + mu)`` in place (``mu`` per row of ``(A, R, P)``)."""
    _shrink(w, h, mu[None, :, None])


def _write_flat(w: Tensor, h: Tensor, mu: Tensor) -> None:
    """``w <- w h / (h + mu)`` in place for ``(A, N)`` (``mu`` per column)."""
    _shrink(w, h, mu[None, :])


def _shrink(w: Tensor, h: Tensor, mu: Tensor) -> None:
    shrink = h.float() / (h.float() + mu)
    if w.dtype == torch.float32:
        w.mul_(shrink)
    else:
        w.copy_(w.float() * shrink)


def _compiled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    fns = _state["fns"]
    if name not in fns:
        fns[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return fns[name]


def _run(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    if "patch" not in _state:  # made once: building a config patch costs more than a small kernel
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        _state["patch"] = torch._dynamo.config.patch(**{limit: _RECOMPILES})
    try:
        with _state["patch"], torch.no_grad():
            return _compiled(name, fn)(*args)
    except Exception as e:  # noqa: BLE001 - any failure to compile means: use the eager kernels
        _state["broken"] = f"{type(e).__name__}: {e}"
        warnings.warn(f"sparsekit_graph: compiled prox kernels unavailable, using eager ones ({_state['broken']})", stacklevel=3)
        return None


def _sums(which: int, w: Tensor, h: Tensor, *rest: Tensor) -> Tensor | None:
    layout = _layout(w, h)
    a, r, inner = w.shape
    if layout == "rows":
        return _run(f"rows{which}", _KERNELS["rows"][which], w[0], h[0], *rest)
    if layout != "flat":
        return _run(f"{layout}{which}", _KERNELS[layout][which], w, h, *rest)
    mu = [m.repeat_interleave(inner) if inner > 1 else m for m in rest]
    if a % TILE == 0 and a >= 2 * TILE:
        tiled = (a // TILE, TILE, r * inner)
        out = _run(f"flat8{which}", _KERNELS["flat8"][which], w.view(tiled), h.view(tiled), *mu)
    else:
        out = _run(f"flat{which}", _KERNELS["flat"][which], w.view(a, r * inner), h.view(a, r * inner), *mu)
    return None if out is None else (out.view(-1, r, inner).sum(2) if inner > 1 else out)


def setup_sums(w: Tensor, h: Tensor) -> Tensor | None:
    """``(5, R)`` float64 setup sums of one piece, or None (compiling failed: use eager)."""
    return _sums(0, w, h)


def sweep_sums(w: Tensor, h: Tensor, mu: Tensor) -> Tensor | None:
    """``(2, R)`` float64 Newton sums at ``mu`` (per row), or None (use eager)."""
    return _sums(1, w, h, mu.float())


def sweep_sums_exact(w: Tensor, h: Tensor, mu: Tensor) -> Tensor | None:
    """``(2, R)`` float64 Newton sums of a float64 ``(1, R, P)`` piece at ``mu``, or None (use eager)."""
    return _run("rows64", _rows_sweep64, w[0], h[0], mu.double())


def write_shrink(w: Tensor, h: Tensor, mu: Tensor) -> bool:
    """``w *= h / (h + mu)`` in place; False when compiling failed (``w`` untouched: use eager)."""
    if _state["broken"] is not None:
        return False
    a, r, inner = w.shape
    if a > 1 and _flat(w) and _flat(h):  # (A, R P), mu spelled out along each run: the loop vectorises
        m = mu.float() if inner == 1 else mu.float().repeat_interleave(inner)
        _run("write_flat", _write_flat, w.view(a, r * inner), h.view(a, r * inner), m)
    else:
        _run("write", _write, w, h, mu.float())
    return _state["broken"] is None
