"""Engine speed on ResNet-50, as ratios to one Adam step and to the reference, in one process.

Two layouts, both measured in every run:

* ``bottlenecks``: couplings built directly on the 4-D conv weights of every bottleneck
  (conv1 rows ~ conv2 columns, conv2 rows ~ conv3 columns);
* ``bind(plan)``: ``sparsekit_graph.bind(sparsekit_graph.plan(model, x), model)`` over every
  prunable group (BatchNorm affine parameters, downsample convs and fc columns included).

The regime training meets, with group-lasso thresholds ``tau = lr * lambda`` small next to a
typical block's norm: a few blocks are near zero and die, the others shrink a little.

* Conditioners ``h = sqrt(v_hat) + eps`` from a real Adam state: a few Adam steps on a real
  loss (cross-entropy of a random batch through the model), bias-corrected as Adam does.
* Near-death blocks: in each coupling a random 3% of the blocks are scaled by a log-uniform
  factor in [1e-3, 1e-1] (blocks on their way out, as sparse training leaves them).
  ``--no-dying`` skips this: at random init all block norms are alike, so a threshold that
  zeroes 2% shrinks every other block by ~95%, and couplings that share a weight then zero far
  more than 2% (the call reports it).
* Thresholds per coupling between its k-th and (k+1)-th smallest block norm, k = 2% of its blocks:
  plain norms for the Euclidean prox, norms of ``h * w`` (the Adam metric) for the conditioned one.

Every timed call starts from the same state: weights and conditioners (and for the Adam step
its state) are restored, untimed, before each call. Printed per call: the fraction of blocks
it zeroed, and (untimed, one coupling at a time from the same state) each result's largest
per-block relative error against a float64 solution (bisection to machine precision).

    python benchmarks/engine.py [--repeats 5] [--threads 2] [--no-dying]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from timing import sample_seconds
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.engine import BlockCoupling, BlockSpec, View

ZEROED = 0.02  # fraction of blocks one prox call should zero
DYING = 0.03  # fraction of blocks scaled towards zero before measuring
ADAM_EPS = 1e-8


@dataclass
class Layout:
    """One set of couplings, ours and (where it can express them) the reference's."""

    name: str
    ours: list[BlockCoupling]
    ref: list | None
    no_ref: str = ""
    params: list[Tensor] = field(default_factory=list)  # every parameter a coupling touches


# -- model and a real Adam state ---------------------------------------------------------------
def _adam_state(model: nn.Module, steps: int, batch: int, size: int) -> torch.optim.Adam:
    """Adam(foreach) after ``steps`` real steps (cross-entropy of random images and labels)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=gen)
        y = torch.randint(0, 1000, (batch,), generator=gen)
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def _conditioners(opt: torch.optim.Adam) -> dict[Tensor, Tensor]:
    """Per parameter, Adam's denominator ``sqrt(v / (1 - beta2^t)) + eps`` (full-parameter shape)."""
    beta2 = opt.param_groups[0]["betas"][1]
    out = {}
    for p in opt.param_groups[0]["params"]:
        st = opt.state[p]
        correction = 1 - beta2 ** float(st["step"])
        out[p] = (st["exp_avg_sq"] / correction).sqrt_().add_(ADAM_EPS)
    return out


# -- layouts -----------------------------------------------------------------------------------
def _bottleneck_couplings(model: nn.Module) -> list[BlockCoupling]:
    """conv1 rows ~ conv2 columns and conv2 rows ~ conv3 columns, on the 4-D weights."""
    out = []
    for block in model.modules():
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            for prod, cons in ((block.conv1.weight, block.conv2.weight), (block.conv2.weight, block.conv3.weight)):
                o, k = prod.shape[0], prod[0].numel()
                o2, k2 = cons.shape[0], cons[0, 0].numel()
                rows = BlockSpec(View(prod, (o, k, 1), (k, 1, 1)), (1, -1, 1))  # grid (O, 1, 1)
                cols = BlockSpec(View(cons, (o2, o, k2), (o * k2, k2, 1)), (-1, 1, -1))  # grid (1, O, 1)
                out.append(BlockCoupling([rows, cols], [(0, 1, 2), (1, 0, 2)]))
    return out


