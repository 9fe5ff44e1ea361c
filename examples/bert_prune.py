"""Prune a small BERT classifier: heads, MLP channels and the hidden size at 0.5, then reload it.

BERT's config derives the head size as ``hidden_size / num_attention_heads``: pruning heads
alone leaves a model no BERT config describes (``report.reloadable`` is False; ``save_pruned``
still saves and reloads it), while pruning heads and the hidden size at one ratio keeps the
head size and ``from_pretrained`` rebuilds the pruned model exactly.

    python examples/bert_prune.py
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch
import transformers

import sparsekit_graph as skg


def main() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        max_position_embeddings=128, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0  # padding in the second sequence
    inputs = {"input_ids": ids, "attention_mask": mask}

    t0 = time.perf_counter()
    plan = skg.plan(model, inputs)
    print(f"planned in {time.perf_counter() - t0:.2f}s: {len(plan.groups)} groups, {len(plan.prunable)} prunable")
    for g in plan.groups:
        state = "prunable" if g.prunable else f"pinned: {g.reason}"
        print(f"  {g.name:52s} {g.size:4d} {'zero-invariant' if g.zero_invariant else '':15s} {state}")

    # Heads only: runs, but BERT's config cannot express 4 heads of 16 in a hidden size of 128.
    heads = {g.name for g in plan.prunable if any(m.block > 1 for m in g.members)}
    only_heads = plan.model_copy(
        update={"groups": [g if g.name in heads or not g.prunable else g.model_copy(update={"ratio": 0.0}) for g in plan.groups]}
    )
    r = skg.prune(model, only_heads, ratio=0.5)
    print(f"heads only: parameters {r.report.params_ratio:.1%}, reloadable with from_pretrained: {r.report.reloadable}")
    with tempfile.TemporaryDirectory() as d:
        skg.save_pruned(r, d)
        again = skg.load_pruned(transformers.BertForSequenceClassification(config).eval(), d)
        with torch.no_grad():
            print("  save_pruned -> load_pruned identical:", torch.equal(r.model(**inputs).logits, again(**inputs).logits))

    # Everything at 0.5: the config describes the result.
    result = skg.prune(model, plan, ratio=0.5)
    rep = result.report
    print(f"all groups: parameters {rep.params_before:,} -> {rep.params_after:,} ({rep.params_ratio:.1%}),",
          f"MACs {rep.macs_ratio:.1%}, reloadable: {rep.reloadable}")  # fmt: skip
    c = result.model.config
    print(f"  config: hidden {c.hidden_size}, heads {c.num_attention_heads}, intermediate {c.intermediate_size}")
    with tempfile.TemporaryDirectory() as d:
        result.model.save_pretrained(d)
        again = transformers.BertForSequenceClassification.from_pretrained(d).eval()
    with torch.no_grad():
        same = torch.equal(result.model(**inputs).logits, again(**inputs).logits)
    print("  save_pretrained -> from_pretrained identical:", same)

    # Exactness of the zero-invariant groups (heads and MLP channels).
    masks = {g.name: torch.rand(g.size) < 0.5 for g in plan.prunable if g.zero_invariant}
    for m in masks.values():
        m[0] = False
    dense = copy.deepcopy(model)
    for name, coupling in skg.bind(plan, dense).items():
        if name in masks:
            coupling.apply_mask(masks[name])
    pruned = skg.prune(model, plan, masks=masks).model
    with torch.no_grad():
        a, b = dense(**inputs).logits, pruned(**inputs).logits
    print(f"exactness: max |masked dense - pruned| = {(a - b).abs().max():.2e} (logit scale {a.abs().max():.2e})")


if __name__ == "__main__":
    main()
