"""Shared timing helper for the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def sample_seconds(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    *,
    setup: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
) -> list[float]:
    """Wall times of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    Args:
        fn: The call to time.
        repeats: Timed runs.
        warmup: Untimed runs first.
        setup: Runs untimed before every call (warmups included), e.g. to restore the weights
            a call overwrites, so that every timed call starts from the same state.
        after: Runs untimed after every timed call, e.g. to check what the call did.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if after is not None:
            after()
    return times


def median_seconds(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    *,
    setup: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
) -> float:
    """Median of :func:`sample_seconds` (same arguments)."""
    return statistics.median(sample_seconds(fn, repeats, warmup, setup=setup, after=after))
