"""The Euclidean prox of many couplings in one call: each weight read once for its norms, written once.

``soft_threshold_all(couplings, thresholds)`` equals calling ``c.soft_threshold(t)`` for every
coupling in order (up to rounding), including when a later coupling sees a parameter that an
earlier one scaled: a conv weight is the rows of one group and the columns of the next. Calling
them one by one visits such a weight twice (norms, then scale, for each group); here its norms for
both groups come from one read and its two scalings are applied in one write:

* a weight ``w`` seen as ``(O, I, K)`` in two couplings (rows ``o``, then columns ``i``, or the
  reverse): with ``M[o, i] = sum_k w[o, i, k]^2`` (one read), the first coupling's norms are
  ``M``'s row (or column) sums and the second's are ``M`` weighted by the first's scale squared, as
  the sequential call would see them. A 1x1 weight (``K = 1``) has ``M = w^2`` and is read again
  for the weighted sums instead of storing ``M``;
* every weight is then scaled in one pass: chunk by chunk, by the earlier coupling's factor, then
  (while the chunk is in cache) the later one's, the order and rounding of the calls in order.

The per-weight kernels (``engine/sweeps.py``) square chunk by chunk into one cache-sized scratch
buffer: no full-size temporary. Nothing is written before the end, so every parameter's first read
(its norms for its first coupling, or ``M``) needs no factor and all of them go in one batch; each
wave then adds only the later couplings' weighted sums (from ``M``, or a 1x1 weight read again).
With more than one torch intra-op thread on CPU (and ``SPLIT``), the parallelism is across weights
rather than inside each kernel: the first reads, each wave's re-reads, then all the writes,
are spread over that many worker threads that run each kernel on one intra-op thread (the big 3x3
weights' ``M`` and big shared weights' writes in their row chunks), so no kernel waits at an
OpenMP barrier for a descheduled thread, and the bits are the one-thread path's. Meanwhile the
calling thread's own kernels (sums of ``M``, shrink factors) run on one intra-op thread too: at
more, each would wake its OpenMP team, whose threads then spin on the cores the workers need
(on the project's 2-core machine under other jobs' load, 3.2-6.9x the wall time, A/B in one process);
the team still spinning from the kernels before the call is put to sleep first (``workers.nap_team``).
Anything outside this pattern (a parameter in a coupling twice, in three
couplings, two slices of one parameter, pieces that need copies, non-float32 weights) falls back to
the one-by-one calls.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SparseKitError
from . import native_plan, sweeps, wave_plan
from .block import BlockValues, SparseBlock
from .sweeps import Param, Use
from .waves import conditioned_all
from .workers import caller_on_one_thread, worker_pool

__all__ = ["SYNC_FREE", "euclidean_all", "soft_threshold_all", "sync_free"]


def soft_threshold_all(
    couplings: Sequence[SparseBlock],
    thresholds: Sequence[Tensor],
    conditioners: Sequence[BlockValues] | None = None,
    *,
    eps: float | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int = 50,
) -> list[Tensor]:
    """``c.soft_threshold(tau, h)`` of every coupling, as if called in order, in few large kernels.

    Without ``conditioners``, the Euclidean prox ``w <- max(0, 1 - tau/||w||) w``: each weight read
    once for its norms and written once. With them, the conditioned prox (``engine/waves.py``):
    couplings that share no parameter are solved as one.

    Args:
        couplings: Couplings (or specs); one that shares a parameter with an earlier one sees
            that parameter as the earlier call left it.
        thresholds: ``tau`` per coupling, each shaped like its ``grid_shape`` or flat (float64
            thresholds are used in float64: a block near death amplifies their rounding).
        conditioners: One per coupling, as ``soft_threshold`` takes them (default: Euclidean).
        eps: Norms at or below ``tau + eps`` are zeroed (default: 0), as in ``soft_threshold``.
        rtol, atol, max_iter: The conditioned solve's accuracy, as in ``soft_threshold``.

    Returns:
        Per coupling, the blocks its call zeroed (flat, bool tensors on the couplings' device):
        nonzero as its turn found them, zero after.

    Raises:
        SparseKitError: A negative threshold, checked on the host; on CUDA tensors (``sync_free``)
            the check is a device-side assert instead (``torch._assert_async``), so that the
            Euclidean call reads nothing back to the host once its layout is cached (the first call
            builds it); a failed assert surfaces as a CUDA error at the next synchronisation.
    """
    if len(couplings) != len(thresholds) or (conditioners is not None and len(conditioners) != len(couplings)):
        n = "" if conditioners is None else f" and {len(conditioners)} conditioners"
        raise SparseKitError(f"soft_threshold_all: {len(thresholds)} thresholds{n} for {len(couplings)} couplings")
    wide = any(t.dtype == torch.float64 for t in thresholds if isinstance(t, Tensor))  # near death, mu needs tau's bits
    taus = [
        c._grid_arg(t, "block_thresholds").to(torch.float64 if wide else torch.float32).reshape(-1)
        for c, t in zip(couplings, thresholds)
    ]
    if taus:
        _check_thresholds(couplings, taus)
    floor = 0.0 if eps is None else float(eps)
    with torch.no_grad():
        if conditioners is not None:
            return conditioned_all(couplings, taus, conditioners, rtol=rtol, atol=atol, max_iter=max_iter, floor=floor)
        return euclidean_all(couplings, taus, floor)


def euclidean_all(couplings: Sequence[SparseBlock], taus: Sequence[Tensor], floor: float = 0.0) -> list[Tensor]:
    """The Euclidean prox of ``soft_threshold_all`` without its checks: ``taus`` flat, non-negative and
    on the couplings' device (``ProximalStep`` builds them so). No host synchronisation once the
    layout is cached (on a CUDA device: every kernel is queued, nothing is read back)."""
    with torch.no_grad():
        killed = fused(couplings, taus, floor)
        return killed if killed is not None else [c._euclidean_prox(tau, floor) for c, tau in zip(couplings, taus)]


SYNC_FREE: bool | None = None  # None: the sync-free checks on CUDA tensors only; True: everywhere (tests); False: never


def sync_free(device: torch.device) -> bool:
    """Whether calls on ``device`` take the checks that never read a value back to the host."""
    return device.type == "cuda" if SYNC_FREE is None else SYNC_FREE


def _check_thresholds(couplings: Sequence[SparseBlock], taus: Sequence[Tensor]) -> None:
    """Non-negative thresholds. On the sync-free path (CUDA tensors) a device-side assert
    (``torch._assert_async``: queued, no host synchronisation; a failure surfaces as a CUDA error at
    the next synchronisation); elsewhere one host check for all, then the first culprit named.

    Raises:
        SparseKitError: A threshold is negative (host check).
    """
    low = torch.cat(list(taus)).min() if len(taus) > 1 else taus[0].min()
    if sync_free(low.device):
        torch._assert_async(~(low < 0), "soft_threshold_all: block_thresholds must be non-negative")
        return
    if bool(low < 0):
        bad = next(c for c, tau in zip(couplings, taus) if bool(tau.min() < 0))
        raise SparseKitError(f"{bad._label()}: block_thresholds must be non-negative")


def fused(couplings: Sequence[SparseBlock], taus: Sequence[Tensor], floor: float) -> list[Tensor] | None:
    """The fused prox of ``couplings`` with flat thresholds ``taus`` and the blocks each zeroed; None
    (nothing written) when some parameter's uses are outside the pattern."""
    if not couplings:
        return []
    with _LOCK:  # one layout and one program per key, and one native call at a time: Python threads calling at once
        found = _layout(couplings)
        if found is None:
            return None
        entry, tensors = found
        plan = entry.plan
        if native_plan.usable(tensors):  # one C program: the layout's whole call, on this many threads
            ptrs = [t.data_ptr() for t in tensors]
            if entry.program is None or entry.program_for != ptrs:
                entry.program, entry.program_for = native_plan.build(entry.rebuild(tensors), plan), ptrs
            threads = torch.get_num_threads() if SPLIT else 1
            with caller_on_one_thread(threads > 1):
                dead = entry.program.run([taus[ci] for ci in plan.order], floor, threads)
            killed: list[Tensor] = [dead] * len(couplings)
            for ci, d in zip(plan.order, dead.split([n for w in plan.waves for n in w.sizes])):
                killed[ci] = d
            return killed
        params = entry.rebuild(tensors)
        pool = _pool(params)
        with caller_on_one_thread(pool is not None):
            return _solve(params, plan, list(taus), floor, pool)


Meta = tuple[torch.Size, tuple[int, ...], int, torch.dtype]


def _meta(t: Tensor) -> Meta:
    return (t.shape, t.stride(), t.storage_offset(), t.dtype)


@dataclass
class _Cached:
    """A layout of the same couplings, as offsets: per parameter, where to find it (coupling, part),
    its ``(shape, stride, storage offset, dtype)`` then, and each use's and ``mat``'s as_strided args;
    with the native loops, its compiled call and the parameters' addresses that call points into."""

    refs: list[weakref.ref]  # the couplings: the key's ids are still theirs while these point to them
    params: list[tuple[tuple[int, int], Meta, list[tuple[int, tuple]], tuple | None]]
    plan: wave_plan.Plan
    program: native_plan.Program | None = None
    program_for: list[int] | None = None

    def tensors(self, couplings: Sequence[SparseBlock]) -> list[Tensor] | None:
        """The parameters' current tensors; None if one's shape or layout changed."""
        out = []
        for (ci, pi), meta, _, _ in self.params:
            t = couplings[ci]._parts()[pi].spec.view.param.data
            if _meta(t) != meta:
                return None
            out.append(t)
        return out

    def rebuild(self, tensors: list[Tensor]) -> list[Param]:
        """The layout over the parameters' current tensors (``tensors``)."""
        return [
            Param([Use(c, t.as_strided(*a)) for c, a in uses], None if mat is None else t.as_strided(*mat))
            for t, (_, _, uses, mat) in zip(tensors, self.params)
        ]


_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[int, ...], _Cached] = OrderedDict()  # the last few calls' layouts (1.5 -> 0.4 ms on ResNet-50's plan)
_KEEP = 256  # entries are small (offsets, weakrefs, a program's buffers): room for every group of a plan called one by one


