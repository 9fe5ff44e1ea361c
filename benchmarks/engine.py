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
its state) are restored, untimed, before each call. The contenders are timed round robin (one
call of each per round), so that a change of the machine's load falls on all of them alike.
Printed per contender: the median wall time, its ratio to the Adam step and the reference's time
over ours, the ratio of median process CPU times (all threads) to Adam's, the bytes it moves
through memory and the aten ops it runs (``traffic.py``: counted, not timed, so no load disturbs
them; on a server where both sides are bound by memory bandwidth the time ratio follows the byte
ratio), the fraction of blocks it zeroed, and (untimed) each result's largest per-block relative
error against a float64 solution (bisection to machine precision; for ``soft_threshold_all``, the
float64 calls in order, later couplings seeing the earlier ones' writes).

Two Euclidean rows: ``c.soft_threshold(t)`` coupling by coupling, and ``soft_threshold_all``, one
call for the whole layout (the same result: a weight shared by two couplings is read once for both
and written once). Two conditioned rows likewise: coupling by coupling, and
``soft_threshold_all(couplings, taus, conditioners)`` (couplings that share no parameter solved as
one; its error column is its largest per-block difference from the calls in order).

    python benchmarks/engine.py [--repeats 5] [--threads 2] [--no-dying] [--euclidean-only] [--layout plan]
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
from torch import Tensor, nn
from traffic import count

import sparsekit_graph as skg
from sparsekit_graph.engine import BlockCoupling, BlockSpec, View, soft_threshold_all

ZEROED = 0.02  # fraction of blocks one prox call should zero
EUCLID, EUCLID_ALL = "ours: Euclidean prox", "ours: Euclidean, soft_threshold_all"
COND_ALL = "ours: conditioned, soft_threshold_all"
REF_EUCLID, COND, REF_COND = (
    "reference: Euclidean prox",
    "ours: conditioned prox (rel 1e-6)",
    "reference: conditioned prox (defaults)",
)
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

    def calls(self, conditioned: bool = True) -> dict[str, Callable[[], None]]:
        lay = self.lay

        def ours_e() -> None:
            for c, t in zip(lay.ours, self.tau_e):
                c.soft_threshold(t)

        def ours_all() -> None:  # the same prox, every coupling in one call (equal to the calls in order)
            soft_threshold_all(lay.ours, self.tau_e)

        def ours_c() -> None:  # our defaults: rtol=1e-6, max_iter=50
            for c, t, h in zip(lay.ours, self.tau_c, self.h):
                c.soft_threshold(t, h)

        def ours_call() -> None:  # the same prox, couplings that share no parameter solved as one
            soft_threshold_all(lay.ours, self.tau_c, self.h)

        def ref_e() -> None:
            for c, t in zip(lay.ref, self.tau_e):
                c.soft_threshold(t)

        def ref_c() -> None:  # the reference's defaults: max_iter=20, atol=1e-8 (absolute, on mu)
            for c, t, h in zip(lay.ref, self.tau_c, self.href):
                c.soft_threshold(t, h)

        out = {EUCLID: ours_e, EUCLID_ALL: ours_all}
        if lay.ref is not None:
            out[REF_EUCLID] = ref_e
        if conditioned:
            out[COND] = ours_c
            out[COND_ALL] = ours_call
            if lay.ref is not None:
                out[REF_COND] = ref_c
        return out

    def sequential_truth(self) -> dict[Tensor, Tensor]:
        """Float64 result of the Euclidean calls in order (later couplings see earlier ones' writes)."""
        lay = self.lay
        for p in lay.params:
            p.data = p.data.double()
        try:
            for c, t in zip(lay.ours, self.tau_e):
                c.soft_threshold(t.double())
            return {p: p.data.clone() for p in lay.params}
        finally:
            for p in lay.params:
                p.data = self.snapshot[p].clone()

    def all_error(self) -> tuple[float, float]:
        """Max per-block error of ``soft_threshold_all``, and of the float32 calls in order, against
        the float64 calls in order (a block that an earlier coupling leaves near its threshold
        amplifies rounding in both alike)."""
        truth = self.sequential_truth()

        def worst() -> float:
            out = 0.0
            for c in self.lay.ours:
                nb = c.numblk()
                want = c.block_view({s: s.view.window(truth[s.view.param]) for s in c.specs}).reshape(nb, -1)
                out = max(out, _rel_error(c.block_view().reshape(nb, -1).double(), want))
            self.restore()
            return out

        soft_threshold_all(self.lay.ours, self.tau_e)
        fused = worst()
        for c, t in zip(self.lay.ours, self.tau_e):
            c.soft_threshold(t)
        return fused, worst()

    def cond_all_error(self) -> float:
        """Max per-block relative difference of the conditioned ``soft_threshold_all`` from our
        conditioned calls in order (both solve every block to relative 1e-6)."""
        nbs = [c.numblk() for c in self.lay.ours]
        for c, t, h in zip(self.lay.ours, self.tau_c, self.h):
            c.soft_threshold(t, h)
        in_order = [c.block_view().reshape(nb, -1).double() for c, nb in zip(self.lay.ours, nbs)]
        self.restore()
        soft_threshold_all(self.lay.ours, self.tau_c, self.h)
        out = max(_rel_error(c.block_view().reshape(nb, -1).double(), x) for c, nb, x in zip(self.lay.ours, nbs, in_order))
        self.restore()
        return out

    def errors(self, conditioned: bool = True) -> dict[str, float]:
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
            truth_c = _bisect(w, h, tc) if conditioned else truth_e
            runs = {EUCLID: (lambda: c.soft_threshold(self.tau_e[i]), truth_e)}
            if conditioned:
                runs[COND] = (lambda: c.soft_threshold(self.tau_c[i], self.h[i]), truth_c)
            if lay.ref is not None:
                r, hr = lay.ref[i], self.href[i]
                runs[REF_EUCLID] = (lambda: r.soft_threshold(self.tau_e[i]), truth_e)
                if conditioned:
                    runs[REF_COND] = (lambda: r.soft_threshold(self.tau_c[i], hr), truth_c)
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


@dataclass
class Row:
    """One contender: its call, the untimed state restore before it, and what was measured."""

    go: Callable[[], None]
    setup: Callable[[], None]
    after: Callable[[], None] | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    zeroed: list[float] = field(default_factory=list)
    moved: int = 0
    ops: int = 0


def _adam_row(opt: torch.optim.Adam) -> Row:
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

    return Row(opt.step, setup)


def _interleave(rows: dict[str, Row], repeats: int) -> None:
    """Round robin: one call of every contender per round (one warm-up round), so that a change of
    the machine's load falls on all of them alike. Wall time and process CPU time (all threads)."""
    for k in range(repeats + 1):
        for row in rows.values():
            row.setup()
            c0, t0 = time.process_time(), time.perf_counter()
            row.go()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if k:
                row.wall.append(wall)
                row.cpu.append(cpu)
                if row.after is not None:
                    row.after()
    for row in rows.values():
        row.setup()


def run_layout(lay: Layout, opt: torch.optim.Adam, cond: dict[Tensor, Tensor], repeats: int, conditioned: bool) -> None:
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
    rows: dict[str, Row] = {"Adam(foreach) step, whole model": _adam_row(opt)}
    for name, go in bench.calls(conditioned).items():
        row = Row(go, bench.restore)
        row.after = lambda row=row: row.zeroed.append(bench.zeroed())
        rows[name] = row
    persistent = [p for g in opt.param_groups for p in g["params"]]
    persistent += [v for st in opt.state.values() for v in st.values() if isinstance(v, Tensor)]
    persistent += list(cond.values())
    for row in rows.values():  # bytes moved, counted op by op (untimed, from the same state)
        row.setup()
        tr = count(row.go, persistent)
        row.moved, row.ops = tr.total, tr.ops
    _interleave(rows, repeats)
    if not bench.conditioners_intact():
        raise RuntimeError(f"{lay.name}: a prox call wrote into its conditioners")
    t0 = time.perf_counter()
    errs = bench.errors(conditioned)
    errs[EUCLID_ALL], in_order = bench.all_error()
    if conditioned:
        errs[COND_ALL] = bench.cond_all_error()
    checks = time.perf_counter() - t0
    adam = rows["Adam(foreach) step, whole model"]
    med = {name: 1e3 * statistics.median(r.wall) for name, r in rows.items()}
    cpu = {name: 1e3 * statistics.median(r.cpu) for name, r in rows.items()}
    versus = {EUCLID: REF_EUCLID, EUCLID_ALL: REF_EUCLID, COND: REF_COND, COND_ALL: REF_COND}
    print(
        f"{'what':38s} {'ms':>8s} {'min-max ms':>14s} {'x Adam':>6s} {'ref/ours':>8s} {'cpu x Adam':>10s} "
        f"{'MB moved':>8s} {'x Adam':>6s} {'ops':>5s} {'zeroed':>6s} {'max err':>8s}"
    )
    for name, r in rows.items():
        ms = med[name]
        spread = f"{1e3 * min(r.wall):.1f}-{1e3 * max(r.wall):.1f}"
        other = versus.get(name)
        sp = f"{med[other] / ms:8.2f}" if other in med else " " * 8
        zeroed = _fmt_frac(r.zeroed) if r.zeroed else ""
        err = f"{errs[name]:8.1e}" if name in errs else ""
        print(
            f"{name:38s} {ms:8.2f} {spread:>14s} {ms / med[next(iter(rows))]:6.2f} {sp} "
            f"{cpu[name] / cpu[next(iter(rows))]:10.2f} {r.moved / 1e6:8.0f} {r.moved / adam.moved:6.2f} {r.ops:5d} "
            f"{zeroed:>6s} {err:>8s}"
        )
    print(
        f"   max err of soft_threshold_all: against the float64 calls in order, where the float32 calls in order "
        f"have {in_order:.1e}"
    )
    print(f"   (untimed float64 checks: {checks:.0f} s; load average now {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per contender (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adam-steps", type=int, default=4, help="real Adam steps before measuring")
    ap.add_argument("--no-dying", action="store_true", help="measure at random init, without near-death blocks")
    ap.add_argument("--euclidean-only", action="store_true", help="skip the conditioned prox rows")
    ap.add_argument("--layout", choices=("both", "bottleneck", "plan"), default="both", help="which layout(s) to time")
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
        if args.layout != "both" and ("bind(plan" in lay.name) != (args.layout == "plan"):
            continue
        with torch.no_grad():
            for p, b in base.items():
                p.copy_(b)
        if not args.no_dying:
            _make_dying(lay.ours, torch.Generator().manual_seed(2 + i))
        run_layout(lay, opt, cond, args.repeats, not args.euclidean_only)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
