"""Planning time and peak memory as the graph grows: synthetic nets of 100/400/1600 layers and
DenseNet-201. Each case runs in its own process so peak RSS is its own.

    python benchmarks/scaling.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # helpers.py (deep_cnn) lives with the tests


def _one(case: str) -> dict[str, float]:
    from helpers import deep_cnn

    import sparsekit_graph as skg
    from sparsekit_graph.plan.planner import build_axis_graph

    torch.set_num_threads(2)
    if case == "densenet201":
        import torchvision

        model, x = torchvision.models.densenet201().eval(), torch.randn(1, 3, 224, 224)
    else:
        model, x = deep_cnn(int(case))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = skg.plan(model, x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    graph = build_axis_graph(model, x)
    return {
        "seconds": seconds,
        "peak_rss_mb": peak / 1024,
        "growth_mb": (peak - base) / 1024,
        "axis_nodes": graph.g.number_of_nodes(),
        "axis_edges": graph.g.number_of_edges(),
        "groups": len(plan.groups),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(_one(sys.argv[2])))
        return
    cols = ("case", "plan s", "s/1k nodes", "peak RSS MB", "axis nodes", "edges", "groups")
    print(" ".join(f"{c:>12s}" for c in cols))
    for case in ("100", "400", "1600", "densenet201"):
        out = subprocess.run([sys.executable, __file__, "--one", case], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per = r["seconds"] / r["axis_nodes"] * 1000
        label = f"{case} layers" if case.isdigit() else case
        cells = (f"{r['seconds']:.3f}", f"{per:.4f}", f"{r['peak_rss_mb']:.0f}", r["axis_nodes"], r["axis_edges"], r["groups"])
        print(f"{label:>12s} " + " ".join(f"{c:>12}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
