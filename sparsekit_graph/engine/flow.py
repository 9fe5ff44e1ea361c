"""Tasks on the worker threads by priority, each as soon as the caller knows it; the caller waits on keys.

The fused Euclidean prox (``engine/batch.py``) has three kinds of per-weight work: first reads
(norms, or ``M``), the later couplings' weighted re-reads, and writes. Run as three batches with a
barrier after each (and one hand-off per wave of couplings for the re-reads), the workers idle
while the calling thread computes a wave's shrink factors, and at every barrier while the last
task of a batch finishes. ``Flow`` runs them as one stream instead: the worker threads take tasks
from one priority queue (re-reads first, then first reads in the order the waves need them, then
writes), the caller queues a re-read as soon as the factor it weighs by is known, and a write as
soon as both of its weight's factors are, and it waits only for the results it needs next.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

from .sweeps import Scratch

__all__ = ["Flow"]

_STOP = 1 << 60  # the loops' stop marks come after every task


class Flow:
    """Worker loops over one priority queue (lower first, then in order queued); ``close`` ends them.

    Args:
        pool: The worker threads (``workers.worker_pool``); each runs one loop with its own scratch.
    """

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._pending: dict[Hashable, int] = {}
        self._errors: list[BaseException] = []
        self._cancelled = False
        self._loops: list[Future] = [pool.submit(self._loop) for _ in range(pool._max_workers)]  # noqa: SLF001

    def put(self, priority: int, key: Hashable, fn: Callable[[Scratch], None]) -> None:
        """Queue ``fn`` (given its thread's scratch); ``wait(key)`` returns once every task of ``key`` ran."""
        with self._cond:
            self._pending[key] = self._pending.get(key, 0) + 1
        self._queue.put((priority, next(self._order), key, fn))

    def wait(self, key: Hashable) -> None:
        """Until every task queued under ``key`` has run; raises the first task's error, if any."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending.get(key) or bool(self._errors))
            if self._errors:
                raise self._errors[0]

    def close(self, cancel: bool = False) -> None:
        """Run what is queued (skip it if ``cancel``), stop the loops, raise the first task's error."""
        self._cancelled = cancel
        for _ in self._loops:
            self._queue.put((_STOP, next(self._order), None, None))
        for f in self._loops:
            f.result()
        if self._errors and not cancel:
            raise self._errors[0]

    def _loop(self) -> None:
        scratch = Scratch()
        while True:
            _, _, key, fn = self._queue.get()
            if fn is None:
                return
            try:
                if not (self._errors or self._cancelled):
                    fn(scratch)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                with self._cond:
                    self._errors.append(e)
            finally:
                with self._cond:
                    self._pending[key] -= 1
                    if not self._pending[key]:
                        self._cond.notify_all()
