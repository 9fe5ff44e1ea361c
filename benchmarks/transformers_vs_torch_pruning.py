"""Hugging Face transformers: our plan/prune side by side with Torch-Pruning, in one process.

    python benchmarks/transformers_vs_torch_pruning.py                  # small zoo configs
    python benchmarks/transformers_vs_torch_pruning.py --big            # + a 512-wide, 8-layer Llama
    python benchmarks/transformers_vs_torch_pruning.py --models llama,bert --repeats 5 --threads 2

Models: the small configs of ``sparsekit_graph.zoo.hf_model`` (random weights, batch 2, 8 tokens
with a left-padded row): ``llama`` (GQA, 4 query / 2 key-value heads, sdpa), ``llama-eager`` (the
same with eager attention), ``qwen2``, ``bert`` (sequence classification), ``gpt2``, ``vit``;
``--big`` adds ``llama-big`` (hidden 512, 8 layers, 8 heads, 2 kv heads, intermediate 1376,
vocab 2048).

Rows per model:

- ``ours``: ``skg.plan(model, inputs)``, then ``skg.prune(model, plan, ratio=0.5)`` (defaults:
  every prunable group at 0.5 - heads, MLP channels and the hidden size).
- ``torch-pruning``: Torch-Pruning's documented recipe for HF transformers
  (``examples/LLMs/prune_llm.py`` for decoders, ``examples/transformers/prune_hf_bert.py`` /
  ``prune_hf_vit.py`` for encoders): ``tp.pruner.MetaPruner(model, inputs,
  importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
  num_heads={q/k/v projection: its head count, per layer}, prune_num_heads=True,
  prune_head_dims=False, head_pruning_ratio=0.5, ignored_layers=[lm_head or classifier],
  output_transform=lambda out: out.logits)``, then ``pruner.step()``. The row reports the model
  exactly as TP leaves it: no module attribute and no config patched ("by default"). The note
  and the JSON also report the model after the post-pruning patch TP's own example applies
  (decoders: ``prune_llm.py`` sets ``config.hidden_size / num_attention_heads /
  intermediate_size`` and the attention modules' head counts; encoders: ``prune_hf_bert.py``
  sets ``num_attention_heads / attention_head_size / all_head_size`` of each self-attention,
  not the config; GPT-2 has no TP example, so nothing).
- ``tp-no-heads``: the same without ``num_heads`` / head pruning (what happens when the user
  does not hand TP the per-layer head counts).

Timing ("plan s"; medians of ``--repeats`` rounds after one warm-up round whose figures are
reported as ``first_s`` in the JSON): ours is ``skg.plan`` (a symbolic trace and a meta-device
shape pass; it never runs the model); TP is ``tp.DependencyGraph().build_dependency(model,
example_inputs=inputs, output_transform=...)``, which runs a real forward with autograd and walks
the autograd graph - its analysis of the same inputs. Every timed call gets a fresh
``copy.deepcopy`` of the model (copy and ``gc.collect()`` untimed); the calls of a round are
interleaved (ours, TP, ours, TP, ...) under the same ``torch.set_num_threads``. For these tiny
configs the forward TP runs is cheap, so the comparison is mostly graph analysis against graph
analysis; on real checkpoints TP's forward grows with the model and the input, ours does not
(``benchmarks/plan_llm_meta.py`` plans 7B/8B configs on ``meta``, which TP cannot do).

Every call of either tool (plan, DependencyGraph build, MetaPruner + step, prune, each check)
runs under the same wall-clock cap, ``--timeout`` (default 30 s, SIGALRM): a call past it is
reported as ``CallTimeout``, a failed call is not repeated.

Pruning is done once per row on a fresh copy. Checks: parameters kept (``sum(p.numel())``,
tied weights counted once), the pruned model runs on the example inputs with the same output
shape, ``save_pretrained`` -> ``type(model).from_pretrained(dir, attn_implementation=...)`` gives
``torch.equal`` logits (ours: also ``report.reloadable``), ``generate()`` for causal LMs
(greedy, 4 new tokens). Any exception becomes the cell's value (its type and first line).

One JSON line per (model, tool), then a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import signal
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

import sparsekit_graph as skg
from sparsekit_graph.zoo import hf_model

MODELS = ["llama", "llama-eager", "qwen2", "bert", "gpt2", "vit"]
CAUSAL = {"llama", "llama-eager", "qwen2", "gpt2", "llama-big"}
BIG_LLAMA = dict(vocab_size=2048, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip


def _err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:160]


def _build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    torch.manual_seed(0)
    if name == "llama-big":
        config = transformers.LlamaConfig(**BIG_LLAMA, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config).eval()
        ids = torch.randint(0, config.vocab_size, (2, 16))
        mask = torch.ones_like(ids)
        mask[-1, :4] = 0
        return model, {"input_ids": ids, "attention_mask": mask}, "sdpa"
    arch, _, attn = name.partition("-")
    attn = attn or "sdpa"
    model, inputs = hf_model(arch, attention=attn)
    return model, inputs, attn


class CallTimeout(Exception):
    """A call ran past ``--timeout`` seconds (raised by SIGALRM in the main thread)."""


TIMEOUT = [120.0]


class _Deadline:
    """Interrupt the enclosed block after ``TIMEOUT[0]`` seconds of wall time (Unix, main thread);
    the same cap for every tool, so a peer that loops forever is a result, not a hang."""

    def __enter__(self) -> None:
        def _raise(*_: object) -> None:
            raise CallTimeout(f"no result after {TIMEOUT[0]:.0f} s (--timeout)")

        self._old = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT[0])

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _try(fn: Callable[[], Any]) -> Any:
    try:
        with _Deadline():
            return fn()
    except Exception as e:  # a failing peer (or a failure of ours) is a result
        return _err(e)


def _runs(model: nn.Module, inputs: dict[str, torch.Tensor], shape: torch.Size) -> bool | str:
    out = _logits(model, inputs)
    return True if out.shape == shape else f"output shape {tuple(out.shape)} != {tuple(shape)}"


def _reload(model: nn.Module, inputs: dict[str, torch.Tensor], attn: str) -> bool | str:
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        again = type(model).from_pretrained(d, attn_implementation=attn).eval()
    return torch.equal(_logits(model, inputs), _logits(again, inputs))


def _generate(model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool | str:
    prompt = inputs["input_ids"][:1, :6]
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                         pad_token_id=0)  # fmt: skip
    return True if out.shape == (1, 10) else f"generated shape {tuple(out.shape)}"


def _checks(model: nn.Module, name: str, inputs: dict[str, torch.Tensor], attn: str, shape: torch.Size) -> dict:
    runs = _try(lambda: _runs(model, inputs, shape))
    return {
        "runs": runs,
        "reloads_identical": _try(lambda: _reload(model, inputs, attn)),
        "generate": _try(lambda: _generate(model, inputs)) if name in CAUSAL else None,
    }


# --- Torch-Pruning ------------------------------------------------------------------------------


def _attn_projections(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
    """(attention module, its q/k/v projections) for every attention layer TP's examples know."""
    out = []
    for m in model.modules():
        if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj")):
            out.append((m, [m.q_proj, m.k_proj, m.v_proj]))
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")):
            out.append((m, [m.query, m.key, m.value]))
        elif hasattr(m, "c_attn") and hasattr(m, "c_proj") and hasattr(m, "num_heads"):  # GPT-2 fused qkv
            out.append((m, [m.c_attn]))
    return out