def _reference(ours: list[BlockCoupling]) -> tuple[list | None, str]:
    """The same couplings built with the reference ``sparsekit``, or (None, why not)."""
    try:
        from sparsekit.block import BlockCoupling as RefCoupling
        from sparsekit.block import BlockSpec as RefSpec
        from sparsekit.view import View as RefView
    except ImportError as e:
        return None, f"reference not installed ({e})"
    out = []
    for c in ours:
        specs = []
        for s in c.specs:
            if s.view.offset:  # the reference's View has no storage offset
                return None, f"{c.name}: spec {s.name} is a slice at offset {s.view.offset}"
            specs.append(RefSpec(RefView(s.view.param, s.view.shape, s.view.stride), s.shape, name=s.name))
        try:
            out.append(RefCoupling(specs, [tuple(o) for o in c.orders], name=c.name))
        except Exception as e:  # noqa: BLE001 - any refusal means the reference cannot express it
            return None, f"{c.name}: {type(e).__name__}: {e}"
    return out, ""


def _layout(name: str, ours: list[BlockCoupling]) -> Layout:
    ref, why = _reference(ours)
    seen: dict[int, Tensor] = {}
    for c in ours:
        for s in c.specs:
            seen.setdefault(id(s.view.param), s.view.param)
    return Layout(name, ours, ref, why, list(seen.values()))


def _make_dying(couplings: list[BlockCoupling], gen: torch.Generator) -> None:
    """Scale a random ``DYING`` share of each coupling's blocks by 10^U(-3, -1), in place."""
    for c in couplings:
        nb = c.numblk()
        k = max(round(ZEROED * nb) + 1, round(DYING * nb))
        scale = torch.ones(nb)
        scale[torch.randperm(nb, generator=gen)[:k]] = 10 ** (-3 + 2 * torch.rand(k, generator=gen))
        c.apply_multiplier(scale.reshape(c.grid_shape))


# -- one layout --------------------------------------------------------------------------------
def _windows(c: BlockCoupling, full: dict[Tensor, Tensor]) -> dict[BlockSpec, Tensor]:
    return {s: s.view.window(full[s.view.param]) for s in c.specs}


def _bisect(w: Tensor, h: Tensor, tau: Tensor, iters: int = 64) -> Tensor:
    """Float64 conditioned prox of (B, n) rows by plain bisection on ``t = 1/mu``."""
    y = h * w
    norm = y.norm(dim=1)
    survive = norm > tau
    gap = (norm - tau).clamp_min(1e-300)
    lo = gap / (tau * h.amax(1))  # psi(lo) >= tau^2 >= psi(hi)
    hi = gap / (tau * h.amin(1))
    for _ in range(iters):
        t = 0.5 * (lo + hi)
        above = (y / (1 + h * t[:, None])).square().sum(1) > tau * tau
        lo, hi = torch.where(above, t, lo), torch.where(above, hi, t)
    ht = h * (0.5 * (lo + hi))[:, None]
    return torch.where(survive[:, None], w * ht / (1 + ht), 0.0)


def _rel_error(x: Tensor, truth: Tensor) -> float:
    """Largest per-block ``||x - x*|| / ||x*||``; a block zeroed by one side only counts 1."""
    tn = truth.norm(dim=1)
    err = (x - truth).norm(dim=1)
    rel = torch.where(tn > 0, err / tn.clamp_min(1e-300), (err > 0).double())
    return float(rel.max())


