"""Planning vs Torch-Pruning on a shared machine: CPU process time, one thread, interleaved calls.

    python benchmarks/plan_margin.py --res 32 --repeats 30                    # ours vs TP
    python benchmarks/plan_margin.py --res 32 --before d5b3c49                # + an older revision
    python benchmarks/plan_margin.py --res 32 --before d5b3c49 --stages 30    # + stage breakdown

``plan_vs_torch_pruning.py`` times wall clock at 2 threads and waits for a quiet machine; this
script is for a machine other processes share: it counts this process's CPU time only
(``time.process_time``), at one thread, and reports the minimum and the 25th percentile of
``--repeats`` rounds. Each round makes a fresh model per call (construction and a
``gc.collect()`` untimed) and calls every contender once, in turn, in this process:

- ``ours``: ``sparsekit_graph.plan(model, x)`` of the working tree;
- ``before`` (with ``--before REV``): the package as of git revision ``REV``, extracted with
  ``git archive`` and imported beside ours under another name;
- ``tp``: ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)``.

``--stages N`` then times the stages of ``plan()`` on N fresh models per contender by wrapping
the functions at the stage boundaries (module namespaces, for those calls only): the mode
switch and model snapshot, the symbolic trace, the meta shape pass, the axis graph (rules) and
the groups; the minimum per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]


def _revision(rev: str, into: Path) -> ModuleType:
    """The package as of ``rev``, importable as ``skg_<rev>`` beside the working tree's."""
    archive = subprocess.run(["git", "archive", rev, "sparsekit_graph"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    name = f"skg_{rev}"
    (into / "sparsekit_graph").rename(into / name)
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def _spread(times: list[float]) -> tuple[float, float]:
    t = sorted(times)
    return t[0], t[len(t) // 4]


def race(name: str, res: int, repeats: int, contenders: dict[str, Callable[[torch.nn.Module, torch.Tensor], Any]]) -> None:
    x = torch.randn(1, 3, res, res)
    for fn in contenders.values():  # warm-up: imports, caches of signatures and rule lookups
        fn(torchvision.models.get_model(name).eval(), x)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, fn in contenders.items():
            model = torchvision.models.get_model(name).eval()
            gc.collect()
            t = time.process_time()
            fn(model, x)
            times[k].append(time.process_time() - t)
    spread = {k: _spread(v) for k, v in times.items()}
    cells = " | ".join(f"{k} {lo * 1e3:.2f} / {p25 * 1e3:.2f} ms" for k, (lo, p25) in spread.items())
    ratios = [(a, b) for a, b in (("ours", "tp"), ("before", "tp"), ("ours", "before")) if a in spread and b in spread]
    shown = " | ".join(f"{a}/{b} {spread[a][0] / spread[b][0]:.2f} / {spread[a][1] / spread[b][1]:.2f}" for a, b in ratios)
    print(f"{name} {res}x{res} (min / p25 of {repeats}): {cells} || {shown}", flush=True)


def _timed(acc: dict[str, float], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[label] = acc.get(label, 0.0) + time.process_time() - t

    return wrapper


def _timed_context(acc: dict[str, float], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        gen = fn.__wrapped__(*args, **kwargs)  # the generator under @contextmanager
        t = time.process_time()
        value = next(gen)
        acc[label] = acc.get(label, 0.0) + time.process_time() - t
        try:
            yield value
        finally:
            t = time.process_time()
            with contextlib.suppress(StopIteration):
                next(gen)
            acc[label] = acc.get(label, 0.0) + time.process_time() - t

    return wrapper


def stages(pkg: ModuleType, name: str, res: int, n: int) -> dict[str, float]:
    """Minimum per stage of ``plan()`` over ``n`` fresh models (the wrappers are removed after)."""
    trace = importlib.import_module(pkg.__name__ + ".graph.trace")
    tracer = importlib.import_module(pkg.__name__ + ".graph.size_tracer").SizeTracer
    planner = importlib.import_module(pkg.__name__ + ".plan.planner")
    acc: dict[str, float] = {}
    patches = [
        (trace, "model_mode", _timed_context(acc, "mode switch + snapshot", trace.model_mode)),
        (tracer, "trace", _timed(acc, "symbolic trace", tracer.trace)),
        (trace, "propagate", _timed(acc, "meta shape pass", trace.propagate)),
        (planner, "add_traced_graph", _timed(acc, "axis graph (rules)", planner.add_traced_graph)),
        (planner, "resolve", _timed(acc, "groups", planner.resolve)),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, wrapper in patches:
        setattr(owner, attr, wrapper)
    x = torch.randn(1, 3, res, res)
    rows: list[dict[str, float]] = []
    try:
        pkg.plan(torchvision.models.get_model(name).eval(), x)
        for _ in range(n):
            model = torchvision.models.get_model(name).eval()
            gc.collect()
            acc.clear()
            t = time.process_time()
            pkg.plan(model, x)
            acc["whole plan()"] = time.process_time() - t
            rows.append(dict(acc))
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    return {k: min(r.get(k, 0.0) for r in rows) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50", help="comma-separated torchvision names")
    ap.add_argument("--res", type=int, default=32, help="input height and width (batch 1)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--before", default=None, help="git revision to compare against, in this process")
    ap.add_argument("--stages", type=int, default=0, help="fresh models per stage breakdown (0: none)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import torch_pruning as tp

    import sparsekit_graph as skg

    with tempfile.TemporaryDirectory() as tmp:
        old = _revision(args.before, Path(tmp)) if args.before else None
        contenders: dict[str, Callable[[torch.nn.Module, torch.Tensor], Any]] = {"ours": skg.plan}
        if old is not None:
            contenders["before"] = old.plan
        contenders["tp"] = lambda m, x: tp.DependencyGraph().build_dependency(m, example_inputs=x)
        for name in args.models.split(","):
            race(name, args.res, args.repeats, contenders)
        if args.stages:
            for name in args.models.split(","):
                both = {"ours": stages(skg, name, args.res, args.stages)}
                if old is not None:
                    try:
                        both["before"] = stages(old, name, args.res, args.stages)
                    except AttributeError as e:  # a revision from before the stages' current names
                        print(f"  (no stage breakdown for --before: {e})")
                print(f"{name} {args.res}x{args.res} stages (ms, min of {args.stages}):")
                for label in both["ours"]:
                    cells = "  ".join(f"{k} {v.get(label, 0.0) * 1e3:6.2f}" for k, v in both.items())
                    print(f"  {label:24s} {cells}")


if __name__ == "__main__":
    main()
