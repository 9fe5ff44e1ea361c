"""``engine.flow.Flow``: worker loops over one priority queue, waited on by key."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sparsekit_graph.engine.flow import Flow


def test_tasks_run_by_priority_then_in_order_queued() -> None:
    pool = ThreadPoolExecutor(1)
    try:
        flow = Flow(pool)
        gate, ran = threading.Event(), []
        flow.put(0, "gate", lambda sc: gate.wait(5))  # holds the one worker while the rest is queued
        for prio, name in ((5, "write"), (1, "first-a"), (0, "reread"), (1, "first-b")):
            flow.put(prio, name, lambda sc, name=name: ran.append(name))
        gate.set()
        flow.wait("first-b")
        assert ran[:3] == ["reread", "first-a", "first-b"]
        flow.close()
        assert ran == ["reread", "first-a", "first-b", "write"]
    finally:
        pool.shutdown()


def test_a_failed_task_is_raised_and_the_loops_end() -> None:
    pool = ThreadPoolExecutor(2)
    try:
        flow = Flow(pool)
        ran: list[int] = []

        def boom(sc: object) -> None:
            raise ValueError("kernel failed")

        flow.put(0, "bad", boom)
        with pytest.raises(ValueError, match="kernel failed"):
            flow.wait("bad")
        flow.put(1, "after", lambda sc: ran.append(1))  # skipped: an earlier task failed
        with pytest.raises(ValueError, match="kernel failed"):
            flow.close()
        assert ran == []
        done = pool.submit(lambda: 7)  # the loops returned: the pool's threads take new work
        assert done.result(timeout=5) == 7
    finally:
        pool.shutdown()
