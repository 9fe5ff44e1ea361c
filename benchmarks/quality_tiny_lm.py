"""Pruning quality of a tiny causal LM on a real corpus: importance criteria side by side with
Torch-Pruning, perplexity one-shot and after a short recovery fine-tune.

    python benchmarks/quality_tiny_lm.py              # 3 seeds, 20% and 50% of heads and MLP channels
    python benchmarks/quality_tiny_lm.py --quick      # CI smoke run: 1 seed, a few steps

Corpus: the Python standard library's own top-level ``*.py`` files, as bytes (vocabulary 256),
which every Python install ships. Files are split by a hash of their name: ~10% held out for
evaluation, the rest for training (and calibration). Perplexity = exp(mean next-byte cross
entropy) over fixed non-overlapping windows of the held-out files.

Model: ``transformers.LlamaForCausalLM`` from a config (random init, no download): 2 layers,
hidden 160, 10 heads of 16 (no GQA), MLP 480, sequence 128; each seed trains it for
``--train-steps`` Adam steps (batch 16 x 128 bytes).

Pruning removes ``r`` of every layer's heads and MLP channels (the residual width is kept):

- ours: ``skg.plan`` with the residual group's ``ratio`` set to 0, ``skg.prune(ratio=r,
  importance=...)`` for ``l2``, ``taylor`` and ``activation`` (data criteria calibrated on
  ``--calib-batches`` training batches, next-byte cross entropy as ``loss_fn``).
- Torch-Pruning: ``tp.pruner.MetaPruner`` with ``num_heads`` (each q/k/v projection's head
  count), ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=r``,
  ``pruning_ratio=r``, the residual stream kept by ignoring ``o_proj``, ``down_proj`` and
  ``lm_head`` as roots; ``GroupMagnitudeImportance(p=2)`` (``tp-l2``) and
  ``GroupTaylorImportance`` (``tp-taylor``, gradients accumulated on the same calibration
  batches).

Every method gets the same recovery fine-tune (``--ft-steps`` Adam steps, lr 5e-4, the same
batches). Parameters kept are checked equal across methods. Output: one JSON line per run, then
a markdown table of perplexity mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import sysconfig
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg

SEQ = 128
BATCH = 16


def corpus() -> tuple[Tensor, Tensor]:
    """(train bytes, held-out bytes) from the standard library's top-level sources."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, held = [], []
    for f in files:
        data = f.read_bytes() + b"\n\n"
        (held if zlib.crc32(f.name.encode()) % 10 == 0 else train).append(data)
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()  # noqa: E731
    return as_tensor(train), as_tensor(held)


