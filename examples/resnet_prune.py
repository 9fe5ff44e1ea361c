"""Prune ResNet-50 at ratio 0.5: parameters, MACs, CPU latency before/after, and exactness.

python examples/resnet_prune.py [--threads 2] [--quick]  (--quick: ResNet-18 at 64x64, few repeats; what CI runs)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

import sparsekit_graph as skg


def latency(model: torch.nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="ResNet-18 at 64x64, batch 1, 2 repeats (CI).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (torchvision.models.resnet18() if args.quick else torchvision.models.resnet50()).eval()
    size = 64 if args.quick else 224
    x = torch.randn(1, 3, size, size)

    t0 = time.perf_counter()
    plan = skg.plan(model, x)
    print(f"planned in {time.perf_counter() - t0:.3f}s: {len(plan.groups)} groups, {len(plan.prunable)} prunable")
    result = skg.prune(model, plan, ratio=0.5)
    r = result.report
    print(f"parameters {r.params_before:,} -> {r.params_after:,} ({r.params_ratio:.1%})")
    print(f"MACs       {r.macs_before:,} -> {r.macs_after:,} ({r.macs_ratio:.1%})")
    small = result.model.eval()
    for batch in (1,) if args.quick else (1, 16):
        xb = torch.randn(batch, 3, size, size)
        repeats = 2 if args.quick else 5 if batch > 1 else 10
        before, after = latency(model, xb, repeats), latency(small, xb, repeats)
        print(f"CPU latency batch {batch:2d}: {before * 1e3:7.1f} ms -> {after * 1e3:7.1f} ms ({before / after:.2f}x faster)")

    # Exactness: zeroing the members of random channels == removing them.
    masks = {g.name: torch.rand(g.size) < 0.5 for g in plan.prunable if g.zero_invariant}
    dense = copy.deepcopy(model)
    for name, coupling in skg.bind(plan, dense).items():
        if name in masks:
            coupling.apply_mask(masks[name])
    pruned = skg.prune(model, plan, masks=masks).model.eval()
    with torch.no_grad():
        a, b = dense(x), pruned(x)
    print(f"exactness: max |masked dense - pruned| = {(a - b).abs().max():.2e} (output scale {a.abs().max():.2e})")


if __name__ == "__main__":
    main()
