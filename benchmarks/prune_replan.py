"""What ``prune``'s second plan costs: ``prune`` as shipped (it plans the model again and
compares, ``planner.check_planned``) against the same call with that check skipped.

    python benchmarks/prune_replan.py --res 32 --repeats 7

CPU process time at one thread (fair on a shared machine), the two variants interleaved in one
process, a fresh model and plan per round (untimed), masks from ``ratio=0.5`` by L2; reports
min and 25th percentile and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import time

import torch
import torchvision

import sparsekit_graph as skg

api = importlib.import_module("sparsekit_graph.prune.api")


def _timed(model: torch.nn.Module, plan: skg.Plan, check: object) -> float:
    api.check_planned = check
    gc.collect()
    start = time.process_time()
    skg.prune(model, plan, ratio=0.5)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shipped = api.check_planned
    for name in args.models.split(","):
        times: dict[str, list[float]] = {"shipped": [], "no re-plan": []}
        for _ in range(args.repeats):
            model = getattr(torchvision.models, name)().eval()
            x = torch.randn(1, 3, args.res, args.res)
            plan = skg.plan(model, x)
            times["shipped"].append(_timed(model, plan, shipped))
            times["no re-plan"].append(_timed(model, plan, lambda *a: None))
        api.check_planned = shipped
        q = {k: (min(v) * 1e3, statistics.quantiles(v, n=4)[0] * 1e3) for k, v in times.items()}
        (a, a25), (b, b25) = q["shipped"], q["no re-plan"]
        print(
            f"{name} {args.res}x{args.res} (min / p25 of {args.repeats}): prune {a:.1f} / {a25:.1f} ms, "
            f"without the second plan {b:.1f} / {b25:.1f} ms || ratio {a / b:.2f} / {a25 / b25:.2f}"
        )


if __name__ == "__main__":
    main()
