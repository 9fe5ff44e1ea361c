"""Coverage: the DESIGN.md oracle over model zoos, side by side with Torch-Pruning, as markdown.

    python benchmarks/coverage.py [--out docs/coverage.md] [--only classification,segmentation,video,timm]

For every model: does sparsekit-graph pass the oracle (plan, JSON round trip, check, prune at
0.5, run in eval and train mode, exactness of zero-invariant groups), and does Torch-Pruning 1.6
(``MetaPruner``, ratio 0.5, L2 magnitude, classifier ignored) prune it without crashing.

Both run under the same caps, each model in its own freshly spawned process: the same address-space
limit (``RLIMIT_AS``, ``--memory-gb``), wall-clock limit (``--seconds``) and torch thread count
(``--threads``). Our oracle does more work under those caps (plan, round trip, prune, train-mode run,
exactness checks) than Torch-Pruning's prune; Torch-Pruning gets batch 1 (eval only), we get
batch 2 (the oracle's train-mode run needs it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import multiprocessing
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import check_oracle, first_tensor  # noqa: E402

CNN_FAMILIES = (
    "resnet", "resnext", "wide_resnet", "mobilenet", "densenet", "googlenet", "inception", "shufflenet",
    "squeezenet", "efficientnet", "regnet", "convnext", "mnasnet", "vgg", "alexnet",
)  # fmt: skip
TIMM_CNNS = (
    "resnet18", "resnet26d", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002",
    "ghostnet_100", "rexnet_100", "mixnet_s", "dla34", "cspresnet50", "densenet121", "dpn68", "hrnet_w18_small",
    "resnest14d", "selecsls42b", "tinynet_a", "lcnet_050", "repvgg_a0", "res2net50_14w_8s",
)  # fmt: skip

Case = tuple[str, str, tuple[int, ...]]  # (source, model name, input shape)
TRANSFORMERS_MARK = "<!-- transformers: benchmarks/transformers_coverage.py -->"


def cases(only: set[str]) -> Iterator[Case]:
    import torchvision

    tvm = torchvision.models
    if "classification" in only:
        for name in tvm.list_models(module=tvm):
            if name.startswith(CNN_FAMILIES):
                size = 299 if name == "inception_v3" else 64
                yield "torchvision", name, (2, 3, size, size)
    if "segmentation" in only:
        for name in tvm.list_models(module=tvm.segmentation):
            yield "segmentation", name, (2, 3, 64, 64)
    if "video" in only:
        for name in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d"):
            yield "video", name, (2, 3, 16, 224, 224) if name == "s3d" else (2, 3, 8, 32, 32)
    if "timm" in only:
        for name in TIMM_CNNS:
            yield "timm", name, (2, 3, 64, 64)


def build(source: str, name: str) -> nn.Module:
    """A randomly initialised model (no download)."""
    import torchvision

    tvm = torchvision.models
    torch.manual_seed(0)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    kw: dict[str, object] = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if source == "segmentation":
        kw = {"weights_backbone": None} | ({} if "lraspp" in name else {"aux_loss": True})
    return tvm.get_model(name, weights=None, **kw)


def _torch_pruning(model: nn.Module, x: torch.Tensor) -> str:
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        classes = first_tensor(model(x)).shape[1]
    head = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))
        and getattr(m, "out_features", getattr(m, "out_channels", 0)) == classes
    ]
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=head
    )
    pruner.step()
    with torch.no_grad():
        model(x)
    return "ok"


def _oracle(model: nn.Module, x: torch.Tensor) -> str:
    try:
        result = check_oracle(model, x, Path(tempfile.mkdtemp()))
    except Exception as e:  # noqa: BLE001 - every failure is reported
        traceback.print_exc(limit=2)
        return f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    return f"pass ({result.report.params_ratio:.0%} params kept)"


def _child(tool: str, source: str, name: str, shape: tuple[int, ...], memory_gb: int, threads: int) -> str:
    """One tool on one model, in a fresh process, under the caps shared by both tools."""
    limit = memory_gb * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(threads)
    try:
        model = build(source, name)
        if tool == "ours":
            return _oracle(model, torch.randn(*shape))
        return _torch_pruning(model, torch.randn(1, *shape[1:]))
    except BaseException as e:  # noqa: BLE001
        return f"crash ({type(e).__name__})"


def _isolated(tool: str, source: str, name: str, shape: tuple[int, ...], caps: argparse.Namespace) -> str:
    """``tool`` ("ours" or "torch_pruning") in a fresh spawned process with time, memory and
    thread limits (either can hang or grow without bound on some graphs)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_child, tool, source, name, shape, caps.memory_gb, caps.threads)
        try:
            out = future.result(timeout=caps.seconds)
        except concurrent.futures.TimeoutError:
            for proc in pool._processes.values():  # a hung child must not keep the pool open
                proc.kill()
            out = f"timeout (> {caps.seconds} s)"
        except concurrent.futures.process.BrokenProcessPool:
            out = "crash (killed: out of memory?)"
    if tool == "ours" and not out.startswith(("pass", "FAIL")):
        out = f"FAIL {out}"
    return out


def _torch_pruning_isolated(source: str, name: str, shape: tuple[int, ...], seconds: int = 180) -> str:
    """Torch-Pruning alone under the default caps (kept for callers of the old helper)."""
    return _isolated("torch_pruning", source, name, shape, argparse.Namespace(seconds=seconds, memory_gb=8, threads=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    ap.add_argument("--only", default="classification,segmentation,video,timm")
    ap.add_argument("--models", default="", help="comma-separated names: only these (for a quick check)")
    ap.add_argument("--seconds", type=int, default=180, help="wall-clock limit per model and tool")
    ap.add_argument("--memory-gb", type=int, default=8, help="RLIMIT_AS per model and tool")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per model and tool")
    args = ap.parse_args()
    picked = set(filter(None, args.models.split(",")))
    rows, ours, theirs = [], 0, 0
    for family, name, shape in cases(set(args.only.split(","))):
        if picked and name not in picked:
            continue
        t0 = time.perf_counter()
        mine = _isolated("ours", family, name, shape, args)
        ours += mine.startswith("pass")
        other = _isolated("torch_pruning", family, name, shape, args)
        theirs += other == "ok"
        rows.append(f"| {family} | {name} | {mine} | {other} |")
        print(rows[-1], f"{time.perf_counter() - t0:.1f}s", flush=True)
    total = len(rows)
    text = [
        "# Coverage",
        "",
        "Generated by `python benchmarks/coverage.py`. Oracle: plan, JSON round trip, `check`, prune at",
        "ratio 0.5, run in eval and train mode, exact agreement of masked dense and pruned models on the",
        "zero-invariant groups. Torch-Pruning 1.6: `MetaPruner(pruning_ratio=0.5)`, classifier ignored.",
        f"Both run each model in a fresh spawned process under the same caps: {args.seconds} s wall clock,",
        f"{args.memory_gb} GB address space (`RLIMIT_AS`), {args.threads} torch threads.",
        "",
        f"**sparsekit-graph passes the oracle on {ours}/{total}; Torch-Pruning prunes {theirs}/{total} without crashing.**",
        "",
        "| source | model | sparsekit-graph oracle | Torch-Pruning |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    kept = args.out.read_text().partition(TRANSFORMERS_MARK)[1:] if args.out.exists() else ("", "")
    args.out.write_text("\n".join(text) + "".join(kept))  # the transformers section has its own script
    print(f"\n{ours}/{total} pass; Torch-Pruning {theirs}/{total}; wrote {args.out}")


if __name__ == "__main__":
    main()
