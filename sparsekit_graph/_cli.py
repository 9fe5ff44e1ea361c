"""Habits every CLI command shares: one-line errors (exit code 2), ``--quiet``, ``--debug``,
progress on stages, JSON on stdout with everything else on stderr."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["DEBUG", "JSON", "QUIET", "Session"]

QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (and --json output).")
DEBUG = typer.Option(False, "--debug", help="Show the full traceback of an error.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (progress goes to stderr).")


def _console(*, stderr: bool) -> Console:
    """A console without emoji codes ("hf:llama:" is a spec) and wide tables when piped."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, emoji=False, highlight=False, width=None if probe.is_terminal else 160)


@dataclass
class Session:
    """One command's output settings; ``with session.guard():`` turns errors into one line."""

    quiet: bool = False
    debug: bool = False
    json: bool = False
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))
    _progress: Progress | None = None

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a command body: any error prints ``error: ...`` on one line and exits with 2
        (``--debug`` re-raises it with its traceback)."""
        try:
            yield
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if self.debug:
                raise
            self._stop_progress()
            from .errors import SparseKitError

            known = isinstance(e, (SparseKitError, OSError, ImportError))
            msg = " ".join(str(e).split()) or type(e).__name__
            if not known:
                msg = f"unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)"
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None
        finally:
            self._stop_progress()

    @contextmanager
    def stage(self, description: str) -> Iterator[None]:
        """Show ``description`` with a spinner, a pulsing bar and the elapsed time while it runs."""
        if self.quiet:
            yield
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=self.err
            )
            self._progress.start()
        task = self._progress.add_task(description, total=None)
        t0 = time.perf_counter()
        yield
        self._progress.update(task, total=1, completed=1, description=f"{description} ({time.perf_counter() - t0:.1f}s)")

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, *objects: Any) -> None:
        """Human output (a line or a rich table) unless ``--quiet`` or ``--json``."""
        if not (self.quiet or self.json):
            self._stop_progress()
            self.out.print(*objects, soft_wrap=True)

    def emit(self, data: Any) -> None:
        """The ``--json`` result, on stdout."""
        self._stop_progress()
        typer.echo(json.dumps(data, indent=1))
