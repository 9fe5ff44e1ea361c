"""The steady state of the Euclidean prox on a device, next to one optimizer step (issue 10).

Printed by ``benchmarks/device_check.py`` after its table, from one SGD(momentum) state of the model
on the device: an SGD step and an AdamW(foreach) step alone (``optimizer.step()``), then
``soft_threshold_all`` over ``bind(plan)`` and ``ProximalStep.step()`` with the syncing checks
(``batch.SYNC_FREE = False``), with the sync-free ones (the default on CUDA) and, for the step,
captured as a CUDA graph (``cuda_graph=True``), each as a ratio to both optimizer steps. Weights and
optimizer state are restored in place before every call (the same tensors: a CUDA graph replays
on them without being captured again). On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` is
set around one steady-state call of each sync-free path: "ok" means no synchronising CUDA call.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.engine import batch
from sparsekit_graph.engine.batch import euclidean_all


class InPlace:
    """A model and optimizer restored by copying into their own tensors (no tensor is replaced)."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt
        self.params = list(model.parameters())
        self.saved = [p.detach().clone() for p in self.params]
        self.state = {
            i: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)} for i, p in enumerate(self.params)
        }

    @torch.no_grad()
    def restore(self) -> None:
        for i, (p, v) in enumerate(zip(self.params, self.saved)):
            p.copy_(v)
            for k, s in self.state[i].items():
                self.opt.state[p][k].copy_(s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], setup: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        setup()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _trained(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _no_sync(fn: Callable[[], object], device: torch.device) -> str:
    """ "ok" when ``fn`` makes no synchronising CUDA call, else the error's first line."""
    if device.type != "cuda":
        return "n/a off CUDA"
    with warnings.catch_warnings():  # "a prototype feature": it is, and it is what we have
        warnings.simplefilter("ignore")
        torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "ok"
    except RuntimeError as e:
        return f"SYNC: {str(e).splitlines()[0][:100]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _rel(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((p.double() - q.double()).norm() / q.double().norm().clamp_min(1e-30)) for p, q in zip(a, b))


def optimizer_steps(model: nn.Module, device: torch.device, x: Tensor, y: Tensor, repeats: int) -> dict[str, float]:
    """Seconds of one ``optimizer.step()`` alone on ``device``, SGD(momentum) and AdamW(foreach), after two
    real steps on ``x``, ``y`` (weights and state restored in place before each call)."""
    xd, yd = x.to(device), y.to(device)
    steps: dict[str, float] = {}
    for name, make in (
        ("SGD", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, foreach=True)),
        ("AdamW(foreach)", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True)),
    ):
        m = copy.deepcopy(model).to(device).train()
        opt = make(m)
        _trained(m, opt, xd, yd)
        side = InPlace(m, opt)
        side.restore()
        opt.step()  # warm
        steps[name] = _time(opt.step, side.restore, device, repeats)
        del m, opt, side
    return steps


def run(
    model: nn.Module,
    plan: skg.Plan,
    device: torch.device,
    x: Tensor,
    y: Tensor,
    repeats: int,
    steps: dict[str, float],
    lam: float = 0.2,
) -> None:
    """Print the steady-state rows for ``model`` on ``device`` (``x``, ``y``: a small batch on the CPU;
    ``steps``: ``optimizer_steps``)."""
    xd, yd = x.to(device), y.to(device)
    m = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _trained(m, opt, xd, yd)
    side = InPlace(m, opt)
    bound = skg.bind(plan, m)
    groups = [bound[g.name] for g in plan.prunable]
    norms = [c.norms().flatten() for c in groups]
    taus = [n.sort().values[max(1, n.numel() // 50)] * torch.ones_like(n) for n in norms]  # ~2% of blocks die
    print(f"\n== steady state on {device}, SGD state, bind(plan): {len(groups)} couplings, median of {repeats}")
    print(f"{'row':58s} {'dev ms':>9s} {'x SGD':>7s} {'x Adam':>7s}  {'no sync':10s} {'max rel diff':>12s}")
    sgd, adam = steps["SGD"], steps["AdamW(foreach)"]
    for name, t in steps.items():
        print(f"{name + ' step alone (optimizer.step())':58s} {1e3 * t:9.2f} {t / sgd:7.2f} {t / adam:7.2f}")
    results: dict[str, list[Tensor]] = {}

    def row(name: str, fn: Callable[[], object], free: bool | None, check: bool, ref: str | None = None) -> None:
        batch.SYNC_FREE = free
        try:
            side.restore()
            fn()  # the first call builds the layout (and, graphed, runs eagerly)
            side.restore()
            fn()  # graphed: captures, then replays
            t = _time(fn, side.restore, device, repeats)
            side.restore()
            verdict = _no_sync(fn, device) if check else ""
            side.restore()
            fn()
            results[name] = [p.detach().cpu() for p in m.parameters()]
        finally:
            batch.SYNC_FREE = None
        diff = f"{_rel(results[name], results[ref]):12.2e}" if ref else ""
        print(f"{name:58s} {1e3 * t:9.2f} {t / sgd:7.2f} {t / adam:7.2f}  {verdict:10s} {diff}", flush=True)

    flat = [t.reshape(-1) for t in taus]
    row("soft_threshold_all, syncing checks (SYNC_FREE=False)", lambda: skg.engine.soft_threshold_all(groups, taus), False, False)
    row(
        "soft_threshold_all, sync-free (default on CUDA)",
        lambda: skg.engine.soft_threshold_all(groups, taus),
        None,
        True,
        "soft_threshold_all, syncing checks (SYNC_FREE=False)",
    )
    row(
        "euclidean_all (no threshold check)",
        lambda: euclidean_all(groups, flat),
        None,
        True,
        "soft_threshold_all, syncing checks (SYNC_FREE=False)",
    )
    prox = skg.ProximalStep(plan, m, opt, lam=lam)
    row("ProximalStep.step, syncing (SYNC_FREE=False)", lambda: prox.step(force=True), False, False)
    row(
        "ProximalStep.step, sync-free (default on CUDA)",
        lambda: prox.step(force=True),
        None,
        True,
        "ProximalStep.step, syncing (SYNC_FREE=False)",
    )
    prox.remove()
    try:
        graphed = skg.ProximalStep(plan, m, opt, lam=lam, cuda_graph=True)
    except Exception as e:  # noqa: BLE001 - off CUDA: the row says why
        print(f"{'ProximalStep.step, cuda_graph=True':58s} unavailable: {str(e).splitlines()[0][:90]}")
        return
    try:
        row(
            "ProximalStep.step, cuda_graph=True",
            lambda: graphed.step(force=True),
            None,
            True,
            "ProximalStep.step, syncing (SYNC_FREE=False)",
        )
        g = graphed._graphed
        print(f"   graph: {g.captures} capture(s), {g.replays} replays, {g.eager_calls} eager call(s)")
    except Exception as e:  # noqa: BLE001 - a failed capture must not end the run
        print(f"{'ProximalStep.step, cuda_graph=True':58s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
    finally:
        graphed.remove()