def _num_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Per-layer head counts, as TP's examples build them by hand (TP cannot infer them)."""
    c = model.config
    heads: dict[nn.Module, int] = {}
    for _, projs in _attn_projections(model):
        if len(projs) == 3:
            kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
            heads[projs[0]], heads[projs[1]], heads[projs[2]] = c.num_attention_heads, kv, kv
        else:
            heads[projs[0]] = c.num_attention_heads
    return heads


def _ignored(model: nn.Module) -> list[nn.Module]:
    head = getattr(model, "lm_head", None) or getattr(model, "classifier", None)
    return [head] if head is not None else []


def _tp_kwargs(model: nn.Module, with_heads: bool) -> dict[str, Any]:
    import torch_pruning as tp

    kwargs: dict[str, Any] = dict(
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=_ignored(model),
        output_transform=lambda out: out.logits,
    )
    if with_heads:
        kwargs.update(num_heads=_num_heads(model), prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    return kwargs


def _tp_build(model: nn.Module, inputs: dict[str, torch.Tensor]) -> object:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=inputs, output_transform=lambda out: out.logits)


def _tp_example_patch(model: nn.Module, pruner: Any) -> None:
    """The post-pruning patch of TP's own examples (decoders: prune_llm.py; BERT/ViT:
    prune_hf_bert.py / prune_hf_vit.py). Adapted to transformers 5 only where an attribute the
    example sets a derived value from no longer exists (``num_key_value_heads``: from the config)."""
    c = model.config
    lm_head = getattr(model, "lm_head", None)
    for m, _projs in _attn_projections(model):
        if hasattr(m, "q_proj") and lm_head is not None:  # prune_llm.py
            gqa = c.num_attention_heads != (getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            c.num_attention_heads = m.num_heads
            kv = getattr(m, "num_key_value_heads", c.num_key_value_heads)
            if not gqa:
                m.num_key_value_heads = kv = m.num_heads
            m.num_key_value_groups = m.num_heads // kv
        elif hasattr(m, "query"):  # prune_hf_bert.py / prune_hf_vit.py
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
    if lm_head is not None and hasattr(model, "model"):  # prune_llm.py
        c.hidden_size = lm_head.in_features
        for mod in model.modules():
            if hasattr(mod, "gate_proj"):
                mod.hidden_size = mod.gate_proj.in_features
                c.intermediate_size = mod.gate_proj.out_features
        if not gqa:
            c.num_key_value_heads = c.num_attention_heads


def _tp_row(model: nn.Module, name: str, inputs: dict, attn: str, shape: torch.Size, with_heads: bool) -> dict:
    import torch_pruning as tp

    row: dict[str, Any] = {"needs_num_heads_by_hand": with_heads}
    work = copy.deepcopy(model)
    before = _params(work)
    try:
        with _Deadline():
            t0 = time.perf_counter()
            pruner = tp.pruner.MetaPruner(work, inputs, **_tp_kwargs(work, with_heads))
            t1 = time.perf_counter()
            pruner.step()
            t2 = time.perf_counter()
    except Exception as e:
        row["error"] = _err(e)
        return row
    row.update(pruner_init_s=t1 - t0, prune_s=t2 - t1, params_kept=_params(work) / before)
    row.update(_checks(work, name, inputs, attn, shape))
    if with_heads:
        row["heads_per_layer_after"] = sorted({n for n in pruner.num_heads.values()})
        # in place: pruner.num_heads is keyed by the pruned modules themselves (a deepcopy would miss)
        err = _try(lambda: _tp_example_patch(work, pruner))
        row["example_patch"] = {"error": err} if isinstance(err, str) else _checks(work, name, inputs, attn, shape)
    return row


# --- ours ---------------------------------------------------------------------------------------


def _our_row(model: nn.Module, name: str, inputs: dict, attn: str, shape: torch.Size) -> dict:
    row: dict[str, Any] = {}
    try:
        with _Deadline():
            plan = skg.plan(copy.deepcopy(model), inputs)
            row["groups"], row["prunable"] = len(plan.groups), len(plan.prunable)
            t0 = time.perf_counter()
            result = skg.prune(model, plan, ratio=0.5)
            row["prune_s"] = time.perf_counter() - t0
    except Exception as e:
        row["error"] = _err(e)
        return row
    r = result.report
    row.update(params_kept=r.params_after / r.params_before, report_reloadable=r.reloadable)
    row["report_count_true"] = r.params_after == _params(result.model)
    row.update(_checks(result.model, name, inputs, attn, shape))
    c = result.model.config
    row["config_after"] = {k: getattr(c, k, None) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                             "intermediate_size", "n_embd", "n_head", "n_inner")}  # fmt: skip
    return row


