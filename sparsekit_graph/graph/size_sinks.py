"""The sinks ``size_flow`` may trust with a size read: output that provably does not come back.

``print`` and ``logging`` take a read's value out of the model's sight only where they write to
a stream the model cannot read back. So a sink is trusted only against the process state of
the moment the read was made (``Sinks``, snapshot by ``sinks_now``), compared with the state
when planning began:

- ``print`` (to ``sys.stdout`` or ``sys.stderr``): that stream is the one planning began with
  (not redirected since: ``contextlib.redirect_stdout``, ``sys.stdout = buf``) and writes to an
  OS file (the process's own stream, or a test runner's capture file; never a ``StringIO``);
- a ``logging`` call: the logging configuration is the one planning began with, and the call's
  logger (a plain ``logging.Logger``) either drops the level, or hands the record, without
  filters and with the default record factory, only to handlers of known kinds (a plain
  ``StreamHandler`` to a trusted stream with a plain ``Formatter``, ``NullHandler``, the
  last-resort stderr handler). A handler that keeps records (pytest's capture, a list) or
  writes to a file or a buffer is not trusted;
- ``warnings.warn``: the warnings configuration is the one planning began with, no filter turns
  a warning into an error (an exception is control flow), and a warning is shown by warnings'
  own code (not recorded by ``catch_warnings(record=True)``, not routed to logging by
  ``logging.captureWarnings``), on a ``sys.stderr`` that ``print`` may use.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["Sinks", "log_trusted", "plain_write", "print_trusted", "sinks_now", "warn_trusted"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL,
           "fatal": logging.CRITICAL}  # fmt: skip
_STREAM_HANDLERS = (logging.StreamHandler, type(logging.lastResort))
_LOGGERS = (logging.Logger, logging.RootLogger)


@dataclass(frozen=True, eq=False)
class Sinks:
    """The process's output streams and logging configuration at one moment."""

    stdout: Any
    stderr: Any
    logging: tuple[Any, ...]
    warnings: tuple[Any, ...] = ()

    def same_streams(self, other: Sinks, name: str) -> bool:
        """Is stream ``name`` (``stdout``/``stderr``) the same object in both?"""
        return getattr(self, name) is getattr(other, name)


def sinks_now() -> Sinks:
    """The streams and the logging configuration as they are now."""
    return Sinks(sys.stdout, sys.stderr, _logging_state(), _warnings_state())


def print_trusted(stream: str, at: Sinks, base: Sinks) -> bool:
    """Is ``print`` to ``sys.<stream>`` when the state was ``at`` (planning began at ``base``)
    output the model cannot read back?"""
    return at.same_streams(base, stream) and _os_stream(getattr(at, stream))


def warn_trusted(at: Sinks, base: Sinks) -> bool:
    """Is ``warnings.warn`` of a message made when the state was ``at`` (planning began at
    ``base``) output the model cannot read back, and no exception?"""
    if at.warnings != base.warnings or not at.warnings:
        return False
    show, impl, fmt, filters = at.warnings
    stock = show is getattr(warnings, "_showwarning_orig", None) and fmt is getattr(warnings, "_formatwarning_orig", None)
    own = getattr(getattr(impl, "__code__", None), "co_filename", None) == warnings.__file__  # not a recording list
    return stock and own and not _may_raise(filters) and print_trusted("stderr", at, base)


def _may_raise(filters: tuple[Any, ...]) -> bool:
    """May a warning meet an ``error`` filter before one that takes every warning?"""
    for action, message, category, module, lineno in filters:
        if action == "error":
            return True
        if message is None and category is Warning and module is None and not lineno:
            return False
    return False


def plain_write(stream: Any) -> bool:
    """Is ``stream.write`` the io class's own (no Python override that could keep the text)?"""
    return getattr(type(stream), "write", None) in (io.TextIOWrapper.write, io.BufferedWriter.write, io.FileIO.write)


def log_trusted(fn: Any, logger: Any, at: Sinks, base: Sinks) -> bool:
    """Is ``fn`` (``logging.info``, ``Logger.info``, ...) called on ``logger`` (None: the root
    logger) when the state was ``at`` a sink whose output the model cannot read back?"""
    level = _LEVELS.get(getattr(fn, "__name__", ""))
    logger = logging.getLogger() if logger is None else logger
    if level is None or type(logger) not in _LOGGERS or at.logging != base.logging:
        return False
    if not logger.isEnabledFor(level):
        return True  # the record is never made
    if logging.getLogRecordFactory() is not logging.LogRecord or logger.filters:
        return False
    handlers: list[Any] = []
    node: Any = logger
    while node is not None:
        handlers += node.handlers
        node = node.parent if node.propagate else None
    if not handlers and logging.lastResort is not None:
        handlers = [logging.lastResort]
    return all(_known_handler(h, level, at) for h in handlers)


def _known_handler(h: Any, level: int, at: Sinks) -> bool:
    """Does handler ``h`` drop a record of ``level``, or only write it to a trusted stream?"""
    if level < h.level or type(h) is logging.NullHandler:
        return True
    if type(h) not in _STREAM_HANDLERS or h.filters or (h.formatter is not None and type(h.formatter) is not logging.Formatter):
        return False
    stream = h.stream
    return any(stream is s for s in (at.stdout, at.stderr, sys.__stdout__, sys.__stderr__)) and _os_stream(stream)


def _os_stream(s: Any) -> bool:
    """Does ``s`` write to an OS file (not to memory the model could read back)?"""
    if not isinstance(s, (io.TextIOWrapper, io.BufferedIOBase, io.FileIO)):
        return False
    try:
        s.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return True


def _warnings_state() -> tuple[Any, ...]:
    """What decides whether a warning is shown, where, and whether it raises."""
    return (warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None), warnings.formatwarning, tuple(warnings.filters))


def _logging_state() -> tuple[Any, ...]:
    """What decides where a log record goes: each logger with handlers, filters or a level
    (or disabled, or not propagating), with its handlers' levels, streams, filters and formatters."""
    out: list[Any] = [logging.getLogRecordFactory(), logging.root.manager.disable, logging.root.level]
    for lg in (logging.root, *logging.root.manager.loggerDict.values()):
        if isinstance(lg, logging.Logger) and (lg.handlers or lg.filters or lg.level or lg.disabled or not lg.propagate):
            out.append((lg, lg.level, lg.propagate, lg.disabled, tuple(lg.filters)))
            out.extend((h, h.level, getattr(h, "stream", None), tuple(h.filters), h.formatter) for h in lg.handlers)
    return tuple(out)
