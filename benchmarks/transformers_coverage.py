"""Transformer coverage, side by side with Torch-Pruning, as markdown (docs/coverage.md's
transformers table).

    python benchmarks/transformers_coverage.py [--models vit_b_16,phi3] [--seconds 300] [--threads 2]

Models: torchvision ``vit_b_16``, ``swin_t``, ``maxvit_t`` and timm ``vit_tiny_patch16_224``,
``deit_tiny_patch16_224``, ``swin_tiny_patch4_window7_224`` at full size (224x224, batch 2 for
us, whose oracle runs the train forward; batch 1 for Torch-Pruning), and the small Hugging Face
configs of ``sparsekit_graph.zoo.hf_model`` (``hf:phi3`` ...; random weights, no download).

Per model and tool, each in a fresh spawned process under the same caps (``--seconds`` wall
clock, ``--memory-gb`` address space, ``--threads`` torch threads):

- ``ours``: the DESIGN.md oracle (``tests/helpers.check_oracle``: plan, JSON round trip,
  ``check``, prune at 0.5, eval and train runs, exactness of zero-invariant groups on random
  masks, the input model untouched), the parameters kept, whether every attention layer has a
  prunable head group, and for HF models ``report.reloadable`` and a
  ``save_pretrained``/``from_pretrained`` round trip with identical outputs.
- ``tp``: Torch-Pruning 1.6 out of the box: ``MetaPruner(model, x,
  GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[classifier / lm_head])``,
  ``step()``, then a forward on the example input.
- ``tp+heads``: the same with the head counts handed over as its examples do
  (``num_heads={q, k, v or fused qkv Linear: its layer's head count}``, ``prune_num_heads=True``,
  ``head_pruning_ratio=0.5``); torchvision's ``nn.MultiheadAttention`` is handled by TP itself.
  For HF models, whether ``save_pretrained``/``from_pretrained`` reproduces its outputs (TP
  patches no config).

Both tools get their own default importance; the comparison is of what each can prune and keep
runnable, not of accuracy. Our oracle does more work under the caps than TP's prune.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import call, check_oracle, first_tensor  # noqa: E402

VISION = [
    ("torchvision", "vit_b_16"), ("torchvision", "swin_t"), ("torchvision", "maxvit_t"),
    ("timm", "vit_tiny_patch16_224"), ("timm", "deit_tiny_patch16_224"), ("timm", "swin_tiny_patch4_window7_224"),
]  # fmt: skip
HF = ["t5_encoder", "t5", "opt", "phi3", "gpt_neox", "falcon", "gemma", "clip_vision", "distilbert", "roberta", "swin"]
# Attributes holding a layer's head count, for Torch-Pruning's num_heads.
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_attention_heads_per_partition")


def build(source: str, name: str, batch: int) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval(), torch.randn(batch, 3, 224, 224)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval(), torch.randn(batch, 3, 224, 224)
    from sparsekit_graph.zoo import hf_model

    return hf_model(name, batch=batch)


def _attention_layers(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        or (type(m).__name__.endswith("Attention") and any(isinstance(c, nn.Linear) for c in m.children()))
    ]


def ours(source: str, name: str) -> str:
    model, x = build(source, name, 2)
    d = Path(tempfile.mkdtemp())
    try:
        result = check_oracle(model, x, d, equal_counts=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        traceback.print_exc(limit=2)
        return f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}"
    layers = _attention_layers(model)
    heads = {
        la for la in layers for g in result.plan.prunable if any(m.param.startswith(la + ".") and m.block > 1 for m in g.members)
    }
    cell = f"pass, {result.report.params_ratio:.0%} kept, heads {len(heads)}/{len(layers)}"
    if source == "hf":
        cell += ", " + _reload(model, result.model.eval(), x, result.report.reloadable, d)
    return cell


def _reload(model: nn.Module, small: nn.Module, x: Any, claimed: bool | None, d: Path) -> str:
    """``from_pretrained`` of the saved pruned model: identical outputs?"""
    try:
        small.save_pretrained(d / "hf")
        again = type(model).from_pretrained(d / "hf", attn_implementation=small.config._attn_implementation).eval()
        with torch.no_grad():
            same = torch.equal(first_tensor(call(small, x)), first_tensor(call(again, x)))
    except Exception as e:  # noqa: BLE001
        same, claimed = False, f"{claimed}: {type(e).__name__}"
    return f"reloads {'yes' if same else 'no'} (claimed {claimed})"


def tp(source: str, name: str, heads: bool) -> str:
    import torch_pruning as tp_

    model, x = build(source, name, 1)
    with torch.no_grad():
        out = first_tensor(call(model, x))
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out.shape[-1]]
    kw: dict[str, Any] = {}
    if heads:
        counts = {}
        for m in model.modules():
            n = next((getattr(m, a) for a in _HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
            if n is not None and not isinstance(m, nn.MultiheadAttention):
                for c in m.children():
                    if isinstance(c, nn.Linear) and c.out_features % n == 0 and c.out_features >= c.in_features:
                        counts[c] = n  # q, k, v (or fused qkv): rows split into heads
        kw = dict(num_heads=counts, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    before = sum(p.numel() for p in model.parameters())
    inputs = x if isinstance(x, torch.Tensor) else dict(x)
    pruner = tp_.pruner.MetaPruner(
        model, inputs, importance=tp_.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=head, output_transform=first_tensor, **kw,
    )  # fmt: skip
    pruner.step()
    with torch.no_grad():
        small_out = first_tensor(call(model, x))
    kept = sum(p.numel() for p in model.parameters()) / before
    cell = f"runs, {kept:.0%} kept" if small_out.shape == out.shape else f"output shape {tuple(small_out.shape)}"
    if source == "hf" and heads:
        d = Path(tempfile.mkdtemp())
        try:
            model.save_pretrained(d)
            again = type(model).from_pretrained(d).eval()
            with torch.no_grad():
                same = torch.equal(small_out, first_tensor(call(again, x)))
        except Exception:  # noqa: BLE001
            same = False
        cell += f", reloads {'yes' if same else 'no'}"
    return cell


def _child(tool: str, source: str, name: str, memory_gb: int, threads: int) -> str:
    limit = memory_gb * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(threads)
    try:
        if tool == "ours":
            return ours(source, name)
        return tp(source, name, heads=tool == "tp+heads")
    except BaseException as e:  # noqa: BLE001
        return f"crash ({type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''})"


def isolated(tool: str, source: str, name: str, caps: argparse.Namespace) -> str:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_child, tool, source, name, caps.memory_gb, caps.threads)
        try:
            return future.result(timeout=caps.seconds)
        except concurrent.futures.TimeoutError:
            for proc in pool._processes.values():
                proc.kill()
            return f"timeout (> {caps.seconds} s)"
        except concurrent.futures.process.BrokenProcessPool:
            return "crash (killed: out of memory?)"


MARK = "<!-- transformers: benchmarks/transformers_coverage.py -->"
HEADER = [
    "| source | model | sparsekit-graph | Torch-Pruning | Torch-Pruning + num_heads |",
    "|---|---|---|---|---|",
]


def section(rows: list[str], caps: argparse.Namespace) -> str:
    """docs/coverage.md's transformers section around ``rows``."""
    ours = sum("| pass" in r for r in rows)
    tp = sum(r.split(" | ")[3].startswith("runs") for r in rows)
    tph = sum(r.split(" | ")[4].startswith("runs") for r in rows)
    return "\n".join(
        [
            MARK,
            "",
            "## Transformers",
            "",
            "Generated by `python benchmarks/transformers_coverage.py --out docs/coverage.md` (see its docstring).",
            "torchvision and timm models at full size (224x224), Hugging Face families from the small configs",
            "of `sparsekit_graph.zoo.hf_model` (`hf:phi3`, ...; 2 layers, hidden 64, 4 heads). Each tool runs each",
            f"model in a fresh process under the same caps: {caps.seconds} s, {caps.memory_gb} GB address space,",
            f"{caps.threads} torch threads. Ours: the DESIGN.md oracle, parameters kept at 0.5, attention layers",
            "with a prunable head group, and for Hugging Face models `save_pretrained` -> `from_pretrained` with",
            "identical outputs (and what `report.reloadable` claimed). Torch-Pruning 1.6: `MetaPruner` at 0.5 out",
            "of the box, then with `num_heads` handed over per q/k/v layer (`prune_num_heads=True`); whether",
            "its model runs on the example input and the parameters it keeps; for Hugging Face models",
            "whether `from_pretrained` reproduces it (it rewrites no config). A timeout depends on the load of",
            "the machine it ran on; rows from several runs (`--rows`) were each measured under the caps above.",
            "",
            f"**sparsekit-graph passes the oracle on {ours}/{len(rows)}; Torch-Pruning leaves a running model on"
            f" {tp}/{len(rows)} out of the box and {tph}/{len(rows)} with hand-given head counts.**",
            "",
            *HEADER,
            *rows,
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated names: only these")
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--memory-gb", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="replace the transformers section of this markdown file")
    ap.add_argument("--rows", type=Path, nargs="*", default=[], help="rows printed by earlier runs (no run)")
    args = ap.parse_args()
    picked = set(filter(None, args.models.split(",")))
    rows = [r for f in args.rows for r in f.read_text().splitlines() if r.startswith("| ") and r not in HEADER]
    if not args.rows:
        print("\n".join(HEADER))
        for source, name in [*VISION, *(("hf", n) for n in HF)]:
            if picked and name not in picked:
                continue
            t0 = time.perf_counter()
            cells = [isolated(tool, source, name, args) for tool in ("ours", "tp", "tp+heads")]
            rows.append(f"| {source} | {name} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
            print(f"<!-- {time.perf_counter() - t0:.0f} s -->", file=sys.stderr, flush=True)
    if args.out is not None:
        before = args.out.read_text().partition(MARK)[0] if args.out.exists() else ""
        args.out.write_text(before.rstrip("\n") + "\n\n" + section(rows, args))


if __name__ == "__main__":
    main()
