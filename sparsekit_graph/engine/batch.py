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

Squares and outer products go through one cache-sized scratch buffer, chunk by chunk: no
full-size temporary. With more than one torch intra-op thread on CPU (and ``SPLIT``), the
parallelism is across weights rather than inside each kernel: a wave's reads, then all the writes,
are spread over that many worker threads that run each kernel on one intra-op thread (the big 3x3
weights' ``M`` and big shared weights' writes in their row chunks), so no kernel waits at an
OpenMP barrier for a descheduled thread, and the bits are the one-thread path's.
Anything outside this pattern (a parameter in a coupling twice, in three
couplings, two slices of one parameter, pieces that need copies, non-float32 weights) falls back to
the one-by-one calls.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import SparseKitError
from .block import BlockValues, SparseBlock
from .waves import conditioned_all
from .workers import Task, run_balanced, worker_pool

__all__ = ["soft_threshold_all"]

_CHUNK = 1 << 19  # scratch elements on CPU (2 MiB of float32: L3 at 1 thread, a core's 1 MiB L2 each at 2; 1 MiB was ~4% slower)
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class _Use:
    """One coupling's rows of one parameter: ``x`` is ``(A, R, P)``, row ``r`` = block ``r``."""

    coupling: int
    x: Tensor


@dataclass
class _Param:
    """A parameter and its uses; ``mat`` is its ``(O, I, K)`` view when it has two (rows, columns)."""

    uses: list[_Use]
    mat: Tensor | None = None
    m: Tensor | None = None  # (O, I) float32 sums of squares over K, when K > 1
    factors: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # use -> (R,) scale: f64, f32, f32 squared


def soft_threshold_all(
    couplings: Sequence[SparseBlock],
    thresholds: Sequence[Tensor],
    conditioners: Sequence[BlockValues] | None = None,
    *,
    eps: float | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int = 50,
) -> None:
    """``c.soft_threshold(tau, h)`` of every coupling, as if called in order, in few large kernels.

    Without ``conditioners``, the Euclidean prox ``w <- max(0, 1 - tau/||w||) w``: each weight read
    once for its norms and written once. With them, the conditioned prox (``engine/waves.py``):
    couplings that share no parameter are solved as one.

    Args:
        couplings: Couplings (or specs); one that shares a parameter with an earlier one sees
            that parameter as the earlier call left it.
        thresholds: ``tau`` per coupling, each shaped like its ``grid_shape`` or flat.
        conditioners: One per coupling, as ``soft_threshold`` takes them (default: Euclidean).
        eps: Norms at or below ``tau + eps`` are zeroed (default: 0), as in ``soft_threshold``.
        rtol, atol, max_iter: The conditioned solve's accuracy, as in ``soft_threshold``.
    """
    if len(couplings) != len(thresholds) or (conditioners is not None and len(conditioners) != len(couplings)):
        n = "" if conditioners is None else f" and {len(conditioners)} conditioners"
        raise SparseKitError(f"soft_threshold_all: {len(thresholds)} thresholds{n} for {len(couplings)} couplings")
    taus = [c._grid_arg(t, "block_thresholds").float().reshape(-1) for c, t in zip(couplings, thresholds)]
    if taus and bool(torch.cat(taus).min() < 0):  # one check (one sync) for all, then name the first culprit
        bad = next(c for c, tau in zip(couplings, taus) if bool(tau.min() < 0))
        raise SparseKitError(f"{bad._label()}: block_thresholds must be non-negative")
    floor = 0.0 if eps is None else float(eps)
    with torch.no_grad():
        if conditioners is not None:
            conditioned_all(couplings, taus, conditioners, rtol=rtol, atol=atol, max_iter=max_iter, floor=floor)
        elif not fused(couplings, taus, floor):
            for c, tau in zip(couplings, taus):
                c._euclidean_prox(tau, floor)


def fused(couplings: Sequence[SparseBlock], taus: Sequence[Tensor], floor: float) -> bool:
    """The fused prox of ``couplings`` with flat thresholds ``taus``; False (nothing written) when
    some parameter's uses are outside the pattern."""
    params = _layout(couplings)
    if params is None:
        return False
    _solve(params, couplings, list(taus), floor)
    return True


