"""ProximalStep and the engine prox on an accelerator against the CPU: agreement, then time.

From one CPU state (ResNet-50 by default, two real training steps of SGD(momentum) or AdamW on random
images), the model and optimizer are copied to the device; ``ProximalStep.step()`` (SGD:
Euclidean, AdamW: conditioned; batched, and group by group as under torch.distributed), and
``soft_threshold`` coupling by coupling and ``soft_threshold_all``
over ``bind(plan)`` (Euclidean, and conditioned with Adam's denominator) run on both from the same state. Printed per case: the
largest per-parameter relative difference ``||x_dev - x_cpu|| / ||x_cpu||`` (bar: 1e-5) and the
median time of the call on each side (weights and optimizer state restored before every call),
next to one training step (forward + backward + ``optimizer.step()``) at batch 16, 224x224 on the
device.

Each device time is also a ratio to one ``optimizer.step()`` alone (SGD, AdamW(foreach)); then the
steady-state rows of ``benchmarks/device_steady.py`` (the sync-free and CUDA-graph paths).

    python benchmarks/device_check.py [--device cuda] [--threads 2] [--repeats 5] [--model resnet50] [--no-steady | --steady-only]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import device_steady  # benchmarks/: the steady-state rows, next to optimizer steps alone
import torch
import torchvision
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.engine import soft_threshold_all

BAR = 1e-5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], setup: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        setup()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _worst(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for p, q in zip(a.parameters(), b.parameters()):
        ref = p.detach().double()
        diff = float((q.detach().cpu().double() - ref).norm() / ref.norm().clamp_min(1e-30))
        worst = max(worst, diff)
    return worst


class Side:
    """A model and optimizer on one device, restorable to the state it was given."""

    def __init__(self, model: nn.Module, make: Callable[[nn.Module], torch.optim.Optimizer], state: dict, device: torch.device):
        self.model = copy.deepcopy(model).to(device)
        self.opt = make(self.model)
        self.opt.load_state_dict(state)
        self.device = device
        self.saved = copy.deepcopy(self.model.state_dict())
        self.saved_opt = copy.deepcopy(self.opt.state_dict())

    def restore(self) -> None:
        self.model.load_state_dict(self.saved)
        self.opt.load_state_dict(copy.deepcopy(self.saved_opt))

    def denominators(self) -> dict[Tensor, Tensor]:
        pg = self.opt.param_groups[0]
        out = {}
        for p in self.model.parameters():
            st = self.opt.state[p]
            out[p] = (st["exp_avg_sq"].sqrt() / (1 - pg["betas"][1] ** float(st["step"])) ** 0.5).add_(pg["eps"])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="resnet50", help="a torchvision model name")
    ap.add_argument("--no-steady", action="store_true", help="skip the steady-state rows (device_steady.py)")
    ap.add_argument("--steady-only", action="store_true", help="only the optimizer steps and the steady-state rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev, cpu = torch.device(args.device), torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    print(f"torch {torch.__version__}, {args.model}, device {name}, CPU side {args.threads} threads, median of {args.repeats}")
    model = getattr(torchvision.models, args.model)()
    plan = skg.plan(model, torch.randn(1, 3, 224, 224))
    gen = torch.Generator().manual_seed(1)
    x_small, y_small = torch.randn(4, 3, 96, 96, generator=gen), torch.randint(0, 1000, (4,), generator=gen)
    x, y = torch.randn(16, 3, 224, 224, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    makers = {
        "SGD (euclidean)": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 0.2),
        "AdamW (conditioned)": (lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), 2e-2),
    }
    steps = device_steady.optimizer_steps(model, dev, x_small, y_small, args.repeats)
    sgd, adam = steps["SGD"], steps["AdamW(foreach)"]
    print(f"optimizer.step() alone on the device: SGD {1e3 * sgd:.2f} ms, AdamW(foreach) {1e3 * adam:.2f} ms")
    if args.steady_only:
        device_steady.run(model, plan, dev, x_small, y_small, args.repeats, steps)
        return
    print(f"{'case':44s} {'max rel diff':>12s} {'cpu ms':>9s} {'dev ms':>9s} {'dev train ms':>12s} {'x SGD':>7s} {'x Adam':>7s}")
    verdicts = []
    for label, (make, lam) in makers.items():
        base = copy.deepcopy(model).train()
        opt = make(base)
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(base(x_small), y_small).backward()
            opt.step()
        sides = {d: Side(base, make, opt.state_dict(), d) for d in (cpu, dev)}
        xd, yd = x.to(dev), y.to(dev)
        dside = sides[dev]

        def train_step(s: Side = dside) -> None:
            s.opt.zero_grad()
            nn.functional.cross_entropy(s.model(xd), yd).backward()
            s.opt.step()

        t_train = _time(train_step, dside.restore, dev, args.repeats)
        rows: dict[str, dict[torch.device, tuple[float, nn.Module]]] = {}
        for d, s in sides.items():
            for path, batched in (("", True), (" group", False)):  # batched (one process) and group by group (distributed)
                prox = skg.ProximalStep(plan, s.model, s.opt, lam=lam, batched=batched)
                t = _time(lambda p=prox: p.step(force=True), s.restore, d, args.repeats)
                s.restore()
                prox.step(force=True)
                rows.setdefault(f"ProximalStep{path}, {label}", {})[d] = (t, copy.deepcopy(s.model).cpu())
                prox.remove()
                s.restore()
            bound = skg.bind(plan, s.model)
            groups = [bound[g.name] for g in plan.prunable]
            if d == cpu:  # thresholds from the CPU state, the same on both sides: ~2% of blocks die
                norms = [c.norms().flatten() for c in groups]
                cpu_taus = [n.sort().values[max(1, n.numel() // 50)] * torch.ones(c.grid_shape) for n, c in zip(norms, groups)]
            taus = [t.to(d) for t in cpu_taus]
            if isinstance(s.opt, torch.optim.AdamW):
                full = s.denominators()
                hs = [{sp: sp.view.window(full[sp.view.param]) for sp in c.specs} for c in groups]
                call = lambda gs=groups, ts=taus, hs=hs: [c.soft_threshold(t, h) for c, t, h in zip(gs, ts, hs)]  # noqa: E731
                what = "soft_threshold(h), bind(plan)"
            else:
                hs = None
                call = lambda gs=groups, ts=taus: [c.soft_threshold(t) for c, t in zip(gs, ts)]  # noqa: E731
                what = "soft_threshold, bind(plan)"
            batched = lambda gs=groups, ts=taus, hs=hs: soft_threshold_all(gs, ts, hs)  # noqa: E731
            for case, fn in ((what, call), (f"soft_threshold_all{what[len('soft_threshold') :]}", batched)):
                t = _time(fn, s.restore, d, args.repeats)
                s.restore()
                fn()
                rows.setdefault(f"{case}, {label.split()[0]} state", {})[d] = (t, copy.deepcopy(s.model).cpu())
                s.restore()
        for case, by in rows.items():
            diff = _worst(by[cpu][1], by[dev][1])
            verdicts.append(diff <= BAR)
            t_dev = by[dev][0]
            times = f"{1e3 * by[cpu][0]:9.1f} {1e3 * t_dev:9.1f} {1e3 * t_train:12.1f}"
            print(f"{case:44s} {diff:12.2e} {times} {t_dev / sgd:7.2f} {t_dev / adam:7.2f}", flush=True)
    print(f"agreement <= {BAR:g}: {'met' if all(verdicts) else 'NOT met'}")
    if not args.no_steady:
        device_steady.run(model, plan, dev, x_small, y_small, args.repeats, steps)


if __name__ == "__main__":
    main()
