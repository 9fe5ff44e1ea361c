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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import sparsekit_graph as skg

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "convnext_tiny"]
CNN_FAMILIES = (
    "resnet", "resnext", "wide_resnet", "mobilenet", "densenet", "googlenet", "inception", "shufflenet",
    "squeezenet", "efficientnet", "regnet", "convnext", "mnasnet", "vgg", "alexnet",
)  # fmt: skip


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
        ours = _median(lambda: skg.plan(model, x), repeats)
        theirs = _median(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), repeats)
        kept = skg.prune(model, skg.plan(model, x), ratio=0.5).report.params_ratio
        tp_kept = _tp_prune(model, x)
        print(f"{name:16s} {ours:11.3f} {theirs:11.3f} {theirs / ours:8.2f} {kept:10.1%} {tp_kept:8.1%}", flush=True)


def sweep() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import check_oracle

    names = [n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith(CNN_FAMILIES)]
    ours = theirs = 0
    print(f"\n{'model':22s} {'sparsekit-graph oracle':>24s} {'Torch-Pruning prune':>20s}")
    for name in names:
        model, _ = _build(name)
        size = 299 if name == "inception_v3" else 64
        x = torch.randn(2, 3, size, size)
        try:
            check_oracle(copy.deepcopy(model), x, Path(tempfile.mkdtemp()))
            mine = "pass"
            ours += 1
        except Exception as e:  # noqa: BLE001 - report every failure
            mine = f"FAIL {type(e).__name__}"
        try:
            _tp_prune(model.eval(), x[:1])
            other = "ok"
            theirs += 1
        except Exception as e:  # noqa: BLE001
            other = f"crash {type(e).__name__}"
        print(f"{name:22s} {mine:>24s} {other:>20s}", flush=True)
    print(f"\npass the oracle: {ours}/{len(names)}; Torch-Pruning prunes without crashing: {theirs}/{len(names)}")


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
