"""Model specs for the CLI and examples: ``torchvision:resnet18``, ``timm:convnext_tiny``,
``hf:llama`` (a small config, built, never downloaded; ``hf:llama@eager`` for eager attention),
``path/to/file.py:factory``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SparseKitError

__all__ = ["HF_MODELS", "hf_model", "load_spec"]

_INPUT_SIZE = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "swin_t": 224}


def load_spec(spec: str, *, batch: int = 1, image_size: int | None = None, seed: int = 0) -> tuple[nn.Module, Any]:
    """Build the model a spec names (random weights) and an example input for it."""
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise SparseKitError(f"model spec {spec!r} must look like 'torchvision:resnet18' or 'file.py:factory'")
    torch.manual_seed(seed)
    if kind == "torchvision":
        return _torchvision(name, batch, image_size)
    if kind == "timm":
        return _timm(name, batch, image_size)
    if kind == "hf":
        arch, _, attn = name.partition("@")
        return hf_model(arch, attention=attn or "sdpa", batch=batch)
    if kind.endswith(".py"):
        return _file(Path(kind), name, batch)
    raise SparseKitError(f"model spec {spec!r}: unknown source {kind!r} (torchvision, timm or a .py file)")


def _torchvision(name: str, batch: int, image_size: int | None) -> tuple[nn.Module, Any]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as e:
        raise SparseKitError(f"torchvision has no model {name!r}") from e
    kwargs: dict[str, Any] = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = builder(weights=None, **kwargs)
    size = image_size or _INPUT_SIZE.get(name, 224)
    return model.eval(), torch.randn(batch, 3, size, size)


def _timm(name: str, batch: int, image_size: int | None) -> tuple[nn.Module, Any]:
    import timm

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:
        raise SparseKitError(f"timm has no model {name!r}") from e
    size = image_size or model.default_cfg.get("input_size", (3, 224, 224))[-1]
    return model.eval(), torch.randn(batch, 3, size, size)


def _file(path: Path, factory: str, batch: int) -> tuple[nn.Module, Any]:
    if not path.exists():
        raise SparseKitError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if fn is None:
        raise SparseKitError(f"{path} has no function {factory!r}")
    out = fn()
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module)):
        raise SparseKitError(f"{path}:{factory}() must return (model, example_inputs)")
    return out


# Small configs of each family (2 layers, hidden 64, 4 heads, GQA with 2 key/value heads).
_DECODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
_ENCODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
HF_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_DECODER, "head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DECODER),
    "bert": ("BertConfig", "BertForSequenceClassification", {**_ENCODER, "vocab_size": 128, "max_position_embeddings": 64}),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
    ),
    "vit": ("ViTConfig", "ViTForImageClassification", {**_ENCODER, "image_size": 32, "patch_size": 8, "num_labels": 10}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**_DECODER, "pad_token_id": 0}),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(
            vocab_size=128,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
        ),
    ),  # fmt: skip
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_ENCODER, "vocab_size": 128, "max_position_embeddings": 64}),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=False),
    ),  # fmt: skip
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(vocab_size=128, dim=64, hidden_dim=128, n_layers=2, n_heads=4, max_position_embeddings=64),
    ),
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        {**_ENCODER, "vocab_size": 128, "max_position_embeddings": 70, "pad_token_id": 1},
    ),
    "t5_encoder": ("T5Config", "T5EncoderModel", dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0),
    ),
    "clip_vision": (
        "CLIPConfig",
        "CLIPForImageClassification",
        dict(vision_config={**_ENCODER, "image_size": 32, "patch_size": 8}, num_labels=10),
    ),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**_DECODER, "head_dim": 16}),
    "swin": (
        "SwinConfig",
        "SwinForImageClassification",
        dict(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=10),
    ),
}


def hf_model(name: str, *, attention: str = "sdpa", batch: int = 2, seq: int = 8) -> tuple[nn.Module, dict[str, Any]]:
    """A small Hugging Face model of family ``name`` (random weights, eval mode) and keyword
    inputs for it: token ids with an attention mask that pads the last row, or pixels."""
    try:
        import transformers
    except ImportError as e:
        raise SparseKitError("Hugging Face models need the transformers package (pip install transformers)") from e
    if name not in HF_MODELS:
        raise SparseKitError(f"hf:{name}: unknown model family; known: {', '.join(sorted(HF_MODELS))}")
    config_cls, model_cls, sizes = HF_MODELS[name]
    config = getattr(transformers, config_cls)(**sizes, attn_implementation=attention)
    model = getattr(transformers, model_cls)(config).eval()
    if model.main_input_name == "pixel_values":
        size = getattr(config, "image_size", None) or config.vision_config.image_size
        return model, {"pixel_values": torch.randn(batch, 3, size, size)}
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, : seq // 4] = 0  # left padding in the last row
    if config.is_encoder_decoder:  # T5: the decoder reads its own tokens
        return model, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, : seq // 2 + 1]}
    return model, {"input_ids": ids, "attention_mask": mask}
