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
its state) are restored, untimed, before each call. Each contender runs in a fresh process (the
same seeded model, Adam state and layout are rebuilt there), timed round robin with an Adam step
in that process (one call of each per round, so that a change of the machine's load falls on both
alike): one contender's allocations, caches or compiled kernels cannot slow or speed another's.
glibc's malloc is pinned (``--malloc steady``) to the state a training process settles in, where
temporaries come from the heap and no timed call pays page faults for fresh pages; left alone, its
mmap threshold depends on what the process freed before, and Adam's step took 53 or 91 ms (1
thread), with 0 or ~20,000 page faults a call, in the same process on two layouts, moving every
ratio with what ran before it (``docs/engine.md``). ``--isolate layout`` times
all of a layout's contenders in one process, as the script did before.
Printed per contender: the median wall time, the Adam step's in its process and the ratio, the
reference's ratio to Adam over ours (each against its own process's Adam), the ratio of median
process CPU times (all threads) to Adam's, minor page faults per call, the bytes it moves
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

    python benchmarks/engine.py [--repeats 5] [--threads 2] [--no-dying] [--euclidean-only] [--layout plan] [--native | --eager]
                                [--isolate row|layout] [--malloc steady|default]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torchvision
from torch import Tensor, nn
from traffic import count

import sparsekit_graph as skg
from sparsekit_graph.engine import BlockCoupling, BlockSpec, View, batch, native, soft_threshold_all

_View, _BlockSpec, _BlockCoupling = View, BlockSpec, BlockCoupling

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
def _bottleneck_couplings(model: nn.Module, eng: ModuleType | None = None) -> list[BlockCoupling]:
    """conv1 rows ~ conv2 columns and conv2 rows ~ conv3 columns, on the 4-D weights (built by
    ``eng``, another revision's ``sparsekit_graph.engine``, where given)."""
    View, BlockSpec, BlockCoupling = (eng.View, eng.BlockSpec, eng.BlockCoupling) if eng else (_View, _BlockSpec, _BlockCoupling)  # noqa: N806
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


