"""Planning time and pruned size, side by side with Torch-Pruning (DepGraph), in one run.

    python benchmarks/plan_vs_torch_pruning.py            # timing + size table
    python benchmarks/plan_vs_torch_pruning.py --sweep    # + every torchvision classification CNN

Times are medians of ``--repeats`` runs on the same model and input (batch 1, 224x224 unless the
model needs more). Parameters kept are after a uniform 0.5 prune of every prunable group
(Torch-Pruning: ``MetaPruner(pruning_ratio=0.5)``, classifier ignored, as both pin it).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torchvision
from timing import median_seconds
from torch import nn

import sparsekit_graph as skg

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "convnext_tiny"]


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


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


def compare(names: list[str], repeats: int) -> None:
    import torch_pruning as tp

    print(f"{'model':16s} {'ours plan s':>11s} {'TP graph s':>11s} {'TP/ours':>8s} {'ours kept':>10s} {'TP kept':>8s}")
    for name in names:
        model, x = _build(name)
        ours = median_seconds(lambda: skg.plan(model, x), repeats)
        theirs = median_seconds(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), repeats)
        kept = skg.prune(model, skg.plan(model, x), ratio=0.5).report.params_ratio
        tp_kept = _tp_prune(model, x)
        print(f"{name:16s} {ours:11.3f} {theirs:11.3f} {theirs / ours:8.2f} {kept:10.1%} {tp_kept:8.1%}", flush=True)


def sweep() -> None:
    """Every torchvision classification CNN: our oracle vs Torch-Pruning (see coverage.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from coverage import main as coverage_main

    sys.argv = [sys.argv[0], "--only", "classification", "--out", "docs/coverage_classification.md"]
    coverage_main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compare(MODELS, args.repeats)
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