def _layout(couplings: Sequence[SparseBlock]) -> tuple[_Cached, list[Tensor]] | None:
    """The couplings' layout and their parameters' current tensors, or None when some use is
    outside the fused pattern (cached by coupling identity)."""
    key = tuple(map(id, couplings))
    hit = _CACHE.get(key)
    if hit is not None and all(r() is c for r, c in zip(hit.refs, couplings)):
        tensors = hit.tensors(couplings)
        if tensors is not None:
            return hit, tensors
    found = _build(couplings)
    if found is None:
        return None
    params, where = found
    plan = wave_plan.build(params, len(couplings), params[0].uses[0].x.device)
    entry = _CACHE[key] = _Cached([weakref.ref(c) for c in couplings], where, plan)
    while len(_CACHE) > _KEEP:
        _CACHE.popitem(last=False)
    return entry, entry.tensors(couplings)  # type: ignore[return-value]  # just built over these


def _args(x: Tensor) -> tuple:
    return (tuple(x.shape), x.stride(), x.storage_offset())


def _build(couplings: Sequence[SparseBlock]) -> tuple[list[Param], list] | None:
    """The layout and its ``_Cached.params``, or None when some use is outside the fused pattern."""
    by_param: dict[int, Param] = {}
    where: dict[int, tuple[int, int]] = {}
    for ci, c in enumerate(couplings):
        seen = set()
        for pi, part in enumerate(c._parts()):
            param = part.spec.view.param
            if id(param) in seen or param.dtype != torch.float32:
                return None
            seen.add(id(param))
            rows = part.arp(part.spec.data)  # in place, or None: the rows would need copying
            if rows is None:
                return None
            by_param.setdefault(id(param), Param([])).uses.append(Use(ci, rows))
            where.setdefault(id(param), (ci, pi))
    out = list(by_param.values())
    for p in out:
        if len(p.uses) == 1:
            continue
        if len(p.uses) > 2:
            return None
        p.mat = _matrix(p.uses[0].x, p.uses[1].x)
        if p.mat is None:
            return None
    cached = []
    for pid, p in by_param.items():
        ci, pi = where[pid]
        t = couplings[ci]._parts()[pi].spec.view.param.data
        cached.append(((ci, pi), _meta(t), [(u.coupling, _args(u.x)) for u in p.uses], None if p.mat is None else _args(p.mat)))
    return out, cached


