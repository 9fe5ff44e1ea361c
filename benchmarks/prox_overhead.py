"""Cost of ``ProximalStep.step()`` as a fraction of one training step, ResNet-50, in one process.

Setting (issue 9): torchvision ResNet-50, 224x224 inputs, batch 16, 2 threads. A training step is
``zero_grad`` + forward + cross-entropy + backward + ``optimizer.step()``; the prox is the step that
follows it, over every prunable group of ``plan(resnet50)``:

* Euclidean: ``SGD(lr=0.1, momentum=0.9)``, threshold ``lam * lr * sqrt(elements per channel)``;
* Adam-conditioned: ``AdamW(lr=1e-3)``, the prox in Adam's metric ``sqrt(v_hat) + eps``.

The optimizer states are real (a few training steps on random images first). Every timed call
starts from the same state: weights, BatchNorm buffers and optimizer state are restored, untimed,
before each repeat (a prox repeated on its own output would meet ever more dead channels and look
cheaper than it is). Training steps and prox calls alternate, repeat by repeat, so background load
hits both alike; the script prints medians and the ratio of medians.

Two regimes of ``lam`` per optimizer: ``shrink`` (every channel shrinks a little, none dies:
Newton has every channel to solve) and ``prune`` (``lam`` chosen so that the call zeroes about 2% of
the channels, as during sparsification).

    python benchmarks/prox_overhead.py [--repeats 5] [--threads 2] [--batch 16] [--size 224]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import sparsekit_graph as skg

BAR = 0.10  # Adam-conditioned prox <= 10% of a training step


def _timed(fn: Callable[[], object], setup: Callable[[], object]) -> float:
    setup()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _zeroed(prox: skg.ProximalStep, setup: Callable[[], object]) -> float:
    """Fraction of channels one prox call zeroes from the restored state (untimed)."""
    setup()
    prox.step(force=True)
    return prox.stats().channels_zero / max(prox.stats().channels, 1)


def _calibrate(prox: skg.ProximalStep, setup: Callable[[], object], target: float) -> float:
    """A ``lam`` (log-bisected) whose single call zeroes about ``target`` of the channels."""
    lo, hi = 1e-8, 1e4
    for _ in range(12):
        prox.lam = (lo * hi) ** 0.5
        if _zeroed(prox, setup) < target:
            lo = prox.lam
        else:
            hi = prox.lam
    return hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup-steps", type=int, default=2, help="training steps that build the optimizer state")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = torchvision.models.resnet50()
    plan = skg.plan(model, torch.randn(1, 3, args.size, args.size))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    model.train()

    print(
        f"ResNet-50, {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats (median), torch {torch.__version__}"
    )
    header = f"{'prox':26s} {'regime':7s} {'lam':>9s} {'zeroed':>7s} {'train step':>11s} {'prox':>9s} {'prox/train':>11s}"
    print(header, flush=True)
    rows = []
    for label, make in (
        ("euclidean (SGD)", lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)),
        ("adam-conditioned (AdamW)", lambda: torch.optim.AdamW(model.parameters(), lr=1e-3)),
    ):
        opt = make()

        def train_step(opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(args.warmup_steps):
            train_step()
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())

        def restore(opt: torch.optim.Optimizer = opt, sm: dict = saved_model, so: dict = saved_opt) -> None:
            model.load_state_dict(sm)
            opt.load_state_dict(copy.deepcopy(so))

        prox = skg.ProximalStep(plan, model, opt, lam=1e-4)
        lams = {"shrink": 1e-4 if isinstance(opt, torch.optim.SGD) else 1e-2, "prune": _calibrate(prox, restore, 0.02)}
        for regime, lam in lams.items():
            prox.lam = lam
            zeroed = _zeroed(prox, restore)
            train_t, prox_t = [], []
            train_step()  # warm-up of the timed paths
            for _ in range(args.repeats):
                train_t.append(_timed(train_step, restore))
                prox_t.append(_timed(lambda prox=prox: prox.step(force=True), restore))
            t_train, t_prox = statistics.median(train_t), statistics.median(prox_t)
            rows.append((label, regime, lam, zeroed, t_train, t_prox, t_prox / t_train))
            ratio = t_prox / t_train
            print(f"{label:26s} {regime:7s} {lam:9.2e} {zeroed:7.1%} {t_train:10.3f}s {t_prox:8.3f}s {ratio:10.1%}", flush=True)
        prox.remove()
        restore()

    worst = max(r[-1] for r in rows if r[0].startswith("adam"))
    verdict = "met" if worst <= BAR else "NOT met"
    print(f"bar: adam-conditioned prox <= {BAR:.0%} of a training step: worst {worst:.1%} -> {verdict}")


if __name__ == "__main__":
    main()