@dataclass
class _Cached:
    """A layout of the same couplings, as offsets: per parameter, where to find it (coupling, part),
    its ``(shape, stride, storage offset, dtype)`` then, and each use's and ``mat``'s as_strided args."""

    refs: list[weakref.ref]  # the couplings: the key's ids are still theirs while these point to them
    params: list[tuple[tuple[int, int], tuple, list[tuple[int, tuple]], tuple | None]]

    def rebuild(self, couplings: Sequence[SparseBlock]) -> list[_Param] | None:
        """The layout over the parameters' current tensors; None if one's shape or layout changed."""
        out = []
        for (ci, pi), meta, uses, mat in self.params:
            t = couplings[ci]._parts()[pi].spec.view.param.data
            if (t.shape, t.stride(), t.storage_offset(), t.dtype) != meta:
                return None
            out.append(_Param([_Use(c, t.as_strided(*a)) for c, a in uses], None if mat is None else t.as_strided(*mat)))
        return out


_CACHE: OrderedDict[tuple[int, ...], _Cached] = OrderedDict()  # the last few calls' layouts (1.5 -> 0.4 ms on ResNet-50's plan)
_KEEP = 256  # entries are small (offsets, weakrefs): room for every group of a plan called one by one, and the whole list


def _layout(couplings: Sequence[SparseBlock]) -> list[_Param] | None:
    """Every parameter's uses, or None when some use is outside the fused pattern (cached by coupling identity)."""
    key = tuple(map(id, couplings))
    hit = _CACHE.get(key)
    if hit is not None and all(r() is c for r, c in zip(hit.refs, couplings)):
        params = hit.rebuild(couplings)
        if params is not None:
            return params
    found = _build(couplings)
    if found is None:
        return None
    params, where = found
    _CACHE[key] = _Cached([weakref.ref(c) for c in couplings], where)
    while len(_CACHE) > _KEEP:
        _CACHE.popitem(last=False)
    return params


def _args(x: Tensor) -> tuple:
    return (tuple(x.shape), x.stride(), x.storage_offset())


def _build(couplings: Sequence[SparseBlock]) -> tuple[list[_Param], list] | None:
    """The layout and its ``_Cached.params``, or None when some use is outside the fused pattern."""
    by_param: dict[int, _Param] = {}
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
            by_param.setdefault(id(param), _Param([])).uses.append(_Use(ci, rows))
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
        meta = (t.shape, t.stride(), t.storage_offset(), t.dtype)
        cached.append(((ci, pi), meta, [(u.coupling, _args(u.x)) for u in p.uses], None if p.mat is None else _args(p.mat)))
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


def _waves(uses_of: list[list[tuple[_Param, int]]]) -> list[list[int]]:
    """Couplings in waves: each comes after every earlier coupling it shares a parameter with, so the
    couplings of a wave share none and all the factors their sums need are known before it."""
    level = [0] * len(uses_of)
    for ci, uses in enumerate(uses_of):
        for p, j in uses:
            if j == 1:  # uses are in coupling order: the parameter's first use is an earlier coupling's
                level[ci] = max(level[ci], level[p.uses[0].coupling] + 1)
    out: list[list[int]] = [[] for _ in range(max(level, default=-1) + 1)]
    for ci, lv in enumerate(level):
        out[lv].append(ci)
    return out


def _solve(params: list[_Param], couplings: Sequence[SparseBlock], taus: list[Tensor], floor: float) -> None:
    scratch = _Scratch()
    uses_of: list[list[tuple[_Param, int]]] = [[] for _ in couplings]
    for p in params:
        for j, u in enumerate(p.uses):
            uses_of[u.coupling].append((p, j))
    # one-use vectors (BatchNorm scales and shifts, biases: one element per block) in one kernel each way
    vectors = [p for p in params if p.mat is None and p.uses[0].x.shape[0] == 1 and p.uses[0].x.shape[2] == 1]
    flat = [p.uses[0].x.view(-1) for p in vectors]
    squares = dict(zip(map(id, vectors), torch._foreach_mul(flat, flat))) if flat else {}
    pool = _pool(params)
    for wave in _waves(uses_of):  # a wave's shrink factors in one set of kernels
        reads = [(p, j) for ci in wave for p, j in uses_of[ci] if id(p) not in squares]
        small = sum(p.uses[j].x.numel() for p, j in reads) < _CHUNK  # not worth a hand-off
        got = _reads(reads, scratch) if pool is None or small else _reads_split(reads, pool)
        sums = []
        for ci in wave:
            parts = [squares[id(p)] if id(p) in squares else got[id(p)] for p, j in uses_of[ci]]
            sums.append(torch.stack(parts).sum(0, dtype=torch.float64))  # float32 partial sums, added in float64
        tau = taus[wave[0]] if len(wave) == 1 else torch.cat([taus[ci] for ci in wave])
        norm = (sums[0] if len(wave) == 1 else torch.cat(sums)).sqrt_()
        scale = (1 - tau / norm.clamp_min(_TINY)).clamp_(min=0)
        if floor > 0:
            scale = torch.where(norm > tau + floor, scale, 0.0)
        single = scale.float()
        square = single.square()  # the weights a later coupling's sums of a shared parameter take
        at = 0
        for ci, sq in zip(wave, sums):
            cut = slice(at, at + sq.numel())
            at = cut.stop
            got = (scale[cut], single[cut], square[cut])
            for p, j in uses_of[ci]:
                p.factors[j] = got
    if flat:
        torch._foreach_mul_(flat, [p.factors[0][1] for p in vectors])
    writes = [p for p in params if id(p) not in squares]
    if pool is None or sum(p.uses[0].x.numel() for p in writes) < _CHUNK:
        for p in writes:
            _write(p)
    else:
        _writes_split(writes, pool)


