"""Prune half the attention heads (KV groups) and MLP channels of a small Llama, then reload it.

Shows: the plan (heads with GQA, MLP, hidden), parameters before/after, exactness of the
zero-invariant groups (masked dense == pruned), ``save_pretrained`` -> ``from_pretrained`` with
identical outputs, ``generate`` before and after, and planning LLaMA-2-7B / Llama-3-8B on meta.

    python examples/llama_prune.py [--skip-meta]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
import transformers

import sparsekit_graph as skg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-meta", action="store_true", help="Do not plan the 7B/8B configs on meta.")
    args = ap.parse_args()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    t0 = time.perf_counter()
    plan = skg.plan(model, inputs)
    print(f"planned in {time.perf_counter() - t0:.2f}s: {len(plan.groups)} groups, {len(plan.prunable)} prunable")
    heads = plan.group("model.layers.0.self_attn.q_proj:out")
    print(f"layer 0 heads: {heads.size} KV groups of {config.num_attention_heads // config.num_key_value_heads} query heads,",
          f"members {[(m.param.split('.')[-2], m.block) for m in heads.members]}, counted by",
          [f"{r.owner}.{r.attr}" for r in heads.sizes])  # fmt: skip

    # Heads and MLP channels at 0.5; the hidden size is kept (ignore= would pin it in the plan).
    hidden = next(g for g in plan.prunable if any(m.param == "model.embed_tokens.weight" for m in g.members))
    groups = [g.model_copy(update={"ratio": 0.0}) if g is hidden else g for g in plan.groups]
    keep_hidden = plan.model_copy(update={"groups": groups})
    result = skg.prune(model, keep_hidden, ratio=0.5)
    r = result.report
    print(f"parameters {r.params_before:,} -> {r.params_after:,} ({r.params_ratio:.1%}); reloadable: {r.reloadable}")
    c = result.model.config
    print(f"config: heads {c.num_attention_heads}, kv heads {c.num_key_value_heads}, head_dim {c.head_dim},",
          f"intermediate {c.intermediate_size}, hidden {c.hidden_size}")  # fmt: skip

    # Exactness on the zero-invariant groups (heads, MLP): masked dense == pruned.
    masks = {g.name: torch.rand(g.size) < 0.5 for g in plan.prunable if g.zero_invariant}
    for m in masks.values():
        m[0] = False  # every group keeps a channel
    dense = copy.deepcopy(model)
    for name, coupling in skg.bind(plan, dense).items():
        if name in masks:
            coupling.apply_mask(masks[name])
    pruned = skg.prune(model, plan, masks=masks).model
    with torch.no_grad():
        a, b = dense(**inputs).logits, pruned(**inputs).logits
    print(f"exactness: max |masked dense - pruned| = {(a - b).abs().max():.2e} (logit scale {a.abs().max():.2e})")

    with tempfile.TemporaryDirectory() as d:
        result.model.save_pretrained(d)
        again = transformers.LlamaForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        same = torch.equal(result.model(**inputs).logits, again(**inputs).logits)
    print(f"save_pretrained -> from_pretrained: identical outputs: {same}")
    prompt = ids[:1, :6]
    for label, m in (("before", model), ("after", result.model)):
        out = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0)
        print(f"generate {label}: {out[0, 6:].tolist()}")

    if not args.skip_meta:
        for name, sizes in (
            ("LLaMA-2-7B", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32)),
            ("Llama-3-8B", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8)),
        ):  # fmt: skip
            with torch.device("meta"):
                big = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))
            x = torch.zeros(2, 16, dtype=torch.long, device="meta")
            t0 = time.perf_counter()
            p = skg.plan(big, {"input_ids": x})
            print(f"{name} on meta: planned in {time.perf_counter() - t0:.1f}s, {len(p.prunable)} prunable groups, no weights")


if __name__ == "__main__":
    main()