def _matrix(a: Tensor, b: Tensor) -> Tensor | None:
    """The ``(O, I, K)`` view when one of ``a``, ``b`` is its rows ``(1, O, I K)`` and the other its
    columns ``(O, I, K)``, both over the same contiguous elements; else None."""
    rows, cols = (a, b) if a.shape[0] == 1 else (b, a)
    if rows.shape[0] != 1 or cols.shape[0] == 1 or rows.storage_offset() != cols.storage_offset():
        return None
    o, i, k = cols.shape
    if rows.shape[1] != o or rows.shape[2] != i * k or rows.untyped_storage().data_ptr() != cols.untyped_storage().data_ptr():
        return None
    if not (_strided(cols, (i * k, k, 1)) and _strided(rows, (0, i * k, 1))):
        return None
    return cols.as_strided((o, i, k), (i * k, k, 1))


def _strided(x: Tensor, strides: tuple[int, ...]) -> bool:
    """``x`` has these strides along every dim longer than one."""
    return all(n == 1 or st == want for n, st, want in zip(x.shape, x.stride(), strides))


def _solve(
    params: list[Param], plan: wave_plan.Plan, taus: list[Tensor], floor: float, pool: ThreadPoolExecutor | None
) -> list[Tensor]:
    """The prox of every coupling; returns the blocks each zeroed (nonzero norm, zero scale)."""
    scratch = sweeps.Scratch()
    killed: list[Tensor | None] = [None] * len(taus)
    # one-use vectors (BatchNorm scales and shifts, biases: one element per block) in one kernel each way
    flat = [params[k].uses[0].x.view(-1) for k in plan.vectors]
    squares = dict(zip(plan.vectors, torch._foreach_mul(flat, flat))) if flat else {}
    # every parameter's first use needs no factor (nothing is written before the end): all of them at once
    first = _sums([(params[k], 0) for k, _ in plan.first], scratch, pool)
    tau_all = torch.cat([taus[ci] for ci in plan.order]) if len(taus) > 1 else taus[0]
    at = 0
    for wave in plan.waves:  # a wave's shrink factors in one set of kernels
        got = {id(params[k]): sweeps.sumsq(params[k], j, scratch) for k, j in wave.from_m}  # from M: small
        got.update(_sums([(params[k], j) for k, j in wave.reread], scratch, pool))  # a 1x1 weight read again
        parts = [squares[k] if k in squares else (got if j else first)[id(params[k])] for k, j in wave.parts]
        n = sum(wave.sizes)
        factors, dead = wave_plan.factors(wave, parts, tau_all[at : at + n], floor)
        at += n
        for ci, f, d in zip(wave.couplings, factors, dead):
            killed[ci] = d
            for k, j in plan.uses_of[ci]:
                params[k].factors[j] = f
    if flat:
        torch._foreach_mul_(flat, [params[k].factors[0][1] for k in plan.vectors])
    writes = [params[k] for k in plan.writes]
    if pool is None or sum(p.uses[0].x.numel() for p in writes) < sweeps.CHUNK:
        for p in writes:
            sweeps.write(p)
    else:
        sweeps.writes_split(writes, pool)
    return killed  # type: ignore[return-value]  # every coupling is in one wave


def _sums(reads: list[tuple[Param, int]], scratch: sweeps.Scratch, pool: ThreadPoolExecutor | None) -> dict[int, Tensor]:
    """``sweeps.sumsq`` of each read, keyed by parameter: on the pool unless too small to hand off."""
    if pool is None or sum(p.uses[j].x.numel() for p, j in reads) < sweeps.CHUNK:
        return sweeps.sums(reads, scratch)
    return sweeps.sums_split(reads, pool)


# -- across weights: the reads and the writes on a few threads, one intra-op thread each ------------
SPLIT = True  # with torch.get_num_threads() > 1 on CPU: spread the per-weight kernels over that many threads


def _pool(params: list[Param]) -> ThreadPoolExecutor | None:
    """The worker threads (as many as torch's intra-op threads), or None for the one-thread path."""
    if not SPLIT or not params or params[0].uses[0].x.device.type != "cpu":
        return None
    n = torch.get_num_threads()
    return worker_pool(n) if n >= 2 else None