class Bench:
    """Times every contender on one layout, each call from the same restored state."""

    def __init__(self, lay: Layout, cond: dict[Tensor, Tensor], repeats: int) -> None:
        self.lay, self.repeats, self.cond = lay, repeats, cond
        self.snapshot = {p: p.detach().clone() for p in lay.params}
        self.cond_snapshot = {p: cond[p].clone() for p in lay.params}
        self.h = [_windows(c, cond) for c in lay.ours]
        self.href = None
        if lay.ref is not None:  # the reference's conditioners, keyed by its own specs
            self.href = [{rs: h[s] for rs, s in zip(r.specs, c.specs)} for r, c, h in zip(lay.ref, lay.ours, self.h)]
        self.norms_e = [c.norms().flatten() for c in lay.ours]
        self.norms_c = [c.norms({s: h[s] * s.data for s in c.specs}).flatten() for c, h in zip(lay.ours, self.h)]
        self.tau_e = [self._threshold(n, c) for n, c in zip(self.norms_e, lay.ours)]
        self.tau_c = [self._threshold(n, c) for n, c in zip(self.norms_c, lay.ours)]
        self.total = sum(c.numblk() for c in lay.ours)

    @staticmethod
    def _threshold(norms: Tensor, c: BlockCoupling) -> Tensor:
        """Geometric mean of the k-th and (k+1)-th smallest norms, k = round(2% of the blocks)."""
        ranked = norms.double().sort().values
        k = max(1, round(ZEROED * ranked.numel()))
        return (ranked[k - 1] * ranked[k]).sqrt().float() * torch.ones(c.grid_shape)

    def shrink(self, conditioned: bool) -> float:
        """Median over surviving blocks of tau / norm (how much a survivor shrinks)."""
        norms, taus = (self.norms_c, self.tau_c) if conditioned else (self.norms_e, self.tau_e)
        ratios = torch.cat([t.flatten() / n for n, t in zip(norms, taus)])
        return float(ratios[ratios < 1].median())

    def restore(self, params: list[Tensor] | None = None) -> None:
        """Weights (and, for the whole layout, conditioners) back to the snapshot, untimed."""
        with torch.no_grad():
            for p in self.lay.params if params is None else params:
                p.copy_(self.snapshot[p])
            if params is None:
                for p, s in self.cond_snapshot.items():
                    self.cond[p].copy_(s)

    def zeroed(self) -> float:
        return sum(int((c.norms() == 0).sum()) for c in self.lay.ours) / self.total

    def conditioners_intact(self) -> bool:
        return all(torch.equal(self.cond[p], s) for p, s in self.cond_snapshot.items())

    def time(self, go: Callable[[], None]) -> tuple[list[float], list[float]]:
        fractions: list[float] = []
        times = sample_seconds(go, self.repeats, setup=self.restore, after=lambda: fractions.append(self.zeroed()))
        if not self.conditioners_intact():
            raise RuntimeError(f"{self.lay.name}: a prox call wrote into its conditioners")
        self.restore()
        return times, fractions

    def calls(self) -> dict[str, Callable[[], None]]:
        lay = self.lay

        def ours_e() -> None:
            for c, t in zip(lay.ours, self.tau_e):
                c.soft_threshold(t)

        def ours_c() -> None:  # our defaults: rtol=1e-6, max_iter=50
            for c, t, h in zip(lay.ours, self.tau_c, self.h):
                c.soft_threshold(t, h)

        def ref_e() -> None:
            for c, t in zip(lay.ref, self.tau_e):
                c.soft_threshold(t)

        def ref_c() -> None:  # the reference's defaults: max_iter=20, atol=1e-8 (absolute, on mu)
            for c, t, h in zip(lay.ref, self.tau_c, self.href):
                c.soft_threshold(t, h)

        out = {"ours: Euclidean prox": ours_e}
        if lay.ref is not None:
            out["reference: Euclidean prox"] = ref_e
        out["ours: conditioned prox (rel 1e-6)"] = ours_c
        if lay.ref is not None:
            out["reference: conditioned prox (defaults)"] = ref_c
        return out

    def errors(self) -> dict[str, float]:
        """Untimed, one coupling at a time from the snapshot: max per-block error vs float64."""
        lay = self.lay
        worst: dict[str, float] = {}
        for i, c in enumerate(lay.ours):
            nb = c.numblk()
            mine = list({id(s.view.param): s.view.param for s in c.specs}.values())
            w = c.block_view().reshape(nb, -1).double()
            h = c.block_view(self.h[i]).reshape(nb, -1).double()
            te, tc = self.tau_e[i].reshape(-1).double(), self.tau_c[i].reshape(-1).double()
            truth_e = w * (1 - te / w.norm(dim=1).clamp_min(1e-300)).clamp_min(0)[:, None]
            truth_c = _bisect(w, h, tc)
            runs = {
                "ours: Euclidean prox": (lambda: c.soft_threshold(self.tau_e[i]), truth_e),
                "ours: conditioned prox (rel 1e-6)": (lambda: c.soft_threshold(self.tau_c[i], self.h[i]), truth_c),
            }
            if lay.ref is not None:
                r, hr = lay.ref[i], self.href[i]
                runs["reference: Euclidean prox"] = (lambda: r.soft_threshold(self.tau_e[i]), truth_e)
                runs["reference: conditioned prox (defaults)"] = (lambda: r.soft_threshold(self.tau_c[i], hr), truth_c)
            for key, (go, truth) in runs.items():
                go()
                err = _rel_error(c.block_view().reshape(nb, -1).double(), truth)
                worst[key] = max(worst.get(key, 0.0), err)
                self.restore(mine)
        return worst