# --- timing -------------------------------------------------------------------------------------


def _timed(make: Callable[[], nn.Module], fn: Callable[[nn.Module], object]) -> float | str:
    state = make()
    gc.collect()
    try:
        with _Deadline():
            t0 = time.perf_counter()
            fn(state)
            return time.perf_counter() - t0
    except Exception as e:
        return _err(e)


def _time_both(model: nn.Module, inputs: dict, repeats: int) -> dict[str, dict[str, Any]]:
    fns = {"ours": lambda m: skg.plan(m, inputs), "torch-pruning": lambda m: _tp_build(m, inputs)}
    runs: dict[str, list[float | str]] = {k: [] for k in fns}
    for _ in range(1 + repeats):  # round 0 is the warm-up
        for key, fn in fns.items():
            if not any(isinstance(t, str) for t in runs[key]):  # a call that failed is not repeated
                runs[key].append(_timed(lambda: copy.deepcopy(model), fn))
    out = {}
    for key, ts in runs.items():
        errors = [t for t in ts if isinstance(t, str)]
        out[key] = (
            {"plan_error": errors[0]}
            if errors
            else {"plan_s": statistics.median(ts[1:]), "first_s": ts[0], "plan_runs_s": [round(t, 4) for t in ts[1:]]}
        )
    return out