class _Scratch:
    """One flat float32 buffer of a chunk's size, reused by every chunked kernel."""

    def __init__(self) -> None:
        self.buf: Tensor | None = None
        self.one: Tensor | None = None

    def get(self, n: int, like: Tensor) -> Tensor:
        if self.buf is None or self.buf.numel() < n or self.buf.device != like.device:
            self.buf = torch.empty(n, dtype=torch.float32, device=like.device)
        return self.buf[:n]

    def ones(self, n: int, like: Tensor) -> Tensor:
        """``n`` float32 ones (slices of one buffer)."""
        if self.one is None or self.one.numel() < n or self.one.device != like.device:
            self.one = torch.ones(max(n, 4096), dtype=torch.float32, device=like.device)
        return self.one[:n]


def _steps(rows: int, width: int, device: torch.device) -> list[slice]:
    """Row ranges of about ``_CHUNK`` elements (one range off the CPU)."""
    step = rows if device.type != "cpu" else max(1, _CHUNK // max(1, width))
    return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]


def _sumsq(p: _Param, j: int, scratch: _Scratch) -> Tensor:
    """``(R,)`` float32 sums of squares of use ``j``'s rows, after the other use's scaling if it came first."""
    x = p.uses[j].x
    if p.mat is None:
        a, r, q = x.shape
        if a == 1:
            return torch.linalg.vector_norm(x[0], dim=1).square_()
        cols = _weighted_cols(x.reshape(a, r * q), None, scratch)  # (R P,)
        return cols if q == 1 else cols.view(r, q).sum(1)
    o, i, k = p.mat.shape
    row_use = x.shape[0] == 1
    other = p.factors.get(1 - j)  # the other use's scale, if its coupling came first
    if k > 1:
        if p.m is None:
            p.m = _block_sumsq(p.mat, scratch)  # (O, I)
        w2 = None if other is None else other[2]
        if row_use:
            return p.m.sum(1) if w2 is None else p.m @ w2
        return p.m.sum(0) if w2 is None else w2 @ p.m
    x2 = p.mat.view(o, i)
    if row_use:
        if other is None:
            return torch.linalg.vector_norm(x2, dim=1).square_()
        return _weighted_rows(x2, other[2], scratch)
    return _weighted_cols(x2, None if other is None else other[2], scratch)