# -- report ------------------------------------------------------------------------------------
def _fmt_frac(fr: list[float]) -> str:
    lo, hi = min(fr), max(fr)
    return f"{100 * lo:.2f}%" if hi - lo < 5e-5 else f"{100 * lo:.2f}-{100 * hi:.2f}%"


def _adam_times(opt: torch.optim.Adam, repeats: int) -> list[float]:
    """One Adam(foreach) step on the whole model, weights and state restored before each call."""
    params = opt.param_groups[0]["params"]
    weights = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]

    def setup() -> None:
        with torch.no_grad():
            for p, w, st in zip(params, weights, state):
                p.copy_(w)
                for k, v in st.items():
                    opt.state[p][k].copy_(v)

    times = sample_seconds(opt.step, repeats, setup=setup)
    setup()
    return times


def run_layout(lay: Layout, opt: torch.optim.Adam, cond: dict[Tensor, Tensor], repeats: int) -> None:
    bench = Bench(lay, cond, repeats)
    nspecs = sum(len(c.specs) for c in lay.ours)
    print(
        f"\n== {lay.name}: {len(lay.ours)} couplings, {nspecs} specs, {bench.total} blocks, "
        f"{sum(p.numel() for p in lay.params) / 1e6:.1f}M weights in {len(lay.params)} parameters"
    )
    print(
        f"   median shrink of a surviving block (tau / norm): Euclidean {bench.shrink(False):.3f}, "
        f"conditioned {bench.shrink(True):.3f}"
    )
    if lay.ref is None:
        print(f"   reference skipped: {lay.no_ref}")
    adam = _adam_times(opt, repeats)
    rows: list[tuple[str, list[float], list[float]]] = [("Adam(foreach) step, whole model", adam, [])]
    for name, go in bench.calls().items():
        rows.append((name, *bench.time(go)))
    t0 = time.perf_counter()
    errs = bench.errors()
    checks = time.perf_counter() - t0
    med = {name: 1e3 * statistics.median(t) for name, t, _ in rows}
    adam_ms = med[rows[0][0]]
    versus = {
        "ours: Euclidean prox": "reference: Euclidean prox",
        "ours: conditioned prox (rel 1e-6)": "reference: conditioned prox (defaults)",
    }
    print(f"{'what':40s} {'ms':>9s} {'min-max ms':>15s} {'x Adam':>7s} {'ref/ours':>8s} {'zeroed':>12s} {'max err':>8s}")
    for name, t, fr in rows:
        ms = med[name]
        spread = f"{1e3 * min(t):.1f}-{1e3 * max(t):.1f}"
        other = versus.get(name)
        sp = f"{med[other] / ms:8.2f}" if other in med else " " * 8
        zeroed = _fmt_frac(fr) if fr else ""
        err = f"{errs[name]:8.1e}" if name in errs else ""
        print(f"{name:40s} {ms:9.2f} {spread:>15s} {ms / adam_ms:7.2f} {sp} {zeroed:>12s} {err:>8s}")
    print(f"   (untimed float64 checks: {checks:.0f} s; load average now {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per contender (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adam-steps", type=int, default=4, help="real Adam steps before measuring")
    ap.add_argument("--no-dying", action="store_true", help="measure at random init, without near-death blocks")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} calls each, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    model = torchvision.models.resnet50()
    opt = _adam_state(model, args.adam_steps, batch=8, size=128)
    cond = _conditioners(opt)
    base = {p: p.detach().clone() for p in model.parameters()}
    print(
        f"Adam state after {args.adam_steps} real steps (batch 8, 128x128, cross-entropy), conditioner "
        f"sqrt(v_hat)+{ADAM_EPS:g}; "
        + ("no near-death blocks" if args.no_dying else f"{100 * DYING:g}% of blocks scaled by 10^U(-3,-1)")
        + f"; thresholds zero {100 * ZEROED:g}% of each coupling's blocks; restored before every call"
    )
    plan = skg.plan(model, torch.randn(1, 3, 224, 224))
    bound = skg.bind(plan, model)
    layouts = [
        _layout("ResNet-50 bottleneck couplings (4-D conv weights)", _bottleneck_couplings(model)),
        _layout("bind(plan(resnet50)), every prunable group", [bound[g.name] for g in plan.prunable]),
    ]
    for i, lay in enumerate(layouts):
        with torch.no_grad():
            for p, b in base.items():
                p.copy_(b)
        if not args.no_dying:
            _make_dying(lay.ours, torch.Generator().manual_seed(2 + i))
        run_layout(lay, opt, cond, args.repeats)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
