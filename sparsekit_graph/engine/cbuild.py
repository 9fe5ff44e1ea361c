"""Build a small plain-C source once with the system compiler, cache the shared library, load it with ``ctypes``.

No torch headers and no Python headers: the build is one ``cc -O3 -shared -fPIC`` of a few loops
(well under a second idle). The library is cached in a per-user directory (``$SPARSEKIT_GRAPH_CACHE``,
else ``$XDG_CACHE_HOME/sparsekit_graph``, else ``~/.cache/sparsekit_graph``) under a name keyed by a
hash of the source, the flags, the compiler (its path and ``--version``) and the CPU (``-march=native``
code must not be loaded on another CPU sharing the home directory). Concurrent builders each compile
to their own temporary name and ``os.replace`` it into place, so no process ever loads a half-written
file. ``ctypes.CDLL`` functions release the GIL for the duration of the call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import SparseKitError

__all__ = ["BuildError", "cache_dir", "compiler", "load"]


class BuildError(SparseKitError):
    """No C compiler, or the source did not build or load."""


def cache_dir() -> Path:
    """Where built libraries are kept (created on demand)."""
    own = os.environ.get("SPARSEKIT_GRAPH_CACHE")
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsekit_graph"


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set, else ``cc``, ``gcc`` or ``clang`` on the path."""
    for name in [os.environ.get("CC", "")] + ["cc", "gcc", "clang"]:
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def _cpu() -> str:
    """The CPU's identity for ``-march=native`` (model and feature flags), or the machine name."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "\n".join(sorted(set(keep)))


def _key(cc: str, source: str, flags: list[str]) -> str:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"C compiler {cc!r} does not run: {exc}") from exc
    text = "\0".join([source, " ".join(flags), cc, version, _cpu()])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load(name: str, source: str, flags: list[str]) -> ctypes.CDLL:
    """The library built from ``source`` with ``flags`` (cached; built on a miss).

    Raises:
        BuildError: No compiler, a failed build, or a library that does not load.
    """
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install cc/gcc/clang)")
    where = cache_dir()
    target = where / f"{name}-{_key(cc, source, flags)}.so"
    if not target.exists():
        try:
            where.mkdir(parents=True, exist_ok=True)
            _build(cc, source, flags, target)
        except OSError:  # an unwritable cache: build into a private temporary directory instead
            target = Path(tempfile.mkdtemp(prefix="sparsekit_graph_")) / target.name
            _build(cc, source, flags, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise BuildError(f"built {target} does not load: {exc}") from exc


def _build(cc: str, source: str, flags: list[str], target: Path) -> None:
    """Compile to a temporary name next to ``target``, then rename it into place (atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    src = tmp[:-3] + ".c"
    try:
        Path(src).write_text(source)
        done = subprocess.run([cc, *flags, "-shared", "-fPIC", src, "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BuildError(f"{cc} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except subprocess.SubprocessError as exc:
        raise BuildError(f"{cc} did not finish: {exc}") from exc
    finally:
        for leftover in (tmp, src):
            if os.path.exists(leftover):
                os.unlink(leftover)
