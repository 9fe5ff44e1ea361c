"""A whole call's first reads, and then all its writes, as two tables for the native loops (``engine/native.py``).

``engine/batch.py`` calls the per-weight kernels of ``engine/sweeps.py`` once per parameter: on
``bind(plan(resnet50))`` about 55 reads and 55 writes, each a few small torch ops (views, a
``repeat_interleave`` of a 3x3 weight's column factors, ``contiguous``, the kernel) whose dispatch
costs more than many of the small weights' passes. Here each pass is one row of an ``int64`` table
(pointer, kind, sizes, strides, a row range, the factor or output pointers) and one C call runs the
whole table: the first reads (row or column sums of squares, a 3x3 weight's ``M`` and its row or
column sums) write into one float32 buffer, the writes multiply every weight by its factors in the
eager kernels' order (bit-identical). With worker threads, each table row is a task (big weights'
``M`` and writes in row chunks, as ``sweeps.sums_split`` and ``sweeps.writes_split`` cut them) and
the C calls run side by side: ``ctypes`` releases the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from . import native
from .sweeps import CHUNK, Param, Scratch, _steps
from .wave_plan import _TINY, Wave
from .workers import Task, run_balanced

__all__ = ["first_sums", "later_sums", "usable", "wave_factors", "write_all"]

_W = 13  # int64 per table row (see native.SOURCE)
_ROWS, _COLS, _M, _M_SUMS, _W_ROWS, _W_COLS = 0, 1, 2, 3, 4, 5  # read kinds
_ONE, _TWO = 0, 1  # write kinds
_PROBE = torch.zeros(1, 1)  # what native.enabled asks about: CPU float32 rows


def usable(params: list[Param]) -> bool:
    """Whether the tables take this call: the native loops on and built, every weight on the CPU."""
    on_cpu = all(u.x.device.type == "cpu" and u.x.dtype == torch.float32 for p in params for u in p.uses)
    return on_cpu and native.enabled(_PROBE)  # C dereferences these pointers: host memory only


def _row(x: Tensor, kind: int, shape: tuple[int, int, int], strides: tuple[int, ...], lo: int, hi: int) -> list[int]:
    return [x.data_ptr(), kind, *shape, *strides, lo, hi, 0, 0, 0]


def _reads(params: list[Param], reads: list[int], out: Tensor) -> tuple[list[list[int]], list[list[int]], list[int], dict]:
    """Table rows for the first reads (then the rows that sum ``M``s, which need every chunk of
    ``M``), each row's elements read, and each parameter's slice of ``out``."""
    rows: list[list[int]] = []
    after: list[list[int]] = []
    sizes: list[int] = []
    got: dict[int, Tensor] = {}
    at, base = 0, out.data_ptr()
    for k in reads:
        p = params[k]
        x = p.uses[0].x
        if p.mat is not None and p.mat.shape[2] > 1:
            o, i, kk = p.mat.shape
            p.m = torch.empty(o, i, dtype=torch.float32)
            for s in _steps(o, i * kk, x.device) if p.mat.numel() > CHUNK else [slice(0, o)]:
                rows.append(_row(p.mat, _M, (o, i, kk), (0, 0, 0), s.start, s.stop))
                rows[-1][11] = p.m.data_ptr()
                sizes.append((s.stop - s.start) * i * kk)
            row_use = x.shape[0] == 1
            n = o if row_use else i
            after.append(_row(p.mat, _M_SUMS, (o, i, kk), (0, 0, 0), 0, 0))
            after[-1][10:13] = [base + 4 * at, p.m.data_ptr(), 0 if row_use else 1]
        else:
            a, n, q = x.shape
            rows.append(_row(x, _ROWS if a == 1 else _COLS, (a, n, q), x.stride(), 0, n))
            rows[-1][10] = base + 4 * at
            sizes.append(x.numel())
        got[id(p)] = out[at : at + n]
        at += n
    return rows, after, sizes, got


def first_sums(params: list[Param], reads: list[int], pool: ThreadPoolExecutor | None) -> dict[int, Tensor]:
    """``sweeps.sumsq(p, 0)`` of every parameter ``reads`` lists (by index), keyed by ``id(p)``;
    sets ``p.m`` of the weights with a run ``K > 1``."""
    total = sum(_first_len(params[k]) for k in reads)
    out = torch.empty(total, dtype=torch.float32)
    rows, after, sizes, got = _reads(params, reads, out)
    _run(native._loaded().sk_reads, rows, sizes, pool)
    _run(native._loaded().sk_reads, after, [], None)
    return got


def later_sums(params: list[Param], reads: list[tuple[int, int]], pool: ThreadPoolExecutor | None) -> dict[int, Tensor]:
    """``sweeps.sumsq(p, 1)`` of every read (parameter index, 1) in one table, keyed by ``id(p)``:
    a weight's later use weighted by its earlier use's scale squared, from ``M`` (a run ``K > 1``)
    or the weight read again (a 1x1)."""
    rows: list[list[int]] = []
    sizes: list[int] = []
    got: dict[int, Tensor] = {}
    for k, j in reads:
        p = params[k]
        o, i, kk = p.mat.shape  # type: ignore[union-attr]  # a later use is always of a two-use weight
        row_use = p.uses[j].x.shape[0] == 1
        squared = kk == 1
        src = p.mat if squared else p.m
        out = torch.empty(o if row_use else i, dtype=torch.float32)
        rows.append([src.data_ptr(), _W_ROWS if row_use else _W_COLS, o, i, 1, 0, 0, 0, 0, 0])  # type: ignore[union-attr]
        rows[-1] += [out.data_ptr(), p.factors[1 - j][2].data_ptr(), int(squared)]
        sizes.append(o * i)
        got[id(p)] = out
    _run(native._loaded().sk_reads, rows, sizes, pool)
    return got


def _first_len(p: Param) -> int:
    x = p.uses[0].x
    if p.mat is not None and p.mat.shape[2] > 1:
        return p.mat.shape[0] if x.shape[0] == 1 else p.mat.shape[1]
    return x.shape[1]


def write_all(params: list[Param], writes: list[int], pool: ThreadPoolExecutor | None) -> None:
    """``sweeps.write`` of every parameter ``writes`` lists (by index), one table."""
    rows: list[list[int]] = []
    sizes: list[int] = []
    for k in writes:
        p = params[k]
        if p.mat is None:
            x = p.uses[0].x
            f = p.factors[0][1]
            a, n, q = x.shape
            rows.append(_row(x, _ONE, (a, n, q), x.stride(), 0, n))
            rows[-1][10] = f.data_ptr()
            sizes.append(x.numel())
            continue
        o, i, kk = p.mat.shape
        rows_first = p.uses[0].x.shape[0] == 1
        r, c = p.factors[0 if rows_first else 1][1], p.factors[1 if rows_first else 0][1]
        split = pool is not None and p.mat.numel() > CHUNK
        for s in _steps(o, i * kk, p.mat.device) if split else [slice(0, o)]:
            rows.append(_row(p.mat, _TWO, (o, i, kk), (0, 0, 0), s.start, s.stop))
            rows[-1][10:13] = [r.data_ptr(), c.data_ptr(), int(rows_first)]
            sizes.append((s.stop - s.start) * i * kk)
    _run(native._loaded().sk_writes, rows, sizes, pool)


def _run(fn: Callable[[int, int], None], rows: list[list[int]], sizes: list[int], pool: ThreadPoolExecutor | None) -> None:
    """The table in one C call, or (on the pool) one call per row, balanced by size."""
    if not rows:
        return
    table = torch.tensor(rows, dtype=torch.int64)
    base = table.data_ptr()
    if pool is None or sum(sizes) < CHUNK:
        fn(base, len(rows))
        return
    tasks: list[Task[Scratch]] = [(n, _one_row(fn, base + 8 * _W * e)) for e, n in enumerate(sizes)]
    run_balanced(tasks, pool, Scratch)


def wave_factors(
    wave: Wave, parts: list[Tensor], tau: Tensor, floor: float
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[Tensor]] | None:
    """``wave_plan.factors`` in one C call: per coupling ``(scale f32, scale f32, scale f32 squared)``
    (the float64 scale is not kept: nothing after the factors reads it) and the blocks it zeroed;
    None when ``tau`` is neither float32 nor float64 (``wave_plan.factors`` then)."""
    if tau.dtype not in (torch.float32, torch.float64) or not tau.is_contiguous() or tau.device.type != "cpu":
        return None
    n = tau.numel()
    spans = torch.tensor(
        [t.data_ptr() for t in parts] + wave.offsets + [t.numel() for t in parts], dtype=torch.int64
    )  # every part is a contiguous float32 vector (first-read slices, row or column sums, vectors' squares)
    base, k = spans.data_ptr(), len(parts)
    out = torch.empty(2, n, dtype=torch.float32)
    dead = torch.empty(n, dtype=torch.bool)
    sums = torch.empty(n, dtype=torch.float64)
    native._loaded().sk_factors(
        base,
        base + 8 * k,
        base + 16 * k,
        k,
        tau.data_ptr(),
        int(tau.dtype == torch.float64),
        n,
        float(floor),
        _TINY,
        sums.data_ptr(),
        out[0].data_ptr(),
        out[1].data_ptr(),
        dead.data_ptr(),
    )
    if len(wave.sizes) == 1:
        return [(out[0], out[0], out[1])], [dead]
    single, square = out[0].split(wave.sizes), out[1].split(wave.sizes)
    return list(zip(single, single, square)), list(dead.split(wave.sizes))


def _one_row(fn: Callable[[int, int], None], at: int) -> Callable[[Scratch], None]:
    """A worker task: the table row at address ``at``."""
    return lambda _: fn(at, 1)
