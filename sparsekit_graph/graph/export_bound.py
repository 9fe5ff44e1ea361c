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
heap trips it; a stop is delivered as an asynchronous exception (``PyThreadState_SetAsyncExc``)
by a watchdog thread, which costs the export nothing (``sys.settrace`` made it three times
slower), never while a collection runs (another library's ``gc.callbacks``, Hypothesis's, would
swallow it), and names the line where it landed.
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
from types import FrameType, TracebackType

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


def _model_line(frames: Iterator[FrameType]) -> str | None:
    """Where the model's code (not torch's, not ours) is: the first of ``frames`` (innermost
    first) outside them."""
    frame = next((f for f in frames if not f.f_code.co_filename.startswith(INTERNAL)), None)
    return None if frame is None else f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"


def _outward(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def _inward(error: BaseException) -> Iterator[FrameType]:
    """The frames ``error``'s ``_Stop`` (it, its cause or its context) was raised through,
    innermost first."""
    while error is not None and not isinstance(error, _Stop):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    frames = [tb.tb_frame for tb in _tracebacks(error.__traceback__ if error is not None else None)]
    return reversed(frames)


def _tracebacks(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


class _Collections:
    """The calling thread's garbage collections while active: their time, and whether one is
    running (the model's code is not; another library's ``gc.callbacks`` may be, which would
    swallow a stop). One callback first and one last, so the others run inside."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.ident, self.raw, self.spent, self.began, self.running = threading.get_ident(), clock, 0.0, 0.0, False

    def clock(self) -> float:
        """The raw clock, less the collections' time."""
        return self.raw() - self.spent

    def _first(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start" and threading.get_ident() == self.ident:
            self.began, self.running = self.raw(), True

    def _last(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "stop" and threading.get_ident() == self.ident and self.running:
            self.spent, self.running = self.spent + self.raw() - self.began, False

    def __enter__(self) -> _Collections:
        gc.callbacks.insert(0, self._first)
        gc.callbacks.append(self._last)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._first)
        gc.callbacks.remove(self._last)


@contextmanager
def timed_export() -> Iterator[list[float]]:
    """Time the export inside (``[seconds]``, filled in on exit); inside ``bounded_by``, stop
    it with a ``RunawayError`` past the bound."""
    spent = [0.0]
    with _Collections(_cpu_clock()) as collections:
        start = collections.clock()
        model = _MODEL_SECONDS.get()
        if model is None:
            yield spent
        else:
            with _watched(collections, start, FACTOR * model + SLACK, model):
                yield spent
        spent[0] = collections.clock() - start


@contextmanager
def _watched(collections: _Collections, start: float, bound: float, model: float) -> Iterator[None]:
    """Stop the calling thread with a ``RunawayError`` once its clock passes ``start + bound``
    (never inside a garbage collection)."""
    ident = threading.get_ident()
    lock = threading.Lock()
    state = {"inside": True, "fired": False, "where": ""}
    done = threading.Event()

    def watch() -> None:  # fires again every poll: torch may catch one stop and carry on
        while not done.wait(_POLL):
            if collections.clock() - start > bound and not collections.running:
                with lock:
                    if state["inside"]:
                        here = _model_line(_outward(sys._current_frames().get(ident)))
                        state["where"] = here or "torch's code"
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
    except BaseException as e:  # ``_Stop``, or what torch made of it
        if not state["fired"]:
            raise
        where = _model_line(_inward(e)) or state["where"]  # where it landed, else where it was sent
        raise RunawayError(
            f"its export ran past {bound:.1f} s of CPU ({FACTOR:g} times the model's own {model:.1f} s, plus "
            f"{SLACK:g} s), in {where}: a loop on a pruned size that does not end?"
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
