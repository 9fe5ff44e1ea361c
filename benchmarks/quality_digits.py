"""Pruning quality on real data: scikit-learn's Digits (8x8, shipped offline), our criteria and
group-lasso training side by side with Torch-Pruning, at the same size and the same epochs.

    python benchmarks/quality_digits.py                 # 5 seeds, 75% and 87.5% of channels removed
    python benchmarks/quality_digits.py --quick         # CI smoke run: 1 seed, 2+1 epochs

Data: ``sklearn.datasets.load_digits`` (1797 images), a fixed stratified 70/30 train/test split;
each seed holds out 20% of the training part as a validation split (used only to choose the
penalty strengths ``lam`` / ``reg``), trains on the rest, and reports test accuracy.

Model: 4 conv-BN-ReLU blocks (1->32->32, max-pool, ->64->64), global average pool, Linear(64, 10).
Every conv's output channels are a prunable group (192 channels); each method removes the same
fraction ``r`` of every group (``prune(ratio=r)``, Torch-Pruning ``pruning_ratio=r`` with the
classifier ignored), so all methods end with exactly the same parameter count (checked).

Methods (``E`` training epochs, then pruning, then ``F`` fine-tuning epochs; dense trains E+F):

- ``dense``: no pruning.
- ``l2`` / ``taylor`` / ``activation``: dense training, ``skg.prune`` with that importance (data
  criteria calibrated on 512 training images), fine-tuning.
- ``group-lasso``: training with ``skg.ProximalStep`` (Adam-conditioned prox, ``lam`` ramped
  linearly over the first half), then ``prune(ratio=r)`` (the channels the prox zeroed go first),
  fine-tuning. ``lam`` from ``--lams``: the one with the best validation accuracy right after
  pruning at ``r``.
- ``tp-magnitude``: dense training, ``tp.pruner.MagnitudePruner`` (``GroupMagnitudeImportance(p=2)``),
  fine-tuning.
- ``tp-groupnorm``: training with ``tp.pruner.GroupNormPruner.regularize`` after every backward
  (``reg`` from ``--regs``, chosen on validation the same way), ``step()``, fine-tuning.

Optimiser: Adam (lr 3e-3, cosine to 0 over the phase), batch 64; fine-tuning Adam lr 1e-3, cosine.
Reported per method: test accuracy one-shot (right after pruning) and after fine-tuning, mean +- std
over seeds, parameters kept. Output: one JSON line per run, a markdown table, and a PNG plot of
accuracy against parameters kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg

Data = tuple[Tensor, Tensor]


class DigitsCNN(nn.Module):
    """4 conv-BN-ReLU blocks, 32-64 channels, global average pool, linear classifier."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        w = width
        self.features = nn.Sequential(*block(1, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), *block(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 8, 8)
        return self.fc(self.features(x).mean((2, 3)))


def load_data(seed: int) -> tuple[Data, Data, Data]:
    """(train, validation, test): the test split is fixed, the validation split depends on ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=0.3, random_state=0, stratify=d.target)
    fit_idx, val_idx = train_test_split(train_idx, test_size=0.2, random_state=seed, stratify=d.target[train_idx])
    mean, std = x[fit_idx].mean(), x[fit_idx].std()
    x = (x - mean) / std
    return (x[fit_idx], y[fit_idx]), (x[val_idx], y[val_idx]), (x[test_idx], y[test_idx])


def _batches(data: Data, batch: int, gen: torch.Generator) -> Iterator[Data]:
    x, y = data
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch):
        j = perm[i : i + batch]
        yield x[j], y[j]


def train(
    model: nn.Module,
    data: Data,
    epochs: int,
    lr: float,
    seed: int,
    *,
    on_optimizer: Callable[[torch.optim.Optimizer], Callable[[], None] | None] | None = None,
    after_backward: Callable[[], None] | None = None,
) -> None:
    """Adam with a cosine schedule; ``on_optimizer`` may return a hook run after every step."""
    if epochs == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(data[1]) / 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    after_step = on_optimizer(opt) if on_optimizer else None
    model.train()
    for _ in range(epochs):
        for x, y in _batches(data, 64, gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            if after_backward:
                after_backward()
            opt.step()
            if after_step:
                after_step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: Data) -> float:
    model.eval()
    x, y = data
    return float((model(x).argmax(1) == y).float().mean())


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _calibration(data: Data, seed: int, n: int = 512, batch: int = 128) -> list[Data]:
    gen = torch.Generator().manual_seed(seed + 1000)
    idx = torch.randperm(len(data[1]), generator=gen)[:n]
    return [(data[0][idx[i : i + batch]], data[1][idx[i : i + batch]]) for i in range(0, len(idx), batch)]


def ours_prune(model: nn.Module, ratio: float, importance: str, calib: list[Data]) -> nn.Module:
    x = calib[0][0][:2]
    plan = skg.plan(model, x)
    return skg.prune(model, plan, ratio=ratio, importance=importance, calibration=calib, loss_fn=F.cross_entropy).model


def group_lasso_train(model: nn.Module, data: Data, epochs: int, lam: float, seed: int, ratio: float | None = None) -> nn.Module:
    """Training with ``ProximalStep`` (``lam`` ramped linearly over the first half). ``ratio``
    given: targeted group lasso -- each epoch, only the ``ratio`` weakest channels of every group
    (by L2 norm) carry the penalty (per-channel ``weights``, the others 0), so the prox zeroes
    exactly what uniform pruning at ``ratio`` will remove."""
    plan = skg.plan(model, data[0][:2])
    per_epoch = math.ceil(len(data[1]) / 64)
    steps = epochs * per_epoch
    seen = [0]

    def weights() -> dict[str, Tensor] | None:
        if ratio is None:
            return None
        couplings = skg.bind(plan, model)
        out = {}
        for g in plan.prunable:
            c = couplings[g.name]
            w = torch.zeros(g.size)
            w[torch.argsort(c.norms().reshape(-1).cpu(), stable=True)[: int(g.size * ratio)]] = math.sqrt(c.numel_per_block())
            out[g.name] = w
        return out

    def attach(opt: torch.optim.Optimizer) -> Callable[[], None]:
        def make() -> skg.ProximalStep:
            return skg.ProximalStep(plan, model, opt, lam, weights=weights(), schedule=lambda t: min(1.0, 2 * seen[0] / steps))

        prox = [make()]

        def after() -> None:
            seen[0] += 1
            prox[0].step()
            if ratio is not None and seen[0] % per_epoch == 0 and seen[0] < steps:
                prox[0].remove()
                prox[0] = make()

        return after

    train(model, data, epochs, 3e-3, seed, on_optimizer=attach)
    return model


def tp_prune(model: nn.Module, ratio: float, example: Tensor, pruner_cls: type, **kw: object) -> object:
    import torch_pruning as tp

    return pruner_cls(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
        **kw,
    )


def tp_groupnorm_train(model: nn.Module, data: Data, epochs: int, reg: float, ratio: float, seed: int) -> object:
    import torch_pruning as tp

    pruner = tp_prune(model, ratio, data[0][:2], tp.pruner.GroupNormPruner, reg=reg)
    pruner.update_regularizer()
    train(model, data, epochs, 3e-3, seed, after_backward=lambda: pruner.regularize(model))
    return pruner


def run_seed(seed: int, args: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    import torch_pruning as tp

    fit, val, test = load_data(seed)
    calib = _calibration(fit, seed)
    E, FT = args.epochs, args.ft_epochs

    def record(method: str, ratio: float, model: nn.Module, one_shot: float | None, extra: dict | None = None) -> None:
        emit({"seed": seed, "method": method, "ratio": ratio, "params": count(model), "one_shot": one_shot,
              "final": accuracy(model, test), **(extra or {})})  # fmt: skip

    torch.manual_seed(seed)
    init = DigitsCNN()
    dense_params = count(init)
    base = copy.deepcopy(init)
    train(base, fit, E, 3e-3, seed)
    dense = copy.deepcopy(base)
    train(dense, fit, FT, 1e-3, seed + 1)  # dense: E epochs then F more at the fine-tuning rate
    record("dense", 0.0, dense, None, {"dense_params": dense_params})

    lasso = {}
    for lam in args.lams:
        m = group_lasso_train(copy.deepcopy(init), fit, E, lam, seed)
        lasso[lam] = (m, accuracy(m, test), accuracy(m, val))
    regs = {}
    for reg in args.regs:
        m = copy.deepcopy(init)
        regs[reg] = (m, tp_groupnorm_train(m, fit, E, reg, args.ratios[0], seed))

    for ratio in args.ratios:
        for importance in ("l2", "taylor", "activation"):
            m = ours_prune(base, ratio, importance, calib)
            one = accuracy(m, test)
            train(m, fit, FT, 1e-3, seed + 1)
            record(importance, ratio, m, one)

        # group lasso: lam with the best validation accuracy right after pruning at this ratio
        targeted = {lam: group_lasso_train(copy.deepcopy(init), fit, E, lam, seed, ratio) for lam in args.lams}
        for method, trained in (("group-lasso", lasso), ("group-lasso-targeted", targeted)):
            pruned = {lam: ours_prune(t[0] if isinstance(t, tuple) else t, ratio, "l2", calib) for lam, t in trained.items()}
            val_by_lam = {k: accuracy(v, val) for k, v in pruned.items()}  # one-shot, before fine-tuning
            lam = max(val_by_lam, key=val_by_lam.__getitem__)
            m = pruned[lam]
            one = accuracy(m, test)
            before = trained[lam][1] if isinstance(trained[lam], tuple) else accuracy(trained[lam], test)
            train(m, fit, FT, 1e-3, seed + 1)
            extra = {"lam": lam, "trained": before, "val_by_lam": {str(k): v for k, v in val_by_lam.items()}}
            record(method, ratio, m, one, extra)

        m = copy.deepcopy(base)
        tp_prune(m, ratio, fit[0][:2], tp.pruner.MagnitudePruner).step()
        one = accuracy(m, test)
        train(m, fit, FT, 1e-3, seed + 1)
        record("tp-magnitude", ratio, m, one)

        cands = {}
        for reg, (trained, _) in regs.items():
            m = copy.deepcopy(trained)
            tp_prune(m, ratio, fit[0][:2], tp.pruner.GroupNormPruner, reg=reg).step()
            cands[reg] = m
        val_by_reg = {k: accuracy(v, val) for k, v in cands.items()}
        reg = max(val_by_reg, key=val_by_reg.__getitem__)
        m = cands[reg]
        one = accuracy(m, test)
        train(m, fit, FT, 1e-3, seed + 1)
        record("tp-groupnorm", ratio, m, one, {"reg": reg, "val_by_reg": {str(k): v for k, v in val_by_reg.items()}})


METHODS = ("dense", "l2", "taylor", "activation", "group-lasso", "group-lasso-targeted", "tp-magnitude", "tp-groupnorm")


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} +- {100 * sd:.2f}"


def table(rows: list[dict]) -> str:
    dense_params = next(r["dense_params"] for r in rows if r["method"] == "dense")
    out = ["| removed | method | params kept | one-shot acc % | fine-tuned acc % |", "|---|---|---|---|---|"]
    for ratio in sorted({r["ratio"] for r in rows}):
        for method in METHODS:
            rs = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
            if not rs:
                continue
            params = sorted({r["params"] for r in rs})
            one = [r["one_shot"] for r in rs if r["one_shot"] is not None]
            kept = ", ".join(f"{p:,} ({100 * p / dense_params:.2f}%)" for p in params)
            out.append(f"| {ratio:.3g} | {method} | {kept} | {_ms(one)} | {_ms([r['final'] for r in rs])} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense_params = next(r["dense_params"] for r in rows if r["method"] == "dense")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(METHODS[1:]):
        pts = []
        for ratio in sorted({r["ratio"] for r in rows if r["ratio"] > 0}):
            rs = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
            if rs:
                acc = [100 * r["final"] for r in rs]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                pts.append((100 * rs[0]["params"] / dense_params, statistics.mean(acc), sd))
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar([x * (1 + 0.02 * (i - 3)) for x in xs], ys, yerr=es, marker="o", capsize=3, label=method)
    d = [100 * r["final"] for r in rows if r["method"] == "dense"]
    ax.axhline(statistics.mean(d), color="k", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("parameters kept (% of dense, log scale)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title("Digits: accuracy vs size (mean +- std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.875])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--lams", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--regs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Run only this seed (seeds in parallel processes; merge their --json files with --report).",
    )
    p.add_argument("--quick", action="store_true", help="1 seed, 2+1 epochs, one lam/reg (CI smoke run)")
    p.add_argument("--json", type=Path, default=None, help="Write the runs here (one JSON object per line).")
    p.add_argument("--report", type=Path, default=None, help="Only print the table (and plot) of a saved run's JSON lines.")
    p.add_argument("--plot", type=Path, default=None, help="Write the accuracy-vs-size PNG here.")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.ft_epochs, args.lams, args.regs = 1, 2, 1, [3e-3], [1e-3]
    if args.report:
        rows = [json.loads(line) for line in args.report.read_text().splitlines() if line.startswith("{")]
        print(f"{len({r['seed'] for r in rows})} seeds\n\n{table(rows)}")
        if args.plot:
            plot(rows, args.plot)
        return 0
    torch.set_num_threads(args.threads)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    t0 = time.perf_counter()
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    for seed in seeds:
        run_seed(seed, args, emit)
    print(f"\n{len(seeds)} seeds in {time.perf_counter() - t0:.0f}s (torch threads {args.threads})\n")
    print(table(rows))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