# --- table --------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "**no**"
    return f"**no**: {str(v).replace('|', '/')}"


def _note(tool: str, row: dict) -> str:
    notes = []
    if "plan_error" in row:
        notes.append(f"timing call failed: {row['plan_error']}")
    if tool == "ours":
        if "report_reloadable" in row:
            notes.append(f"report.reloadable={row['report_reloadable']}")
        if row.get("report_count_true") is False:
            notes.append("report param count != real")
    elif tool == "torch-pruning":
        notes.append("num_heads per layer by hand")
        if "heads_per_layer_after" in row:
            notes.append(f"q/k/v heads after {row['heads_per_layer_after']}")
        p = row.get("example_patch")
        if p:
            if "error" in p:
                notes.append(f"example patch fails: {p['error']}")
            else:
                notes.append(
                    f"with TP example's patch: runs {_cell(p['runs'])}, reloads {_cell(p['reloads_identical'])}"
                    + (f", generate {_cell(p['generate'])}" if p.get("generate") is not None else "")
                )
    return "; ".join(notes).replace("|", "/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS + ['llama-big']}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big", action="store_true", help="add llama-big (hidden 512, 8 layers, 8/2 heads)")
    ap.add_argument("--timeout", type=float, default=30.0, help="cap in seconds on every call of either tool")
    args = ap.parse_args()
    TIMEOUT[0] = args.timeout
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # TP's "unwrapped parameters", HF deprecations
    transformers.logging.set_verbosity_error()
    names = [n for n in args.models.split(",") if n] + (["llama-big"] if args.big else [])
    from importlib.metadata import version

    print(
        f"# torch {torch.__version__}, transformers {transformers.__version__}, torch-pruning "
        f"{version('torch-pruning')}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, repeats "
        f"{args.repeats}, load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    t_start = time.perf_counter()
    rows: list[tuple[str, str, dict]] = []
    for name in names:
        try:
            model, inputs, attn = _build(name)
            shape = _logits(model, inputs).shape
        except Exception as e:
            rows.append((name, "-", {"error": f"model build failed: {_err(e)}"}))
            continue
        timing = _time_both(model, inputs, args.repeats)
        for tool, row in (
            ("ours", {**timing["ours"], **_our_row(model, name, inputs, attn, shape)}),
            ("torch-pruning", {**timing["torch-pruning"], **_tp_row(model, name, inputs, attn, shape, True)}),
            ("tp-no-heads", _tp_row(model, name, inputs, attn, shape, False)),
        ):
            print(json.dumps({"model": name, "tool": tool, **row}, default=str), flush=True)
            rows.append((name, tool, row))

    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t_start:.0f} s in all\n")
    print("| model | tool | plan s | params kept | runs | reloads identical | generate | note |")
    print("|---|---|---:|---:|---|---|---|---|")
    for name, tool, row in rows:
        plan_s = f"{row['plan_s']:.3f}" if "plan_s" in row else "-"
        if "error" in row:
            print(f"| {name} | {tool} | {plan_s} | - | {_cell(row['error'])} | - | - | {_note(tool, row)} |")
            continue
        print(
            f"| {name} | {tool} | {plan_s} | {row['params_kept']:.1%} | {_cell(row['runs'])} "
            f"| {_cell(row['reloads_identical'])} | {_cell(row['generate'])} | {_note(tool, row)} |"
        )


if __name__ == "__main__":
    main()
