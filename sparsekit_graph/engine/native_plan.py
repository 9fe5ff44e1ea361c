"""A whole fused Euclidean call as one native program (``engine/native.py``'s ``sk_program``).

``engine/batch.py`` works a call out once per layout (``wave_plan``): every parameter's first read,
then wave by wave the later couplings' weighted sums and shrink factors, then every write. Here that
is compiled once into an ``int64`` table (one row per pass: pointer, kind, sizes, strides, a row
range, its inputs' and outputs' pointers) cut into phases, over buffers the program owns (first and
later sums, each weight's ``M``, the factors, the thresholds in wave order). A call then copies its
thresholds in and makes one C call: the phases in order, each phase's rows taken one at a time by
whichever of the call's threads is free (big weights' passes in row chunks of about ``sweeps.CHUNK``
elements), a barrier between phases. No Python runs between the passes, and which thread takes a
row never changes its bits: a call gives the same bits on one thread or several. The writes multiply
in the eager kernels' order (bit-identical); sums are float32 in another order (equal to rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import native
from .sweeps import Param, _steps
from .wave_plan import _TINY, Plan

__all__ = ["Program", "build", "usable"]

_W = 13  # int64 per table row (see native_source.SOURCE)
_ROWS, _COLS, _M, _M_SUMS, _W_ROWS, _W_COLS = 0, 1, 2, 3, 4, 5  # read kinds
_ONE, _TWO = 0, 1  # write kinds
_READS, _WRITES, _FACTORS = 0, 1, 2  # phase kinds
_NO = (0, 0, 0)  # the strides of a contiguous (O, I, K) row: unused
_CPU = torch.device("cpu")
_PROBE = torch.zeros(1, 1)  # what native.enabled asks about: CPU float32 rows


def usable(tensors: list[Tensor]) -> bool:
    """Whether a program takes a call over these parameters: the native loops on and built, every
    parameter a CPU float32 tensor."""
    on_cpu = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    return on_cpu and native.enabled(_PROBE)  # C dereferences these pointers: host memory only


def _row(x: Tensor, kind: int, shape: tuple[int, ...], strides: tuple[int, ...], lo: int, hi: int, *tail: int) -> list[int]:
    return [x.data_ptr(), kind, *shape, *strides, lo, hi, *tail, *[0] * (3 - len(tail))]


@dataclass
class _Builder:
    """The table being written, phase by phase, and the tensors its pointers point into."""

    rows: list[list[int]] = field(default_factory=list)
    phases: list[list[int]] = field(default_factory=list)
    keep: list[Tensor] = field(default_factory=list)

    def phase(self, kind: int, rows: list[tuple[int, list[int]]]) -> None:
        """A phase of ``(elements, row)``: the largest first, so the last rows taken are short."""
        if rows:
            self.phases.append([len(self.rows), len(rows), kind])
            self.rows += [r for _, r in sorted(rows, key=lambda sr: -sr[0])]

    def buffer(self, n: int, dtype: torch.dtype) -> Tensor:
        """A zeroed buffer the program owns."""
        self.keep.append(torch.zeros(max(n, 1), dtype=dtype))
        return self.keep[-1]


@dataclass
class Program:
    """One layout's call, compiled: call ``run`` with its thresholds in wave order."""

    table: Tensor  # (rows, _W) int64
    phases: Tensor  # (phases, 3) int64: first row, rows, kind
    keep: list[Tensor]  # the buffers the table points into (not the weights: the caller checks their pointers)
    tau: Tensor  # uint8 (8 n,): a call's thresholds, as float32 or float64
    killed: Tensor  # uint8 (n,): the blocks the call zeroed, in wave order

    def run(self, taus: list[Tensor], floor: float, threads: int) -> Tensor:
        """The call over ``taus`` (flat, wave order, one dtype): the weights scaled in place; returns
        the blocks it zeroed (bool, wave order). Not reentrant: ``batch.fused`` holds its lock."""
        wide = taus[0].dtype == torch.float64
        n = self.killed.numel()
        torch.cat(taus, out=self.tau[: (8 if wide else 4) * n].view(torch.float64 if wide else torch.float32))
        done = native._loaded().sk_program(
            self.table.data_ptr(), self.phases.data_ptr(), self.phases.shape[0], threads, int(wide), floor, _TINY
        )
        if done == 0:
            raise MemoryError("sparsekit_graph: the native prox could not allocate its thread state")
        return self.killed.clone().view(torch.bool)


