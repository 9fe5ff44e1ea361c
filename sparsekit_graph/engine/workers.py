"""Worker threads for torch kernels, each on one intra-op thread.

On a CPU with few cores, a mid-size kernel split over every intra-op thread waits at an OpenMP
barrier for whichever thread was descheduled; running whole kernels side by side, one thread
each, does not. ``worker_pool(n)`` gives ``n`` such threads (one pool per process and size: a
forked child's copy of a pool has no threads), ``run_balanced`` spreads tasks over them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["NAP", "Task", "caller_on_one_thread", "nap_team", "run_balanced", "worker_pool"]

S = TypeVar("S")
Task = tuple[int, Callable[[S], None]]  # (elements it reads, the work, given its thread's state)

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads)
_LOCK = threading.Lock()
NAP = True  # caller_on_one_thread first puts the caller's idle OpenMP team to sleep (see nap_team)
_GRAIN = 32768  # at::internal::GRAIN_SIZE: a kernel over more elements than this runs on several threads
_NAP_BUFS: dict[int, torch.Tensor] = {}


def _one_thread(ready: threading.Barrier) -> None:
    """A worker's start: its own (per-thread) OpenMP and MKL thread counts set to 1."""
    torch.get_num_threads()  # the thread's lazy init first, at the process's count
    torch.set_num_threads(1)  # OpenMP's and MKL's counts are per thread; torch's global one is restored by worker_pool
    ready.wait()


def worker_pool(n: int) -> ThreadPoolExecutor:
    """``n`` worker threads that run torch kernels on one intra-op thread each."""
    with _LOCK:
        pool = _POOLS.get((os.getpid(), n))
        if pool is None:
            pool = ThreadPoolExecutor(n, thread_name_prefix="sparsekit-prox")
            ready = threading.Barrier(n)
            for f in [pool.submit(_one_thread, ready) for _ in range(n)]:  # n tasks that wait for each other: n threads
                f.result()
            torch.set_num_threads(n)  # the workers set torch's process-wide count to 1: back to n (this thread's is n)
            _POOLS[os.getpid(), n] = pool
    return pool


def run_balanced(tasks: list[Task[S]], pool: ThreadPoolExecutor, state: Callable[[], S]) -> None:
    """``tasks`` on the pool's threads, the largest first, each to the least loaded thread; the
    tasks of one thread share one ``state()`` (a scratch buffer)."""
    n = pool._max_workers  # noqa: SLF001 - the size it was made with
    bins: list[list[Callable[[S], None]]] = [[] for _ in range(n)]
    load = [0] * n
    for size, fn in sorted(tasks, key=lambda t: -t[0]):
        b = load.index(min(load))
        bins[b].append(fn)
        load[b] += size

    def work(fns: list[Callable[[S], None]]) -> None:
        own = state()
        for fn in fns:
            fn(own)

    for f in [pool.submit(work, fns) for fns in bins if fns]:
        f.result()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def nap_team(n: int) -> None:
    """Make the calling thread's idle OpenMP helpers sleep now instead of spinning on the cores.

    After each parallel kernel, libgomp's idle threads spin (default wait policy: 300,000 spins,
    about 7 ms here) before they sleep; the kernels just before a prox call (the optimizer step,
    a restore) leave them spinning on cores the workers need for the call's first milliseconds.
    libgomp spins only 100 times when it manages more threads than there are CPUs (its documented
    ``GOMP_SPINCOUNT`` rule), so one tiny kernel on ``n + 1`` threads, where ``n`` threads already
    fill the CPUs, ends the current spin and leaves every helper asleep after it; the next
    ``n``-thread kernel wakes ``n - 1`` of them (and retires the extra one). Elsewhere (fewer
    threads than CPUs, another OpenMP runtime) it is one small parallel fill, nothing else.
    """
    if n < 2 or n < _cpus():
        return
    buf = _NAP_BUFS.get(n)
    if buf is None:  # kept: a fresh one each call would fault its pages in
        buf = _NAP_BUFS[n] = torch.empty((n + 2) * _GRAIN)
    torch.set_num_threads(n + 1)
    try:
        buf.fill_(0.0)  # n + 2 grains: n + 1 threads
    finally:
        torch.set_num_threads(n)


@contextmanager
def caller_on_one_thread(active: bool = True) -> Iterator[None]:
    """While ``active``, the calling thread's own kernels run on one intra-op thread (torch's count
    is restored on exit). Between the workers' tasks the caller runs small kernels (sums of ``M``,
    shrink factors); at more threads each could wake its OpenMP team, whose threads then spin
    (libgomp's default wait policy) on the cores the workers need. With ``NAP``, the team still
    spinning from the kernels before the call is put to sleep first (``nap_team``)."""
    if not active:
        yield
        return
    n = torch.get_num_threads()
    if NAP:
        nap_team(n)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
