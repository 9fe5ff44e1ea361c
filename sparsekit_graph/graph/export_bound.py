"""A bound on how long the export of a pruned copy may run the model's Python.

torch.export runs the forward's Python. At the count a trial keeps, the model's own loop may
never end (``n = h.shape[1]; while n: n -= 4`` ends at 8, not at 3, and each turn's decision
is recorded): the export probe, or ``prune``'s retrace, would run until the process is killed.
So every export notes the CPU time it took (``EXPORT_SECONDS`` on the graph's output node), and
an export inside ``bounded_by(graph)`` (a pruned copy's) is stopped past ``FACTOR`` times the
model's own, plus ``SLACK`` seconds: a ``RunawayError`` naming the line the model's code was on,
which pins the groups tried, not a hang. A pruned copy's export runs the same code at fewer
channels; the model's own export paid the first call's warm-up, so the bound only stops what
does not end. CPU time of the exporting thread, less what its garbage collections took (a
long-lived process's full collection can take seconds), so neither a loaded machine nor a big
heap trips it; a stop
is delivered as an asynchronous exception (``PyThreadState_SetAsyncExc``) by a watchdog
thread, which costs the export nothing (``sys.settrace`` made it three times slower).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch.fx as fx

from ..errors import TraceError
from .user_code import INTERNAL

__all__ = ["EXPORT_SECONDS", "FACTOR", "SLACK", "RunawayError", "bounded_by", "timed_export"]

EXPORT_SECONDS = "skg.export_seconds"  # on an exported graph's output node: CPU seconds its export took
FACTOR = 4.0
SLACK = 10.0  # seconds: the first export of a new shape may pay caches the model's own had warm
_POLL = 0.05  # seconds between the watchdog's looks

_MODEL_SECONDS: ContextVar[float | None] = ContextVar("skg_model_export_seconds", default=None)  # set by ``bounded_by``


class RunawayError(TraceError):
    """The export of a pruned copy ran far longer than the model's: a loop of the model's that
    does not end at the pruned count."""


class _Stop(BaseException):
    """Raised in the exporting thread by the watchdog; a BaseException, so the model's own
    ``except Exception`` cannot swallow it."""


def _cpu_clock() -> Callable[[], float]:
    """The calling thread's CPU time, readable from another thread (process time elsewhere)."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return time.process_time
    return lambda: time.clock_gettime(clock)


def _model_line(ident: int) -> str:
    """Where the model's code (not torch's, not ours) is in thread ``ident``."""
    frame = sys._current_frames().get(ident)
    while frame is not None and frame.f_code.co_filename.startswith(INTERNAL):
        frame = frame.f_back
    if frame is None:
        return "torch's code"
    return f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"


@contextmanager
def _less_collections(clock: Callable[[], float]) -> Iterator[Callable[[], float]]:
    """``clock``, less the time garbage collections took in the calling thread inside."""
    ident = threading.get_ident()
    spent, began = [0.0], [0.0]

    def note(phase: str, _info: dict[str, int]) -> None:
        if threading.get_ident() == ident:
            if phase == "start":
                began[0] = clock()
            else:
                spent[0] += clock() - began[0]

    gc.callbacks.append(note)
    try:
        yield lambda: clock() - spent[0]
    finally:
        gc.callbacks.remove(note)


@contextmanager
def timed_export() -> Iterator[list[float]]:
    """Time the export inside (``[seconds]``, filled in on exit); inside ``bounded_by``, stop
    it with a ``RunawayError`` past the bound."""
    spent = [0.0]
    with _less_collections(_cpu_clock()) as clock:
        start = clock()
        model = _MODEL_SECONDS.get()
        if model is None:
            yield spent
        else:
            with _watched(clock, start, FACTOR * model + SLACK, model):
                yield spent
        spent[0] = clock() - start


@contextmanager
def _watched(clock: Callable[[], float], start: float, bound: float, model: float) -> Iterator[None]:
    """Stop the calling thread with a ``RunawayError`` once ``clock() - start`` passes ``bound``."""
    ident = threading.get_ident()
    lock = threading.Lock()
    state = {"inside": True, "fired": False, "where": ""}
    done = threading.Event()

    def watch() -> None:  # fires again every poll: torch may catch one stop and carry on
        while not done.wait(_POLL):
            if clock() - start > bound:
                with lock:
                    if state["inside"]:
                        state["where"] = _model_line(ident)  # the last stop sent is the one that lands
                        state["fired"] = True
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_Stop))

    watchdog = threading.Thread(target=watch, name="skg-export-bound", daemon=True)
    try:
        try:
            watchdog.start()
            yield
        finally:
            with lock:
                state["inside"] = False
                if state["fired"]:  # not delivered yet: take it back
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
            done.set()
            watchdog.join()
    except BaseException:  # ``_Stop``, or what torch made of it
        if not state["fired"]:
            raise
        raise RunawayError(
            f"its export ran past {bound:.1f} s of CPU ({FACTOR:g} times the model's own {model:.1f} s, plus "
            f"{SLACK:g} s), in {state['where']}: a loop on a pruned size that does not end?"
        ) from None


@contextmanager
def bounded_by(graph: fx.Graph) -> Iterator[None]:
    """Exports inside (a pruned copy's) stop past ``FACTOR`` times the time ``graph``'s export
    took, plus ``SLACK``; unbounded where ``graph`` was not exported."""
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    token = _MODEL_SECONDS.set(out.meta.get(EXPORT_SECONDS) if out is not None else None)
    try:
        yield
    finally:
        _MODEL_SECONDS.reset(token)