def _block_sumsq(mat: Tensor, scratch: _Scratch) -> Tensor:
    """``(O, I, K)`` -> ``(O, I)`` float32 sums over ``K``, one read, squares chunk by chunk."""
    o, i, k = mat.shape
    out = torch.empty(o, i, dtype=torch.float32, device=mat.device)
    ones = scratch.ones(k, mat)
    for s in _steps(o, i * k, mat.device):
        chunk = mat[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        torch.mv(sq.view(-1, k), ones, out=out[s].view(-1))
    return out


def _weighted_cols(x2: Tensor, weights: Tensor | None, scratch: _Scratch) -> Tensor:
    """``(rows, cols)`` -> ``(cols,)`` float32 ``sum_r weights[r] x[r, c]^2`` (weights default 1)."""
    rows, width = x2.shape
    acc = torch.zeros(width, dtype=torch.float32, device=x2.device)
    w = scratch.ones(rows, x2) if weights is None else weights
    for s in _steps(rows, width, x2.device):
        chunk = x2[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        acc.addmv_(sq.T, w[s])
    return acc


def _weighted_rows(x2: Tensor, weights: Tensor, scratch: _Scratch) -> Tensor:
    """``(rows, cols)`` -> ``(rows,)`` float32 ``sum_c x[r, c]^2 weights[c]``."""
    rows, width = x2.shape
    out = torch.empty(rows, dtype=torch.float32, device=x2.device)
    w = weights
    for s in _steps(rows, width, x2.device):
        chunk = x2[s]
        sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
        torch.mv(sq, w, out=out[s])
    return out


def _write(p: _Param, only: slice | None = None) -> None:
    """Every element times its scale factors, in one pass over the parameter (of a two-use
    weight, only rows ``only`` when given)."""
    if p.mat is None:
        (use,) = p.uses
        x, m = use.x, p.factors[0][1]
        mult = m[None, :, None]
        if x.shape[0] > 1 and 1 < x.shape[2] <= 64:  # a short inner run (a 3x3 kernel): spelled out, it vectorises
            mult = mult.expand(1, *x.shape[1:]).contiguous()
        x.mul_(mult)
        return
    o, i, k = p.mat.shape
    rows_first = p.uses[0].x.shape[0] == 1  # uses are in coupling order: scale as the calls in order do
    r, c = p.factors[0 if rows_first else 1][1], p.factors[1 if rows_first else 0][1]
    cols = c.repeat_interleave(k)[None] if k > 1 else c[None]  # (1, I K): the inner run is a whole row
    flat = p.mat.view(o, i * k)
    rows = r[:, None]
    for s in [only] if only is not None else _steps(o, i * k, p.mat.device):  # the second factor while the chunk is in cache
        chunk = flat[s]
        if rows_first:
            chunk.mul_(rows[s]).mul_(cols)
        else:
            chunk.mul_(cols).mul_(rows[s])


# -- across weights: a wave's reads and the writes on a few threads, one intra-op thread each ------------
SPLIT = True  # with torch.get_num_threads() > 1 on CPU: spread the per-weight kernels over that many threads
_Task = Task[_Scratch]


def _pool(params: list[_Param]) -> ThreadPoolExecutor | None:
    """The worker threads (as many as torch's intra-op threads), or None for the one-thread path."""
    if not SPLIT or not params or params[0].uses[0].x.device.type != "cpu":
        return None
    n = torch.get_num_threads()
    return worker_pool(n) if n >= 2 else None


def _run(tasks: list[_Task], pool: ThreadPoolExecutor) -> None:
    run_balanced(tasks, pool, _Scratch)


def _reads(reads: list[tuple[_Param, int]], scratch: _Scratch) -> dict[int, Tensor]:
    return {id(p): _sumsq(p, j, scratch) for p, j in reads}


def _reads_split(reads: list[tuple[_Param, int]], pool: ThreadPoolExecutor) -> dict[int, Tensor]:
    """``_reads`` on the pool: a big 3x3 weight's ``M`` in row chunks, every other read whole."""
    got: dict[int, Tensor] = {}
    tasks: list[_Task] = []
    later: list[tuple[_Param, int]] = []
    for p, j in reads:
        if p.mat is not None and p.mat.shape[2] > 1 and p.m is None and p.mat.numel() > _CHUNK:
            o, i, k = p.mat.shape
            p.m = torch.empty(o, i, dtype=torch.float32)
            for s in _steps(o, i * k, p.mat.device):
                tasks.append((i * k * (s.stop - s.start), lambda sc, p=p, s=s: _block_sumsq_rows(p.mat, p.m, s, sc)))
            later.append((p, j))
        else:
            tasks.append((p.uses[j].x.numel(), lambda sc, p=p, j=j: got.__setitem__(id(p), _sumsq(p, j, sc))))
    _run(tasks, pool)
    for p, j in later:  # M's row or column sums (small)
        got[id(p)] = _sumsq(p, j, _Scratch())
    return got


def _block_sumsq_rows(mat: Tensor, out: Tensor, s: slice, scratch: _Scratch) -> None:
    """Rows ``s`` of ``_block_sumsq(mat)`` into ``out``."""
    k = mat.shape[2]
    chunk = mat[s]
    sq = torch.mul(chunk, chunk, out=scratch.get(chunk.numel(), chunk).view(chunk.shape))
    torch.mv(sq.view(-1, k), scratch.ones(k, mat), out=out[s].view(-1))


def _writes_split(writes: list[_Param], pool: ThreadPoolExecutor) -> None:
    """``_write`` of every parameter on the pool, big two-use weights in row chunks."""
    tasks: list[_Task] = []
    for p in writes:
        if p.mat is None or p.mat.numel() <= _CHUNK:
            tasks.append((p.uses[0].x.numel(), lambda sc, p=p: _write(p)))
            continue
        o, i, k = p.mat.shape
        for s in _steps(o, i * k, p.mat.device):
            tasks.append((i * k * (s.stop - s.start), lambda sc, p=p, s=s: _write(p, s)))
    _run(tasks, pool)
