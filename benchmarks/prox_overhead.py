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
hits both alike; the script prints medians and the ratio of medians, of wall-clock time and of
process (CPU) time, which a shared machine disturbs less. ``--kernels eager,auto`` times the
conditioned prox with each kernel set of ``sparsekit_graph.engine.fused`` in turn, interleaved in
one process (``auto``: compiled kernels for large pieces; the first call compiles, untimed).

Two regimes of ``lam`` per optimizer: ``shrink`` (every channel shrinks a little, none dies:
Newton has every channel to solve) and ``prune`` (``lam`` chosen so that the call zeroes about 2% of
the channels, as during sparsification).

``--paths batched,group`` times ``ProximalStep``'s two paths side by side, interleaved in one
process on the same restored state: ``batched`` (every group in few ``soft_threshold_all`` calls,
the default in one process) and ``group`` (group by group, the distributed path, ``batched=False``),
and prints the ratio of their medians (process time, which load disturbs least, and wall clock).

    python benchmarks/prox_overhead.py [--repeats 5] [--threads 2] [--batch 16] [--size 224]
                                       [--kernels auto] [--only adam] [--paths batched,group]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import sparsekit_graph as skg
from sparsekit_graph.engine import fused

BAR = 0.10  # Adam-conditioned prox <= 10% of a training step
PATHS = {"batched": True, "group": False}  # ProximalStep(batched=...)


def _timed(fn: Callable[[], object], setup: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process seconds of one call, after an untimed ``setup``."""
    setup()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


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
    ap.add_argument("--kernels", default="auto", help="comma-separated conditioned-prox kernel modes, timed interleaved")
    ap.add_argument("--only", choices=("sgd", "adam"), default=None, help="one optimizer only")
    ap.add_argument("--paths", default="batched", help="comma-separated ProximalStep paths (batched, group), timed interleaved")
    args = ap.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths: choose from {', '.join(PATHS)}")
    modes = [m.strip() for m in args.kernels.split(",") if m.strip()]
    for m in modes:
        fused.set_kernel_mode(m)
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
    header = (
        f"{'prox':34s} {'regime':7s} {'lam':>9s} {'zeroed':>7s} {'train step':>11s} {'prox':>9s} {'prox/train':>11s}"
        f" {'cpu: train':>11s} {'prox':>8s} {'ratio':>7s}"
    )
    print(header, flush=True)
    rows = []
    for label, make in (
        ("euclidean (SGD)", lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)),
        ("adam-conditioned (AdamW)", lambda: torch.optim.AdamW(model.parameters(), lr=1e-3)),
    ):
        if args.only is not None and not label.startswith("euclidean" if args.only == "sgd" else "adam"):
            continue
        opt = make()
        kinds = modes if label.startswith("adam") else modes[:1]

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

        proxes = {p: skg.ProximalStep(plan, model, opt, lam=1e-4, batched=PATHS[p]) for p in paths}
        prox = proxes[paths[0]]
        lams = {"shrink": 1e-4 if isinstance(opt, torch.optim.SGD) else 1e-2, "prune": _calibrate(prox, restore, 0.02)}
        cases = [(m, p) for m in kinds for p in paths]
        for regime, lam in lams.items():
            for p in proxes.values():
                p.lam = lam
            train_t: list[tuple[float, float]] = []
            prox_t: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in cases}
            zeroed = {}
            for m, p in cases:  # untimed: compiles what this mode compiles
                fused.set_kernel_mode(m)
                zeroed[m, p] = _zeroed(proxes[p], restore)
            train_step()  # warm-up of the timed paths
            for _ in range(args.repeats):
                train_t.append(_timed(train_step, restore))
                for m, p in cases:
                    fused.set_kernel_mode(m)
                    prox_t[m, p].append(_timed(lambda prox=proxes[p]: prox.step(force=True), restore))
            w_train, c_train = (statistics.median(x) for x in zip(*train_t))
            medians = {}
            for m, p in cases:
                w_prox, c_prox = medians[m, p] = tuple(statistics.median(x) for x in zip(*prox_t[m, p]))
                tags = ([m] if label.startswith("adam") else []) + ([p] if len(paths) > 1 else [])
                name = f"{label} [{', '.join(tags)}]" if tags else label
                rows.append((name, regime, lam, zeroed[m, p], w_train, w_prox, w_prox / w_train, c_prox / c_train))
                print(
                    f"{name:34s} {regime:7s} {lam:9.2e} {zeroed[m, p]:7.1%} {w_train:10.3f}s {w_prox:8.3f}s "
                    f"{w_prox / w_train:10.1%} {c_train:10.3f}s {c_prox:7.3f}s {c_prox / c_train:6.1%}",
                    flush=True,
                )
            if len(paths) > 1:
                for m in kinds:
                    (w_new, c_new), (w_old, c_old) = medians[m, paths[0]], medians[m, paths[1]]
                    print(
                        f"  {paths[0]}/{paths[1]} [{m}]: process time {c_new / c_old:.2f}x, wall {w_new / w_old:.2f}x "
                        f"(load average {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
        for p in proxes.values():
            p.remove()
        restore()

    for m in modes:
        adam = [r for r in rows if r[0].startswith("adam") and (f"[{m}]" in r[0] or f"[{m}, " in r[0])]
        if adam:
            worst, worst_cpu = max(r[6] for r in adam), max(r[7] for r in adam)
            verdict = "met" if worst <= BAR else "NOT met"
            print(
                f"bar [{m}]: adam-conditioned prox <= {BAR:.0%} of a training step (wall): worst {worst:.1%} -> {verdict}"
                f" (process time: {worst_cpu:.1%}; load average {os.getloadavg()[0]:.1f})"
            )


if __name__ == "__main__":
    main()
