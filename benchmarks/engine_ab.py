"""``soft_threshold_all`` (conditioned, or ``--prox euclidean``) against one Adam step, in one process.

    python benchmarks/engine_ab.py                         # both layouts, the working tree
    python benchmarks/engine_ab.py --before 2955b20        # + the engine as of an older revision
    python benchmarks/engine_ab.py --layout plan --profile # + where one call's time goes
    python benchmarks/engine_ab.py --each --before HEAD    # c.soft_threshold coupling by coupling instead
    python benchmarks/engine_ab.py --prox euclidean --threads 2 --before HEAD  # the Euclidean prox, read the wall time
    python benchmarks/engine_ab.py --prox euclidean --eager-too  # + ours with the native loops off

``engine.py`` times every contender at the issue's thread count; on a machine other processes
share, that measures their load. This script times only what issue 10's conditioned bar compares:
``soft_threshold_all(couplings, taus, conditioners)`` (relative 1e-6; with ``--prox euclidean`` the
Euclidean ``soft_threshold_all(couplings, taus)``) and one Adam(foreach) step,
in the regime of ``engine.py`` (its helpers: a real Adam state, near-death blocks, thresholds
zeroing 2% of each coupling's blocks), weights and conditioners restored before every call, this
process's CPU time (``time.process_time``) at one thread, contenders round robin, glibc's malloc
pinned as in ``engine.py`` (the script re-executes itself with ``STEADY_MALLOC`` set). With
``--before REV`` the package as of ``REV`` (``git archive``) is imported beside ours and builds its
own couplings over the same model. Printed per layout: the median of ``--repeats`` rounds per
contender and the ratio to Adam's median; ``--profile`` adds torch.profiler's top ops and cProfile's
top functions of one call of ours.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from engine import Bench, _adam_state, _bottleneck_couplings, _conditioners, _layout, _make_dying
from plan_margin import _revision
from torch import Tensor, nn

import sparsekit_graph as skg


def _bottlenecks(pkg: ModuleType, model: nn.Module) -> list:
    """``engine.py``'s bottleneck couplings, built by ``pkg``'s engine."""
    return _bottleneck_couplings(model, importlib.import_module(pkg.__name__ + ".engine"))


def _couplings(pkg: ModuleType, model: nn.Module, which: str) -> list:
    if which == "bottleneck":
        return _bottlenecks(pkg, model)
    plan = pkg.plan(model, torch.randn(1, 3, 224, 224))
    bound = pkg.bind(plan, model)
    return [bound[g.name] for g in plan.prunable]


def _call(
    pkg: ModuleType, couplings: list, cond: dict[Tensor, Tensor], bench: Bench, prox: str, each: bool
) -> Callable[[], None]:
    eng = importlib.import_module(pkg.__name__ + ".engine")
    if prox == "euclidean":
        if each:
            return lambda: [c.soft_threshold(t) for c, t in zip(couplings, bench.tau_e)]
        return lambda: eng.soft_threshold_all(couplings, bench.tau_e)
    hs = [{s: s.view.window(cond[s.view.param]) for s in c.specs} for c in couplings]
    if each:
        return lambda: [c.soft_threshold(t, h) for c, t, h in zip(couplings, bench.tau_c, hs)]
    return lambda: eng.soft_threshold_all(couplings, bench.tau_c, hs)


def _profile(go: Callable[[], None], restore: Callable[[], None]) -> None:
    from torch.profiler import ProfilerActivity, profile

    restore()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        go()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    restore()
    pr = cProfile.Profile()
    pr.enable()
    go()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue())
    restore()


def run(
    which: str,
    contenders: dict[str, ModuleType],
    repeats: int,
    adam_steps: int,
    profile: bool,
    prox: str,
    each: bool = False,
    eager_too: bool = False,
) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    opt = _adam_state(model, adam_steps, batch=8, size=128)
    cond = _conditioners(opt)
    ours = _couplings(skg, model, which)
    _make_dying(ours, torch.Generator().manual_seed(2 if which == "bottleneck" else 3))
    bench = Bench(_layout(which, ours), cond, repeats)
    calls = {
        name: _call(pkg, ours if pkg is skg else _couplings(pkg, model, which), cond, bench, prox, each)
        for name, pkg in contenders.items()
    }
    params = opt.param_groups[0]["params"]
    weights = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]

    def restore() -> None:
        bench.restore()
        with torch.no_grad():
            for p, w, st in zip(params, weights, state):
                p.copy_(w)
                for k, v in st.items():
                    opt.state[p][k].copy_(v)

    if eager_too:  # ours again with the native loops off (engine/native.py): native against eager, same code
        native = importlib.import_module(skg.__name__ + ".engine.native")
        go_native = calls["ours"]

        def go_eager() -> None:
            was = native.set_native(False)
            try:
                go_native()
            finally:
                native.set_native(was)

        calls["ours-eager"] = go_eager
    calls = {"adam": opt.step, **calls}
    times: dict[str, list[float]] = {k: [] for k in calls}
    walls: dict[str, list[float]] = {k: [] for k in calls}
    for k in range(repeats + 2):  # two warm-up rounds (compiling)
        for name, go in calls.items():
            restore()
            t, w = time.process_time(), time.perf_counter()
            go()
            if k >= 2:
                times[name].append(time.process_time() - t)
                walls[name].append(time.perf_counter() - w)
    restore()
    nb = sum(c.numblk() for c in ours)
    for label, got in (("process", times), ("wall", walls)):
        med = {k: statistics.median(v) for k, v in got.items()}
        cells = "  ".join(f"{k} {1e3 * v:7.2f} ms ({v / med['adam']:.2f}x)" for k, v in med.items())
        how = "c.soft_threshold in order" if each else "soft_threshold_all"
        print(
            f"{which} ({len(ours)} couplings, {nb} blocks), {prox} {how}, {label} time, median of {repeats}: {cells}", flush=True
        )
    if profile:
        _profile(calls["ours"], restore)


# glibc's malloc pinned to a training process's steady state (as engine.py does): without it, Adam's
# step faults fresh pages every call and takes up to 1.8x as long, depending on what ran before.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def main() -> None:
    if any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items()):  # glibc reads these at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=("both", "bottleneck", "plan"), default="both")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--adam-steps", type=int, default=4)
    ap.add_argument("--before", default=None, help="git revision to compare against, in this process")
    ap.add_argument("--threads", type=int, default=1, help="1: process time is the measure; more: read the wall time")
    ap.add_argument("--profile", action="store_true", help="torch.profiler and cProfile of one call of ours")
    ap.add_argument("--prox", choices=("conditioned", "euclidean"), default="conditioned", help="which soft_threshold_all")
    ap.add_argument("--each", action="store_true", help="time c.soft_threshold coupling by coupling, not soft_threshold_all")
    ap.add_argument("--eager-too", action="store_true", help="also ours with engine/native.py's loops off ('ours-eager')")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), process time; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {"ours": skg}
        if args.before:
            contenders["before"] = _revision(args.before, Path(tmp))
        for which in ("bottleneck", "plan"):
            if args.layout in ("both", which):
                run(which, contenders, args.repeats, args.adam_steps, args.profile, args.prox, args.each, args.eager_too)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
