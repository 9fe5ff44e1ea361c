"""Plan LLaMA-2-7B-, Llama-3-8B-, Llama-3-70B- and Mixtral-8x7B-sized models on the meta
device: time and peak RSS.

Each config runs in its own process (peak RSS is per process), built from a config under
``torch.device("meta")``: no weights exist anywhere. Prints one line per config and checks
that every layer has a prunable head group and a prunable MLP group (for Mixtral: whole
experts and per-expert widths). Bars: 7B/8B < 20 s and < 3 GB; 70B and 8x7B < 60 s and < 4 GB.

    python benchmarks/plan_llm_meta.py [--configs llama2-7b llama3-8b llama3-70b mixtral-8x7b] [--seq 16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

CONFIGS = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0),
    "llama3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0),
    "mixtral-8x7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6),
}  # fmt: skip
BARS = {"llama2-7b": (20, 3), "llama3-8b": (20, 3), "llama3-70b": (60, 4), "mixtral-8x7b": (60, 4)}  # seconds, GB


def _run(name: str, seq: int, out: mp.Queue) -> None:
    import torch
    import transformers

    import sparsekit_graph as skg

    family = "Mixtral" if name.startswith("mixtral") else "Llama"
    cfg = getattr(transformers, f"{family}Config")(**CONFIGS[name])
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = getattr(transformers, f"{family}ForCausalLM")(cfg)
    built = time.perf_counter() - t0
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    t0 = time.perf_counter()
    plan = skg.plan(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    seconds = time.perf_counter() - t0
    layers = cfg.num_hidden_layers
    heads = _layers_with(plan, "q_proj.weight")
    mlp = _layers_with(plan, "gate_proj.weight") | _layers_with(plan, "experts.gate_up_proj", fixed=True)
    experts = _layers_with(plan, "mlp.gate.weight")
    kv = next(g.size for g in plan.prunable if any(m.param.endswith("layers.0.self_attn.k_proj.weight") for m in g.members))
    params = sum(p.numel() for p in model.parameters())
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.put(dict(config=name, params_b=params / 1e9, build_s=built, plan_s=seconds, peak_rss_gb=rss_gb,
                 groups=len(plan.groups), prunable=len(plan.prunable), layers_with_heads=len(heads),
                 layers_with_mlp=len(mlp), layers_with_experts=len(experts), ties=len(plan.ties), layers=layers,
                 kv_groups_per_layer=kv))  # fmt: skip


def _layers_with(plan: object, suffix: str, fixed: bool = False) -> set[str]:
    """Layers with a prunable group that owns rows of ``model.layers.<i>....<suffix>`` (of
    one expert's slab when ``fixed``)."""
    axis = 1 if fixed else 0
    return {
        m.param.split(".")[2]
        for g in plan.prunable  # type: ignore[attr-defined]
        for m in g.members
        if m.param.endswith(suffix) and m.axis == axis and bool(m.fix) == fixed
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seq", type=int, default=16)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    ok = True
    for name in args.configs:
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_run, args=(name, args.seq, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(json.dumps({"config": name, "error": f"exit code {p.exitcode}"}))
            ok = False
            continue
        r = q.get()
        every_layer = r["layers_with_heads"] == r["layers_with_mlp"] == r["layers"]
        seconds, gb = BARS[name]
        r["meets_bar"] = r["plan_s"] < seconds and r["peak_rss_gb"] < gb and every_layer
        ok &= r["meets_bar"]
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
