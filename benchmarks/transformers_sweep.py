"""Sweep of transformer architectures beyond the tested families: the DESIGN.md oracle, the
parameters kept at uniform 0.5, attention heads pruned in every layer, the
``save_pretrained``/``from_pretrained`` reload, both GQA policies and ``head_dim=True``.

    python benchmarks/transformers_sweep.py [--models qwen2,olmo] [--seconds 240] [--threads 1]

Every model is small and built from its config (random weights, no download): Hugging Face
families with 2 layers, hidden 64, 4 query heads over 2 key/value heads where the family has
GQA; timm models at their smallest variant (fewer, narrower stages where the attention
works at any size), 28-64 px (EfficientFormer's attention biases need 224), 10 classes. Each model runs in a fresh
spawned process under ``--seconds``. Columns: the oracle (``tests/helpers.check_oracle``, equal
counts per group size), % of parameters kept at 0.5, attention layers with a prunable head
group, the reload (identical outputs; what ``report.reloadable`` claimed), the oracle under
``gqa="query_heads"`` where the model has GQA, and the oracle of ``plan(head_dim=True)``
(whether a head_dim group is prunable; exactness on random masks; pruned at 0.5).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import multiprocessing
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import assert_close_rel, call, check_oracle, first_tensor  # noqa: E402

_DEC = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
_ENC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_TXT = dict(vocab_size=128, max_position_embeddings=64)
_MOE = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
_IMG = dict(image_size=32, patch_size=8, num_labels=10)

# name -> (config class, model class, config fields); experts run eagerly (see tests/test_moe.py).
HF: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DEC),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_DEC, "head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DEC),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {**_DEC, "pad_token_id": 0}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {**_DEC, "pad_token_id": 0}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", _DEC),
    "cohere": ("CohereConfig", "CohereForCausalLM", {**_DEC, "pad_token_id": 0}),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", _DEC),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", _DEC),
    "helium": ("HeliumConfig", "HeliumForCausalLM", {**_DEC, "head_dim": 16, "pad_token_id": 0}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {**_DEC, "pad_token_id": 0}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**_DEC, "head_dim": 16}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**_DEC, "head_dim": 16}),
    "phi": ("PhiConfig", "PhiForCausalLM", _DEC),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)),
    "codegen": (
        "CodeGenConfig",
        "CodeGenForCausalLM",
        dict(vocab_size=128, n_positions=64, n_ctx=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
    ),  # fmt: skip
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(vocab_size=128, hidden_size=64, n_layer=2, n_head=4)),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {**_DEC, "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),  # fmt: skip
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {**_DEC, **_MOE, "shared_expert_intermediate_size": 48}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {**_DEC, **_MOE, "head_dim": 16}),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {**_DEC, "intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2, "pad_token_id": 0},
    ),  # fmt: skip
    "bert": ("BertConfig", "BertForSequenceClassification", {**_ENC, **_TXT}),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", {**_ENC, **_TXT, "embedding_size": 32}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {**_ENC, **_TXT, "embedding_size": 32}),
    "xlm_roberta": (
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        {**_ENC, **_TXT, "max_position_embeddings": 70, "pad_token_id": 1},
    ),  # fmt: skip
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", {**_ENC, **_TXT, "max_position_embeddings": 70}),
    "vit": ("ViTConfig", "ViTForImageClassification", {**_ENC, **_IMG}),
    "deit": ("DeiTConfig", "DeiTForImageClassification", {**_ENC, **_IMG}),
    "beit": ("BeitConfig", "BeitForImageClassification", {**_ENC, **_IMG, "use_relative_position_bias": True}),
    "whisper_encoder": (
        "WhisperConfig",
        "WhisperForAudioClassification",
        dict(
            vocab_size=128,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            num_mel_bins=16,
            max_source_positions=16,
            max_target_positions=16,
            num_labels=10,
        ),
    ),  # fmt: skip
}
# timm name -> keyword arguments of create_model, image size.
TIMM: dict[str, tuple[dict[str, Any], int]] = {
    "eva02_tiny_patch14_224": (dict(img_size=28, depth=2, num_classes=10), 28),
    "beit_base_patch16_224": (dict(img_size=32, depth=2, embed_dim=64, num_heads=4, num_classes=10), 32),
    "efficientformer_l1": (dict(depths=(1, 1, 2, 2), embed_dims=(16, 32, 48, 64), num_vit=1, num_classes=10), 224),
    "efficientformerv2_s0": (dict(depths=(1, 1, 2, 2), embed_dims=(16, 32, 48, 64), num_classes=10), 224),
    "edgenext_xx_small": (dict(num_classes=10), 64),
    "coatnet_nano_rw_224": (dict(num_classes=10, img_size=64), 64),
    "pvt_v2_b0": (dict(num_classes=10), 64),
}
_ROPE_HEAD_DIM = {"qwen2", "qwen3", "mistral", "olmo", "olmo2", "granite", "helium", "smollm3", "starcoder2", "mixtral"}


def build(name: str, batch: int = 2, seq: int = 8) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The small model ``name`` (random weights, eval mode) and keyword inputs for it."""
    torch.manual_seed(0)
    if name in TIMM:
        import timm

        kwargs, size = TIMM[name]
        return timm.create_model(name, pretrained=False, **kwargs).eval(), {"x": torch.randn(batch, 3, size, size)}
    import transformers

    config_cls, model_cls, fields = HF[name]
    config = getattr(transformers, config_cls)(**fields)
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"
    cls = getattr(transformers, model_cls)
    config._attn_implementation = "sdpa" if cls._supports_sdpa else "eager"
    model = cls(config).eval()
    if model.main_input_name == "pixel_values":
        return model, {"pixel_values": torch.randn(batch, 3, config.image_size, config.image_size)}
    if model.main_input_name == "input_features":
        return model, {"input_features": torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions)}
    ids = torch.randint(1, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, : seq // 4] = 0  # left padding in the last row
    return model, {"input_ids": ids, "attention_mask": mask}


def attention_layers(model: nn.Module) -> list[str]:
    """Modules that look like attention: a class name ending in Attention that holds a weight
    matrix (Linear, GPT-2's Conv1D, a 1x1 conv) and is not inside another such module."""
    found: list[str] = []
    for n, m in model.named_modules():
        if type(m).__name__.endswith(("Attention", "Attention2d", "Attn")) and any(p.ndim >= 2 for p in m.parameters()):
            if not any(n.startswith(f + ".") for f in found):
                found.append(n)
    return found


def _heads(plan: Any, layers: list[str]) -> set[str]:
    return {la for la in layers for g in plan.prunable if any(m.param.startswith(la + ".") and m.block > 1 for m in g.members)}


def _gqa(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    kv = getattr(cfg, "num_key_value_heads", None)
    return kv is not None and kv < cfg.num_attention_heads


def _reload(model: nn.Module, result: Any, x: Any, d: Path) -> str:
    small = result.model.eval()
    try:
        small.save_pretrained(d / "hf")
        kw = {"attn_implementation": small.config._attn_implementation}
        if hasattr(small.config, "_experts_implementation"):
            kw["experts_implementation"] = "eager"
        again = type(model).from_pretrained(d / "hf", **kw).eval()
        with torch.no_grad():
            same = torch.equal(first_tensor(call(small, x)), first_tensor(call(again, x)))
    except Exception as e:  # noqa: BLE001 - reported
        return f"error {type(e).__name__} (claimed {result.report.reloadable})"
    return f"{'yes' if same else 'NO'} (claimed {result.report.reloadable})"


def _head_dim(model: nn.Module, x: Any) -> str:
    import sparsekit_graph as skg

    plan = skg.plan(model, x, head_dim=True)
    groups = [g for g in plan.groups if g.name.endswith(":head_dim")]
    live = [g for g in groups if g.prunable]
    if not live:
        return "pinned: " + ((groups[0].reason or "")[:50] if groups else "no group")
    gen = torch.Generator().manual_seed(2)
    masks = {}
    for g in live:
        m = torch.zeros(g.size, dtype=torch.bool)
        m[torch.randperm(g.size - 1, generator=gen)[: g.size // 3] + 1] = True
        masks[g.name] = m
    dense = copy.deepcopy(model).eval()
    couplings = skg.bind(plan, dense)
    for n, m in masks.items():
        couplings[n].apply_mask(m)
    small = skg.prune(model, plan, masks=masks).model.eval()
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))
    r = skg.prune(model, plan, ratio=0.5)
    with torch.no_grad():
        call(r.model.eval(), x)
    return f"exact, {r.report.params_ratio:.0%} kept (reloadable {r.report.reloadable})"


def one(name: str) -> dict[str, str]:
    """The sweep's cells for one model; each check's failure is its own cell."""
    import sparsekit_graph as skg

    row = {"model": name}
    model, x = build(name)
    d = Path(tempfile.mkdtemp())
    try:
        result = check_oracle(model, x, d, equal_counts=True)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(limit=3)
        row["oracle"] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
        return row
    layers = attention_layers(model)
    row["oracle"] = "pass"
    row["kept"] = f"{result.report.params_ratio:.0%}"
    row["heads"] = f"{len(_heads(result.plan, layers))}/{len(layers)}"
    if name in HF:
        row["reload"] = _reload(model, result, x, d)
    if name in HF and _gqa(model):
        try:
            plan = skg.plan(model, x, gqa="query_heads")
            r = skg.prune(model, plan, ratio=0.5)
            with torch.no_grad():
                assert first_tensor(call(r.model.eval(), x)).shape == first_tensor(call(model, x)).shape
            row["query_heads"] = f"runs, {r.report.params_ratio:.0%} kept, reload " + _reload(model, r, x, d / "q")
        except Exception as e:  # noqa: BLE001
            row["query_heads"] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"
    if name in _ROPE_HEAD_DIM:
        try:
            row["head_dim"] = _head_dim(model, x)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(limit=3)
            row["head_dim"] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"
    return row


def _child(name: str, threads: int) -> dict[str, str]:
    torch.set_num_threads(threads)
    try:
        return one(name)
    except BaseException as e:  # noqa: BLE001
        return {"model": name, "oracle": f"crash {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"}


def isolated(name: str, seconds: int, threads: int) -> dict[str, str]:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_child, name, threads)
        try:
            return future.result(timeout=seconds)
        except concurrent.futures.TimeoutError:
            for proc in pool._processes.values():
                proc.kill()
            return {"model": name, "oracle": f"timeout (> {seconds} s)"}


COLUMNS = ["model", "oracle", "kept", "heads", "reload", "query_heads", "head_dim"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated names: only these")
    ap.add_argument("--seconds", type=int, default=240)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    picked = [n for n in args.models.split(",") if n] or [*HF, *TIMM]
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    for name in picked:
        t0 = time.perf_counter()
        row = isolated(name, args.seconds, args.threads)
        print("| " + " | ".join(row.get(c, "-") for c in COLUMNS) + " |", flush=True)
        print(f"<!-- {name}: {time.perf_counter() - t0:.0f} s -->", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