def build(params: list[Param], plan: Plan) -> Program:
    """The program of a layout (``params`` as ``batch._layout`` gives them, ``plan`` its wave plan)."""
    b = _Builder()
    sizes = {ci: n for w in plan.waves for ci, n in zip(w.couplings, w.sizes)}
    at, start = {}, 0
    for ci in plan.order:
        at[ci], start = start, start + sizes[ci]
    n = start
    single, square, sums, killed = (b.buffer(n, t) for t in (torch.float32, torch.float32, torch.float64, torch.uint8))
    tau = b.buffer(8 * n, torch.uint8)

    def factor(k: int, j: int, which: Tensor) -> int:
        """Where use ``j`` of parameter ``k`` finds its coupling's factors in ``which``."""
        return _address(which, at[params[k].uses[j].coupling])

    first = _first_reads(params, [k for k, _ in plan.first] + plan.vectors, b)
    later: dict[tuple[int, int], Tensor] = {}
    for wave in plan.waves:
        reads = wave.from_m + wave.reread
        b.phase(_READS, [r for k, j in reads for r in _later_read(params, k, j, later, b, factor(k, 1 - j, square))])
        parts = [(first if j == 0 else later)[k, j] for k, j in wave.parts]
        spans = b.buffer(3 * len(parts), torch.int64)
        spans.copy_(torch.tensor([t.data_ptr() for t in parts] + wave.offsets + [t.numel() for t in parts]))
        base, ci0 = spans.data_ptr(), wave.couplings[0]
        row = [base, base + 8 * len(parts), base + 16 * len(parts), len(parts), tau.data_ptr(), at[ci0], sum(wave.sizes)]
        row += [_address(which, at[ci0]) for which in (sums, single, square, killed)] + [0, 0]
        b.phase(_FACTORS, [(0, row)])
    b.phase(_WRITES, [w for k in plan.writes + plan.vectors for w in _writes(params[k], k, factor, single)])
    table = torch.tensor(b.rows, dtype=torch.int64).reshape(-1, _W)
    return Program(table, torch.tensor(b.phases, dtype=torch.int64).reshape(-1, 3), b.keep, tau, killed)


def _address(t: Tensor, e: int) -> int:
    """The address of element ``e`` of ``t``."""
    return t.data_ptr() + t.element_size() * e


def _first_reads(params: list[Param], reads: list[int], b: _Builder) -> dict[tuple[int, int], Tensor]:
    """Two phases: every parameter's first read (a run ``K > 1``: its ``M``, in row chunks), then the
    sums of those ``M``; returns each parameter's first sums, keyed ``(k, 0)``."""
    rows: list[tuple[int, list[int]]] = []
    after: list[tuple[int, list[int]]] = []
    got: dict[tuple[int, int], Tensor] = {}
    for k in reads:
        p = params[k]
        x = p.uses[0].x
        if p.mat is not None and p.mat.shape[2] > 1:
            o, i, kk = p.mat.shape
            p.m = b.buffer(o * i, torch.float32)
            m = p.m.data_ptr()
            for s in _steps(o, i * kk, _CPU):
                rows.append(((s.stop - s.start) * i * kk, _row(p.mat, _M, p.mat.shape, _NO, s.start, s.stop, 0, m)))
            rows_first = x.shape[0] == 1
            out = got[k, 0] = b.buffer(o if rows_first else i, torch.float32)
            n, width = (o, i) if rows_first else (i, o)
            for s in _steps(n, width, _CPU):
                after.append(
                    (
                        (s.stop - s.start) * width,
                        _row(p.mat, _M_SUMS, p.mat.shape, _NO, s.start, s.stop, out.data_ptr(), m, int(not rows_first)),
                    )
                )
            continue
        a, r, q = x.shape
        out = got[k, 0] = b.buffer(r, torch.float32)
        if a == 1:  # rows: split into row ranges
            for s in _steps(r, q, _CPU):
                rows.append(((s.stop - s.start) * q, _row(x, _ROWS, (a, r, q), x.stride(), s.start, s.stop, out.data_ptr())))
        else:  # columns, each summed down every row: column ranges
            for s in _steps(r, a * q, _CPU):
                rows.append(((s.stop - s.start) * a * q, _row(x, _COLS, (a, r, q), x.stride(), s.start, s.stop, out.data_ptr())))
    b.phase(_READS, rows)
    b.phase(_READS, after)
    return got


def _later_read(params: list[Param], k: int, j: int, got: dict, b: _Builder, weights: int) -> list[tuple[int, list[int]]]:
    """A later use's sums: the weight weighted by its earlier use's scale squared (at ``weights``),
    from ``M`` (a run ``K > 1``) or the weight read again (a 1x1)."""
    p = params[k]
    o, i, kk = p.mat.shape  # type: ignore[union-attr]  # a later use is always of a two-use weight
    rows_use = p.uses[j].x.shape[0] == 1
    squared = kk == 1
    src = p.mat if squared else p.m
    out = got[k, j] = b.buffer(o if rows_use else i, torch.float32)
    kind, n, width = (_W_ROWS, o, i) if rows_use else (_W_COLS, i, o)
    return [
        ((s.stop - s.start) * width, _row(src, kind, (o, i, 1), _NO, s.start, s.stop, out.data_ptr(), weights, int(squared)))  # type: ignore[arg-type]
        for s in _steps(n, width, _CPU)
    ]


def _writes(p: Param, k: int, factor: Callable[[int, int, Tensor], int], single: Tensor) -> list[tuple[int, list[int]]]:
    """The rows that scale ``p`` by its factors (``single`` of its couplings), in row chunks."""
    if p.mat is None:
        x = p.uses[0].x
        a, r, q = x.shape
        return [
            ((s.stop - s.start) * a * q, _row(x, _ONE, (a, r, q), x.stride(), s.start, s.stop, factor(k, 0, single)))
            for s in _steps(r, a * q, _CPU)
        ]
    o, i, kk = p.mat.shape
    rows_first = p.uses[0].x.shape[0] == 1
    f, g = factor(k, 0 if rows_first else 1, single), factor(k, 1 if rows_first else 0, single)
    return [
        ((s.stop - s.start) * i * kk, _row(p.mat, _TWO, (o, i, kk), (0, 0, 0), s.start, s.stop, f, g, int(rows_first)))
        for s in _steps(o, i * kk, _CPU)
    ]