ADAM = "Adam(foreach) step, whole model"
LAYOUTS = {  # name on the command line -> printed name
    "bottleneck": "ResNet-50 bottleneck couplings (4-D conv weights)",
    "plan": "bind(plan(resnet50)), every prunable group",
}
ROW_IDS = {  # contenders as the command line names them
    "euclid": EUCLID, "euclid-all": EUCLID_ALL, "ref-euclid": REF_EUCLID,
    "cond": COND, "cond-all": COND_ALL, "ref-cond": REF_COND,
}  # fmt: skip
VERSUS = {EUCLID: REF_EUCLID, EUCLID_ALL: REF_EUCLID, COND: REF_COND, COND_ALL: REF_COND}
# glibc's malloc, pinned to the state a training process reaches: temporaries up to 32 MiB come from
# the heap and freed memory is kept, so no timed call pays page faults for fresh pages. Left alone,
# glibc mmaps each allocation over 128 KiB afresh until the process has freed a large mmapped block
# (then its threshold rises): Adam's step then faults ~20,000 pages a call and takes 1.8x as long,
# depending on what the process ran before.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _prepare(args: argparse.Namespace, layout: str) -> tuple[torch.optim.Adam, dict[Tensor, Tensor], Layout]:
    """The model, its real Adam state and conditioners, and one layout with its near-death blocks:
    the same in every process (seeded)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    opt = _adam_state(model, args.adam_steps, batch=8, size=128)
    cond = _conditioners(opt)
    if layout == "bottleneck":
        lay = _layout(LAYOUTS[layout], _bottleneck_couplings(model))
    else:
        plan = skg.plan(model, torch.randn(1, 3, 224, 224))
        bound = skg.bind(plan, model)
        lay = _layout(LAYOUTS[layout], [bound[g.name] for g in plan.prunable])
    if not args.no_dying:
        _make_dying(lay.ours, torch.Generator().manual_seed(2 + list(LAYOUTS).index(layout)))
    return opt, cond, lay


def _time_rows(bench: Bench, opt: torch.optim.Adam, cond: dict[Tensor, Tensor], names: list[str]) -> dict[str, dict]:
    """Adam's step and the named contenders, round robin in this process: per row the wall and
    process times, page faults and zeroed fraction of each timed call, and the counted traffic."""
    calls = bench.calls(conditioned=True)
    rows: dict[str, Row] = {ADAM: _adam_row(opt)}
    for name in names:
        row = Row(calls[name], bench.restore)
        row.after = lambda row=row: row.zeroed.append(bench.zeroed())
        rows[name] = row
    persistent = [p for g in opt.param_groups for p in g["params"]]
    persistent += [v for st in opt.state.values() for v in st.values() if isinstance(v, Tensor)]
    persistent += list(cond.values())
    split, batch.SPLIT = batch.SPLIT, False  # the counter sees this thread's ops only: the same kernels, on it
    cpp = native.set_native(False)  # and aten ops only: the eager kernels' bytes (the C loops move no more)
    for row in rows.values():  # bytes moved, counted op by op (untimed, from the same state)
        row.setup()
        tr = count(row.go, persistent)
        row.moved, row.ops = tr.total, tr.ops
    batch.SPLIT = split
    native.set_native(cpp)
    faults: dict[str, list[int]] = {name: [] for name in rows}
    for k in range(bench.repeats + 1):  # round robin, one warm-up round
        for name, row in rows.items():
            row.setup()
            f0, c0, t0 = _faults(), time.process_time(), time.perf_counter()
            row.go()
            wall, cpu, flt = time.perf_counter() - t0, time.process_time() - c0, _faults() - f0
            if k:
                row.wall.append(wall)
                row.cpu.append(cpu)
                faults[name].append(flt)
                if row.after is not None:
                    row.after()
    for row in rows.values():
        row.setup()
    if not bench.conditioners_intact():
        raise RuntimeError(f"{bench.lay.name}: a prox call wrote into its conditioners")
    return {
        name: {"wall": r.wall, "cpu": r.cpu, "faults": faults[name], "zeroed": r.zeroed, "moved": r.moved, "ops": r.ops}
        for name, r in rows.items()
    }


def _contenders(args: argparse.Namespace, has_ref: bool) -> list[str]:
    out = [EUCLID, EUCLID_ALL] + ([REF_EUCLID] if has_ref else [])
    if not args.euclidean_only:
        out += [COND, COND_ALL] + ([REF_COND] if has_ref else [])
    return out


def child(args: argparse.Namespace) -> dict:
    """One process's work: ``--child info`` (the layout's facts and the untimed float64 checks) or
    ``--child ROW[,ROW...]`` (those contenders timed against Adam's step in this process)."""
    torch.set_num_threads(args.threads)
    batch.SPLIT = not args.no_split
    if args.native or args.eager:  # else the library's default (native, eager if it cannot build)
        native.set_native(args.native)
    opt, cond, lay = _prepare(args, args.layout)
    bench = Bench(lay, cond, args.repeats)
    if args.child != "info":
        return {"rows": _time_rows(bench, opt, cond, [ROW_IDS[k] for k in args.child.split(",")])}
    t0 = time.perf_counter()
    errs = bench.errors(not args.euclidean_only)
    errs[EUCLID_ALL], in_order = bench.all_error()
    if not args.euclidean_only:
        errs[COND_ALL] = bench.cond_all_error()
    return {
        "couplings": len(lay.ours),
        "specs": sum(len(c.specs) for c in lay.ours),
        "blocks": bench.total,
        "weights": sum(p.numel() for p in lay.params),
        "params": len(lay.params),
        "shrink": [bench.shrink(False), bench.shrink(True)],
        "ref": lay.ref is not None,
        "no_ref": lay.no_ref,
        "errors": errs,
        "in_order": in_order,
        "checks_s": time.perf_counter() - t0,
    }


def _spawn(args: argparse.Namespace, layout: str, what: str) -> dict:
    """Run ``child`` in a fresh interpreter (nothing allocated, cached or compiled before it)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--layout", layout]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--adam-steps", str(args.adam_steps)]
    cmd += ["--no-dying"] * args.no_dying + ["--euclidean-only"] * args.euclidean_only + ["--no-split"] * args.no_split
    cmd += ["--native"] * args.native + ["--eager"] * args.eager
    env = dict(os.environ)
    if args.malloc == "steady":
        env.update(STEADY_MALLOC)
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(RESULT))
    return json.loads(line[len(RESULT) :])


RESULT = "RESULT "


def report(args: argparse.Namespace, layout: str) -> None:
    """Every contender of one layout, each in its own process (or all in one with
    ``--isolate layout``), with Adam's step timed beside it in that process."""
    info = _spawn(args, layout, "info")
    print(
        f"\n== {LAYOUTS[layout]}: {info['couplings']} couplings, {info['specs']} specs, {info['blocks']} blocks, "
        f"{info['weights'] / 1e6:.1f}M weights in {info['params']} parameters"
    )
    print(
        f"   median shrink of a surviving block (tau / norm): Euclidean {info['shrink'][0]:.3f}, "
        f"conditioned {info['shrink'][1]:.3f}",
        flush=True,
    )
    if not info["ref"]:
        print(f"   reference skipped: {info['no_ref']}", flush=True)
    names = _contenders(args, info["ref"])
    groups = [names] if args.isolate == "layout" else [[n] for n in names]
    rows: dict[str, dict] = {}
    for group in groups:
        ids = {name: key for key, name in ROW_IDS.items()}
        got = _spawn(args, layout, ",".join(ids[n] for n in group))["rows"]
        for name in group:
            rows[name] = got[name] | {"adam": got[ADAM]}
    ratio = {name: statistics.median(r["wall"]) / statistics.median(r["adam"]["wall"]) for name, r in rows.items()}
    print(
        f"{'what':38s} {'ms':>8s} {'min-max ms':>14s} {'Adam ms':>8s} {'x Adam':>6s} {'ref/ours':>8s} "
        f"{'cpu x Adam':>10s} {'faults':>6s} {'MB moved':>8s} {'x Adam':>6s} {'ops':>5s} {'zeroed':>6s} {'max err':>8s}"
    )
    first = next(iter(rows.values()))["adam"]
    for name, r in [(ADAM, first | {"adam": first, "zeroed": []})] + list(rows.items()):
        adam = r["adam"]
        ms, adam_ms = 1e3 * statistics.median(r["wall"]), 1e3 * statistics.median(adam["wall"])
        cpu = statistics.median(r["cpu"]) / statistics.median(adam["cpu"])
        spread = f"{1e3 * min(r['wall']):.1f}-{1e3 * max(r['wall']):.1f}"
        other = VERSUS.get(name)
        sp = f"{ratio[other] / ratio[name]:8.2f}" if other in ratio else " " * 8
        zeroed = _fmt_frac(r["zeroed"]) if r["zeroed"] else ""
        err = f"{info['errors'][name]:8.1e}" if name in info["errors"] else ""
        print(
            f"{name:38s} {ms:8.2f} {spread:>14s} {adam_ms:8.2f} {ms / adam_ms:6.2f} {sp} {cpu:10.2f} "
            f"{statistics.median(r['faults']):6.0f} {r['moved'] / 1e6:8.0f} {r['moved'] / adam['moved']:6.2f} "
            f"{r['ops']:5d} {zeroed:>6s} {err:>8s}"
        )
    print(
        f"   max err of soft_threshold_all: against the float64 calls in order, where the float32 calls in order "
        f"have {info['in_order']:.1e}"
    )
    print(f"   (untimed float64 checks: {info['checks_s']:.0f} s; load average now {os.getloadavg()[0]:.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per contender (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adam-steps", type=int, default=4, help="real Adam steps before measuring")
    ap.add_argument("--no-dying", action="store_true", help="measure at random init, without near-death blocks")
    ap.add_argument("--euclidean-only", action="store_true", help="skip the conditioned prox rows")
    ap.add_argument("--layout", choices=("both", *LAYOUTS), default="both", help="which layout(s) to time")
    ap.add_argument(
        "--isolate", choices=("row", "layout"), default="row",
        help="a fresh process per contender (row, the default) or per layout (all contenders round robin)",
    )  # fmt: skip
    ap.add_argument(
        "--malloc", choices=("steady", "default"), default="steady",
        help="steady: glibc keeps freed memory (no page faults in timed calls); default: glibc as it comes",
    )  # fmt: skip
    ap.add_argument(
        "--no-split", action="store_true",
        help="soft_threshold_all's Euclidean weights on torch's intra-op threads only, not spread over worker threads",
    )  # fmt: skip
    kernels = ap.add_mutually_exclusive_group()
    kernels.add_argument(
        "--native", action="store_true",
        help="force engine/native.py's C loops for the Euclidean passes "
        "(the default unless they cannot build; ops/MB columns: eager's)",
    )  # fmt: skip
    kernels.add_argument("--eager", action="store_true", help="force the eager (torch) kernels for the Euclidean passes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(RESULT + json.dumps(child(args)))
        return
    t0 = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} calls each, "
        f"load average {os.getloadavg()[0]:.2f}; a fresh process per {args.isolate}, malloc {args.malloc}, "
        f"split {not args.no_split}, kernels {'eager' if args.eager else 'native' if args.native else 'default'}"
    )
    print(
        f"Adam state after {args.adam_steps} real steps (batch 8, 128x128, cross-entropy), conditioner "
        f"sqrt(v_hat)+{ADAM_EPS:g}; "
        + ("no near-death blocks" if args.no_dying else f"{100 * DYING:g}% of blocks scaled by 10^U(-3,-1)")
        + f"; thresholds zero {100 * ZEROED:g}% of each coupling's blocks; restored before every call"
    )
    for layout in LAYOUTS if args.layout == "both" else [args.layout]:
        report(args, layout)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