def make_model(seed: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=160, intermediate_size=480, num_hidden_layers=2, num_attention_heads=10,
        num_key_value_heads=10, max_position_embeddings=SEQ, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def lm_loss(out: object, ids: Tensor) -> Tensor:
    logits = out.logits  # type: ignore[attr-defined]  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def batches(data: Tensor, n: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - SEQ - 1, (n, BATCH), generator=gen)
    return [torch.stack([data[s : s + SEQ] for s in row.tolist()]) for row in starts]


def eval_windows(held: Tensor, n: int) -> Tensor:
    usable = min(n, len(held) // SEQ)
    return held[: usable * SEQ].reshape(usable, SEQ)


def train(model: nn.Module, data: list[Tensor], lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(len(data), 1), pct_start=0.1)
    model.train()
    for ids in data:
        opt.zero_grad(set_to_none=True)
        lm_loss(model(input_ids=ids), ids).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor) -> float:
    model.eval()
    losses = [float(lm_loss(model(input_ids=w), w)) for w in windows.split(32)]
    return float(torch.tensor(losses).mean().exp())


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ours(model: nn.Module, ratio: float, importance: str, calib: list[Tensor]) -> nn.Module:
    plan = skg.plan(model, {"input_ids": calib[0][:2]})
    residual = {g.name for g in plan.groups if any(m.param == "model.embed_tokens.weight" for m in g.members)}
    groups = [g.model_copy(update={"ratio": 0.0}) if g.name in residual else g for g in plan.groups]
    plan = plan.model_copy(update={"groups": groups})
    pairs = [({"input_ids": ids}, ids) for ids in calib]
    return skg.prune(model, plan, ratio=ratio, importance=importance, calibration=pairs, loss_fn=lm_loss).model


def torch_pruning(model: nn.Module, ratio: float, importance: str, calib: list[Tensor]) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    layers = model.model.layers
    num_heads = {}
    for layer in layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            num_heads[proj] = model.config.num_attention_heads
    imp = tp.importance.GroupMagnitudeImportance(p=2) if importance == "l2" else tp.importance.GroupTaylorImportance()
    ignored = [model.lm_head, *(la.self_attn.o_proj for la in layers), *(la.mlp.down_proj for la in layers)]
    pruner = tp.pruner.MetaPruner(
        model, {"input_ids": calib[0][:2]}, importance=imp, pruning_ratio=ratio, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, ignored_layers=ignored,
        output_transform=lambda out: out.logits,
    )  # fmt: skip
    if importance == "taylor":
        model.zero_grad()
        for ids in calib:
            lm_loss(model(input_ids=ids), ids).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for layer in layers:  # TP's prune_llm.py patch: attention modules and config follow the new sizes
        layer.self_attn.num_heads = layer.self_attn.q_proj.out_features // layer.self_attn.head_dim
        layer.self_attn.num_key_value_heads = layer.self_attn.k_proj.out_features // layer.self_attn.head_dim
    model.config.num_attention_heads = layers[0].self_attn.num_heads
    model.config.num_key_value_heads = layers[0].self_attn.num_key_value_heads
    model.config.intermediate_size = layers[0].mlp.gate_proj.out_features
    return model


METHODS: dict[str, Callable[[nn.Module, float, list[Tensor]], nn.Module]] = {
    "l2": lambda m, r, c: ours(m, r, "l2", c),
    "taylor": lambda m, r, c: ours(m, r, "taylor", c),
    "activation": lambda m, r, c: ours(m, r, "activation", c),
}
TP_METHODS: dict[str, Callable[[nn.Module, float, list[Tensor]], nn.Module]] = {
    "tp-l2": lambda m, r, c: torch_pruning(m, r, "l2", c),
    "tp-taylor": lambda m, r, c: torch_pruning(m, r, "taylor", c),
}


def run_seed(seed: int, args: argparse.Namespace, emit: Callable[[dict], None], data: tuple[Tensor, Tensor]) -> None:
    train_bytes, held = data
    windows = eval_windows(held, args.eval_windows)
    model = make_model(seed)
    t0 = time.perf_counter()
    train(model, batches(train_bytes, args.train_steps, seed), args.lr)
    train_s = time.perf_counter() - t0
    dense_ppl = perplexity(model, windows)
    emit({"seed": seed, "method": "dense", "ratio": 0.0, "params": count(model), "one_shot": dense_ppl, "final": dense_ppl,
          "train_s": round(train_s, 1)})  # fmt: skip
    calib = batches(train_bytes, args.calib_batches, seed + 100)
    ft = batches(train_bytes, args.ft_steps, seed + 200)
    for ratio in args.ratios:
        for name, method in {**METHODS, **(TP_METHODS if args.tp else {})}.items():
            pruned = method(model, ratio, calib)
            one = perplexity(pruned, windows)
            train(pruned, ft, args.ft_lr)
            emit({"seed": seed, "method": name, "ratio": ratio, "params": count(pruned), "one_shot": one,
                  "final": perplexity(pruned, windows)})  # fmt: skip


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def table(rows: list[dict]) -> str:
    dense = next(r["params"] for r in rows if r["method"] == "dense")
    out = ["| removed | method | params kept | ppl one-shot | ppl fine-tuned |", "|---|---|---|---|---|"]
    for ratio in sorted({r["ratio"] for r in rows}):
        for method in ("dense", *METHODS, *TP_METHODS):
            rs = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
            if rs:
                kept = ", ".join(f"{p:,} ({100 * p / dense:.1f}%)" for p in sorted({r["params"] for r in rs}))
                out.append(f"| {ratio:.2g} | {method} | {kept} | {_ms([r['one_shot'] for r in rs])} | "
                           f"{_ms([r['final'] for r in rs])} |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ft-steps", type=int, default=30)
    p.add_argument("--ft-lr", type=float, default=5e-4)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Run only this seed (seeds in parallel processes; merge their --json files with --report).",
    )
    p.add_argument("--tp", action="store_true", help="Also run Torch-Pruning (slow to build its groups here, see docs).")
    p.add_argument("--quick", action="store_true", help="1 seed, 20 training steps (CI smoke run)")
    p.add_argument("--json", type=Path, default=None, help="Write the runs here (one JSON object per line).")
    p.add_argument("--report", type=Path, default=None, help="Only print the table (and plot) of a saved run's JSON lines.")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.train_steps, args.ft_steps, args.calib_batches, args.eval_windows = 1, 20, 2, 2, 32
    if args.report:
        rows = [json.loads(line) for line in args.report.read_text().splitlines() if line.startswith("{")]
        print(f"{len({r['seed'] for r in rows})} seeds\n\n{table(rows)}")
        return 0
    torch.set_num_threads(args.threads)
    data = corpus()
    print(f"corpus: {len(data[0]):,} training bytes, {len(data[1]):,} held-out bytes", flush=True)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    t0 = time.perf_counter()
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    for seed in seeds:
        run_seed(seed, args, emit, data)
    print(f"\n{len(seeds)} seeds in {time.perf_counter() - t0:.0f}s (torch threads {args.threads})\n")
    print(table(rows))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
