"""Planning time and pruned size, side by side with Torch-Pruning (DepGraph), in one run.

    python benchmarks/plan_vs_torch_pruning.py            # timing + stage breakdown + size tables
    python benchmarks/plan_vs_torch_pruning.py --sweep    # + every torchvision classification CNN

What is timed (every figure is a median of ``--repeats`` calls after one warm-up round, each call
on a freshly constructed model, construction and a ``gc.collect()`` untimed; the calls of one
round are interleaved, all in this process, under the same thread cap):

- ours: ``sparsekit_graph.plan(model, x)``, everything a user waits for: symbolic trace, the
  meta-device shape pass, the train-mode check, the axis graph, group resolution, the ``Plan``.
  It never runs the model, so its cost does not grow with the input resolution.
- TP build: ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)``, which
  runs a real forward pass with autograd on ``x`` and walks the autograd graph.
- TP build+groups: the same plus ``list(DG.get_all_groups())``, the enumeration of every pruning
  group (TP's equivalent of our ``Plan.groups``; ``MetaPruner`` does this on every ``step``).

Two resolutions (batch 1): 224x224, the usual one, where TP's real forward is part of its cost and
we skip it (this favours us), and 32x32, where the forward is cheap and graph analysis dominates
(the fairer comparison of the analysis itself). ``torch.fx.symbolic_trace(model)`` is timed for
reference: a floor for any fx-based planner.

The stage breakdown wraps the functions ``plan()`` calls at its stage boundaries (in their
modules' namespaces, for the breakdown calls only, never for the headline figures) and Torch-
Pruning's ``DependencyGraph._trace`` plus a hook pair around the top-level forward.

Parameters kept are after a uniform 0.5 prune of every prunable group (Torch-Pruning:
``MetaPruner(pruning_ratio=0.5)``, classifier ignored, as both pin it), at 224x224.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.fx
import torchvision
from torch import nn

import sparsekit_graph as skg

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "convnext_tiny"]
RESOLUTIONS = (224, 32)


def _model(name: str) -> nn.Module:
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


class _Quiet:
    """Times a call only while no other process uses the CPU (Linux: /proc/stat vs /proc/self/stat).

    Before each call we wait (up to ``max_wait`` seconds) for half a second in which other
    processes are idle; a call during which they used more than ``tolerance`` of the machine's
    CPU time is thrown away and repeated on a freshly made state, so that no figure is taken on
    a shared core. On a busy machine the script waits; without /proc it times blindly.
    """

    def __init__(self, tolerance: float = 0.02, retries: int = 50, max_wait: float = 1800.0) -> None:
        self.tolerance, self.retries, self.max_wait = tolerance, retries, max_wait
        self.discarded, self.unquiet = 0, 0
        self.enabled = Path("/proc/stat").exists() and Path("/proc/self/stat").exists()
        self.hz = os.sysconf("SC_CLK_TCK") if self.enabled else 100
        self.cpus = os.cpu_count() or 1

    @staticmethod
    def _ticks() -> tuple[int, int]:
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = sum(cpu) - cpu[3] - cpu[4]  # user nice system (idle iowait) irq softirq steal
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime (all our threads)

    def _calm(self, others: int, wall: float) -> bool:
        return others <= int(self.tolerance * wall * self.hz * self.cpus)

    def _wait(self) -> None:
        deadline = time.perf_counter() + self.max_wait
        while time.perf_counter() < deadline:
            b0, o0 = self._ticks()
            time.sleep(0.5)
            b1, o1 = self._ticks()
            if (b1 - b0) - (o1 - o0) <= 1:
                return

    def seconds(self, make: Callable[[], object], fn: Callable[[object], object]) -> float:
        """Wall time of ``fn(make())``; ``make()`` and a ``gc.collect()`` are untimed."""
        for _ in range(self.retries):
            state = make()
            gc.collect()
            if self.enabled:
                self._wait()
                b0, o0 = self._ticks()
            t0 = time.perf_counter()
            fn(state)
            wall = time.perf_counter() - t0
            if not self.enabled:
                return wall
            b1, o1 = self._ticks()
            if self._calm((b1 - b0) - (o1 - o0), wall):
                return wall
            self.discarded += 1
        self.unquiet += 1
        return wall


QUIET = _Quiet()


def fresh_medians(
    make: Callable[[], nn.Module], fns: dict[str, Callable[[nn.Module], object]], repeats: int, warmup: int = 1
) -> tuple[dict[str, float], bool]:
    """Median wall time of each ``fn(make())`` over ``repeats`` rounds after ``warmup`` rounds.

    Every timed call gets a freshly made model (``make()`` is untimed, and so is a ``gc.collect()``
    before the call, so no call pays for an earlier one's garbage). The functions run interleaved
    within each round (A, B, C, A, B, C, ...), so a drift of the machine affects all alike. Also
    returns whether every timed call ran on an otherwise idle machine (see ``_Quiet``).
    """
    out: dict[str, list[float]] = {k: [] for k in fns}
    before = QUIET.unquiet
    for r in range(warmup + repeats):
        for key, fn in fns.items():
            dt = QUIET.seconds(make, fn)
            if r >= warmup:
                out[key].append(dt)
    return {k: statistics.median(v) for k, v in out.items()}, QUIET.unquiet == before


def _tp_build(model: nn.Module, x: torch.Tensor) -> object:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=x)


def _tp_build_groups(model: nn.Module, x: torch.Tensor) -> int:
    return len(list(_tp_build(model, x).get_all_groups()))


def _tp_prune(model: nn.Module, x: torch.Tensor) -> float:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    before = sum(p.numel() for p in model.parameters())
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=head
    )
    pruner.step()
    model(x)
    return sum(p.numel() for p in model.parameters()) / before


# --- stage clocks -------------------------------------------------------------------------------

# (module, attribute, stage) for the functions plan() calls at its stage boundaries. A name the
# package does not have is skipped; a stage none of whose names exists is reported and its time
# shows up under "other". The trace stage includes ``_propagate``; the symbolic part is reported as
# the difference. (``trace_graph`` is the fx.Graph-only entry point, ``trace`` the older one.)
OUR_STAGES = (
    ("sparsekit_graph.plan.planner", "trace_graph", "trace"),
    ("sparsekit_graph.plan.planner", "trace", "trace"),
    ("sparsekit_graph.graph.trace", "_propagate", "shape pass (meta)"),
    ("sparsekit_graph.plan.planner", "_reads_training", "train-mode check"),
    ("sparsekit_graph.plan.planner", "add_traced_graph", "axis graph (rules)"),
    ("sparsekit_graph.plan.planner", "resolve", "resolve groups"),
    ("sparsekit_graph.plan.planner", "_input_specs", "Plan (pydantic)"),
    ("sparsekit_graph.plan.planner", "Plan", "Plan (pydantic)"),
)
OUR_COLUMNS = (
    "symbolic trace",
    "shape pass (meta)",
    "train-mode check",
    "axis graph (rules)",
    "resolve groups",
    "Plan (pydantic)",
    "other",
)
TP_COLUMNS = ("forward (autograd)", "autograd walk", "dependencies", "get_all_groups")


@contextlib.contextmanager
def _patched(targets: list[tuple[object, str, str]], spent: dict[str, float]) -> Iterator[list[str]]:
    """Replace ``owner.attr`` by a wrapper adding its wall time to ``spent[stage]``; yields the
    stages none of whose functions exist."""
    saved, found = [], set()
    for owner, attr, stage in targets:
        fn = getattr(owner, attr, None)
        if fn is None:
            continue

        def timed(*a: object, __fn: Callable = fn, __stage: str = stage, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                spent[__stage] += time.perf_counter() - t0

        found.add(stage)
        saved.append((owner, attr, fn))
        setattr(owner, attr, timed)
    try:
        yield sorted({stage for *_, stage in targets} - found)
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


def _our_stages(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], list[str]]:
    spent: dict[str, float] = defaultdict(float)
    targets = []
    for mod, attr, stage in OUR_STAGES:
        try:
            targets.append((importlib.import_module(mod), attr, stage))
        except ImportError:
            continue
    with _patched(targets, spent) as missing:
        t0 = time.perf_counter()
        skg.plan(model, x)
        total = time.perf_counter() - t0
    out = {
        "symbolic trace": spent["trace"] - spent["shape pass (meta)"],
        **{k: spent[k] for k in OUR_COLUMNS[1:-1]},
    }
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out, missing


def _tp_stages(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    import torch_pruning as tp

    spent: dict[str, float] = defaultdict(float)
    start: list[float] = []
    pre = model.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))
    post = model.register_forward_hook(lambda *_: spent.__setitem__("forward (autograd)", time.perf_counter() - start[0]))
    try:
        with _patched([(tp.DependencyGraph, "_trace", "_trace")], spent):
            t0 = time.perf_counter()
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
            t1 = time.perf_counter()
            list(dg.get_all_groups())
            t2 = time.perf_counter()
    finally:
        pre.remove()
        post.remove()
    return {
        "forward (autograd)": spent["forward (autograd)"],
        "autograd walk": spent["_trace"] - spent["forward (autograd)"],
        "dependencies": (t1 - t0) - spent["_trace"],
        "get_all_groups": t2 - t1,
        "total": t2 - t0,
    }


def _stage_medians(
    fn: Callable[[nn.Module, torch.Tensor], dict[str, float]], name: str, x: torch.Tensor, repeats: int
) -> dict[str, float]:
    runs: list[dict[str, float]] = []
    last: list[dict[str, float]] = []  # the attempt QUIET accepted is the last one it ran
    for r in range(1 + repeats):  # r == 0 is the warm-up
        QUIET.seconds(lambda: _model(name), lambda m: last.__setitem__(slice(None), [fn(m, x)]))
        if r:
            runs.append(last[0])
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


# --- tables -------------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f}"


def compare(names: list[str], repeats: int, stages: bool, sizes: bool) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")  # "unwrapped parameters" on every build
    print(
        f"torch {torch.__version__}, torch-pruning {_tp_version()}, {torch.get_num_threads()} threads, "
        f"repeats {repeats}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start\n"
        f"sparsekit_graph from {Path(skg.__file__).parent}\n"
    )
    print("## Planning time (ms, medians; ratio < 1 means we are faster)\n")
    print("| model | input | ours: plan | TP: build | ours/TP | TP: build+groups | ours/(TP+groups) | fx.symbolic_trace |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    breakdown = []
    for res in RESOLUTIONS:
        x = torch.randn(1, 3, res, res)
        for name in names:
            t, quiet = fresh_medians(
                lambda name=name: _model(name),
                {
                    "ours": lambda m: skg.plan(m, x),
                    "tp": lambda m: _tp_build(m, x),
                    "tp_groups": lambda m: _tp_build_groups(m, x),
                    "fx": lambda m: torch.fx.symbolic_trace(m),
                },
                repeats,
            )
            print(
                f"| {name} | {res}x{res} | {_ms(t['ours'])} | {_ms(t['tp'])} | **{t['ours'] / t['tp']:.2f}** "
                f"| {_ms(t['tp_groups'])} | {t['ours'] / t['tp_groups']:.2f} | {_ms(t['fx'])} |"
                + ("" if quiet else " (machine busy: not reliable)"),
                flush=True,
            )
            if stages:
                ours = _stage_medians(lambda m, x: _our_stages(m, x)[0], name, x, repeats)
                theirs = _stage_medians(_tp_stages, name, x, repeats)
                breakdown.append((name, res, ours, theirs, _our_stages(_model(name), x)[1]))
    if stages:
        print("\n## Where the time goes: our plan() (ms, medians, instrumented calls)\n")
        print(f"| model | input | {' | '.join(OUR_COLUMNS)} | total |")
        print("|---|---|" + "---:|" * (len(OUR_COLUMNS) + 1))
        for name, res, ours, _, _ in breakdown:
            print(f"| {name} | {res}x{res} | " + " | ".join(_ms(ours[k]) for k in (*OUR_COLUMNS, "total")) + " |")
        missing = sorted({m for *_, ms in breakdown for m in ms})
        if missing:
            print(f"\n(stages whose functions the package does not have, counted under 'other': {', '.join(missing)})")
        print("\n## Where the time goes: Torch-Pruning build + get_all_groups (ms, medians)\n")
        print(f"| model | input | {' | '.join(TP_COLUMNS)} | total |")
        print("|---|---|" + "---:|" * (len(TP_COLUMNS) + 1))
        for name, res, _, theirs, _ in breakdown:
            print(f"| {name} | {res}x{res} | " + " | ".join(_ms(theirs[k]) for k in (*TP_COLUMNS, "total")) + " |")
    print(
        f"\nload average {os.getloadavg()[0]:.2f} at the end; {QUIET.discarded} calls repeated because other "
        f"processes used the CPU meanwhile, {QUIET.unquiet} never ran undisturbed"
    )
    if sizes:
        print("\n## Parameters kept at uniform ratio 0.5 (224x224)\n")
        print("| model | ours | TP |")
        print("|---|---:|---:|")
        x = torch.randn(1, 3, 224, 224)
        for name in names:
            model = _model(name)
            kept = skg.prune(model, skg.plan(model, x), ratio=0.5).report.params_ratio
            print(f"| {name} | {kept:.1%} | {_tp_prune(model, x):.1%} |", flush=True)


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


def sweep() -> None:
    """Every torchvision classification CNN: our oracle vs Torch-Pruning (see coverage.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from coverage import main as coverage_main

    sys.argv = [sys.argv[0], "--only", "classification", "--out", "docs/coverage_classification.md"]
    coverage_main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision names")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    ap.add_argument("--no-sizes", action="store_true", help="skip the parameters-kept table")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compare(args.models.split(","), args.repeats, not args.no_stages, not args.no_sizes)
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
