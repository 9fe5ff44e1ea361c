"""The native Euclidean loops (``engine/native.py``): build time, per-call overhead of ``ctypes``
against the pybind11 build of an older revision, and whether two threads overlap (the GIL released).

    python benchmarks/native_calls.py [--pybind PATH]  # PATH: a copy of the pybind11 native.py (load_inline)

One process, one intra-op thread, process time (``time.process_time``), median of rounds, the
contenders interleaved. The pybind11 module is only timed if given (its build takes minutes cold).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import torch

from sparsekit_graph.engine import cbuild, native


def _build_time(rounds: int = 3) -> list[float]:
    """Cold builds (fresh cache directories), wall seconds."""
    out = []
    keep = os.environ.get("SPARSEKIT_GRAPH_CACHE")
    for _ in range(rounds):
        os.environ["SPARSEKIT_GRAPH_CACHE"] = tempfile.mkdtemp()
        t = time.perf_counter()
        cbuild.load("sparsekit_graph_euclid", native.SOURCE, native.flags())
        out.append(time.perf_counter() - t)
    if keep is None:
        os.environ.pop("SPARSEKIT_GRAPH_CACHE")
    else:
        os.environ["SPARSEKIT_GRAPH_CACHE"] = keep
    return out


def _per_call(fns: dict[str, Callable[[], None]], calls: int = 2000, rounds: int = 15) -> dict[str, float]:
    """Microseconds of process time per call, median over interleaved rounds."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.process_time()
            for _ in range(calls):
                fn()
            got[name].append((time.process_time() - t) / calls * 1e6)
    return {k: statistics.median(v) for k, v in got.items()}


def _overlap(x: torch.Tensor, reps: int = 40) -> tuple[float, float]:
    """Wall seconds of ``2 reps`` column-sum calls on one thread, then on two threads side by side."""

    def work() -> None:
        for _ in range(reps):
            native.weighted_cols(x, None)

    t = time.perf_counter()
    work()
    work()
    one = time.perf_counter() - t
    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return one, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pybind", default=None, help="path to the pybind11 native.py of an older revision")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("cold builds (s):", ", ".join(f"{b:.3f}" for b in _build_time()))
    native.set_native(True)
    assert native.enabled(torch.zeros(2, 2)), native._state["broken"]
    old = None
    if args.pybind:
        spec = importlib.util.spec_from_file_location("native_pybind", args.pybind)
        old = importlib.util.module_from_spec(spec)
        sys.modules["native_pybind"] = old
        spec.loader.exec_module(old)  # type: ignore[union-attr]
        old.set_native(True)
        assert old.enabled(torch.zeros(2, 2)), old._state["broken"]
    for shape in [(4, 4), (64, 64), (2048, 512)]:
        x = torch.randn(*shape)
        v = torch.rand(shape[1])
        fns = {"ctypes wrows": lambda x=x, v=v: native.weighted_rows(x, v)}
        if old is not None:
            fns["pybind wrows"] = lambda x=x, v=v: old.weighted_rows(x, v)
            assert torch.equal(native.weighted_rows(x, v), old.weighted_rows(x, v))
            assert torch.equal(native.weighted_cols(x, None), old.weighted_cols(x, None))
        fns["eager mv"] = lambda x=x, v=v: torch.mv(x * x, v)
        calls = 2000 if x.numel() < 10000 else 50
        print(shape, {k: f"{t:.2f} us" for k, t in _per_call(fns, calls).items()})
    one, two = _overlap(torch.randn(4096, 1024))
    print(f"GIL: 2x40 column sums of (4096, 1024) serial {one:.3f} s, two threads {two:.3f} s ({one / two:.2f}x)")


if __name__ == "__main__":
    main()
