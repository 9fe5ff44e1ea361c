"""Engine speed on ResNet-50 bottleneck couplings, as ratios to an Adam step and to the reference.

Couplings: conv1 rows ~ conv2 columns and conv2 rows ~ conv3 columns in every bottleneck.
Prints medians over ``--repeats`` runs, all measured in this one process.

    python benchmarks/engine.py [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from timing import median_seconds

from sparsekit_graph.engine import BlockCoupling, BlockSpec


def _pairs(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(producer weight, consumer weight) pairs whose channels are coupled."""
    out = []
    for block in model.modules():
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            out += [(block.conv1.weight, block.conv2.weight), (block.conv2.weight, block.conv3.weight)]
    return out


def _views(prod: torch.Tensor, cons: torch.Tensor) -> tuple[tuple, tuple]:
    """Producer rows (O, I*k, 1) and consumer columns (O2, O, k2): grids (O,1,1) and (1,O,1)."""
    o, k = prod.shape[0], prod[0].numel()
    o2, k2 = cons.shape[0], cons[0, 0].numel()
    return ((o, k, 1), (k, 1, 1), (1, -1, 1)), ((o2, o, k2), (o * k2, k2, 1), (-1, 1, -1))


def _ours(pairs: list) -> list[BlockCoupling]:
    from sparsekit_graph.engine import View

    out = []
    for prod, cons in pairs:
        (s1, st1, b1), (s2, st2, b2) = _views(prod, cons)
        out.append(
            BlockCoupling([BlockSpec(View(prod, s1, st1), b1), BlockSpec(View(cons, s2, st2), b2)], [(0, 1, 2), (1, 0, 2)])
        )
    return out


def _reference(pairs: list) -> list | None:
    try:
        from sparsekit.block import BlockCoupling as RC
        from sparsekit.block import BlockSpec as RS
        from sparsekit.view import View as RV
    except ImportError:
        return None
    out = []
    for prod, cons in pairs:
        (s1, st1, b1), (s2, st2, b2) = _views(prod, cons)
        out.append(RC([RS(RV(prod, s1, st1), b1), RS(RV(cons, s2, st2), b2)], [(0, 1, 2), (1, 0, 2)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet50()
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
    opt.step()
    pairs = _pairs(model)
    ours, ref = _ours(pairs), _reference(pairs)
    # Thresholds small enough that most blocks survive, and conditioners like Adam's sqrt(v)+eps.
    conds = [{s: s.view.window(opt.state[s.view.param]["exp_avg_sq"].sqrt().add(1e-8)) for s in c.specs} for c in ours]
    # Thresholds that zero about a fifth of the blocks, the rest shrink (Euclidean and Adam metric).
    taus = [c.norms().quantile(0.2) * torch.ones(c.grid_shape) for c in ours]
    ctaus = [c.norms({s: h[s] * s.data for s in c.specs}).quantile(0.2) * torch.ones(c.grid_shape) for c, h in zip(ours, conds)]
    snapshot = [p.detach().clone() for p in params]

    def restore() -> None:
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)

    def run(couplings: list, conditioned: bool, **kw) -> Callable[[], None]:
        def go() -> None:
            for c, tau, h in zip(couplings, ctaus if conditioned else taus, conds):
                hh = {rs: h[os_] for rs, os_ in zip(c.specs, h)} if conditioned else None
                c.soft_threshold(tau, hh, **kw) if conditioned else c.soft_threshold(tau)

        return go

    adam = median_seconds(opt.step, args.repeats)
    rows = [("Adam(foreach) step, whole model", adam, None)]
    ours_e = median_seconds(run(ours, False), args.repeats)
    restore()
    ours_c = median_seconds(run(ours, True), args.repeats)
    restore()
    ref_e = ref_c = None
    if ref is not None:
        ref_e = median_seconds(run(ref, False), args.repeats)
        restore()
        ref_c = median_seconds(run(ref, True, max_iter=20), args.repeats)
        restore()
    rows += [("ours: Euclidean prox", ours_e, ref_e), ("ours: conditioned prox (rel 1e-6)", ours_c, ref_c)]
    if ref is not None:
        rows += [
            ("reference: Euclidean prox", ref_e, None),
            ("reference: conditioned prox (20 bisections)", ref_c, None),
        ]
    print(f"ResNet-50, {len(ours)} couplings, {args.threads} threads, median of {args.repeats}")
    print(f"{'what':46s} {'ms':>9s} {'x Adam':>8s} {'ref/ours':>9s}")
    for name, t, other in rows:
        speed = f"{other / t:9.2f}" if other else ""
        print(f"{name:46s} {t * 1e3:9.2f} {t / adam:8.2f} {speed}")


if __name__ == "__main__":
    main()
