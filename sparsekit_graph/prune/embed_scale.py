"""After surgery: embeddings that scale their output by a constant their class computes from
their width (Gemma's ``embed_scale = sqrt(hidden_size)``).

The constant is a non-persistent buffer that ``from_pretrained`` recomputes from the config, so
a model whose hidden size was pruned would reload with another scale. Surgery therefore gives
the layer the scale its class computes for the new width and folds the ratio
``c = old / new`` into the embedding weights: ``(c E)[ids] * new == E[ids] * old``. Where the
output layer shares those weights (tied ``lm_head``), its logits would grow by ``c``; a
registered compensation for the model class undoes it where it is exact (Gemma: the final
RMSNorm's ``1 + weight`` divided by ``c``). A model with tied weights and no registered
compensation keeps the old scale: its config then cannot describe it, and ``prune`` reports
``reloadable=False``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import by_type, registrar

__all__ = ["register_embedding_scale", "register_tied_output_compensation", "rescale_embeddings"]

# Embedding class -> the scale it computes for a given width.
EMBEDDING_SCALES: dict[type, Callable[[int], float]] = {}
# Model class -> how to divide its tied output layer's input by a factor, exactly.
TIED_OUTPUT_COMPENSATIONS: dict[type, Callable[[nn.Module, float], None]] = {}

register_embedding_scale = registrar(EMBEDDING_SCALES)
register_embedding_scale.__doc__ = "Register the scale an embedding class computes from its width (``embed_scale``)."
register_tied_output_compensation = registrar(TIED_OUTPUT_COMPENSATIONS)
register_tied_output_compensation.__doc__ = (
    "Register how a model class divides what its tied output layer reads by a factor, exactly."
)


def rescale_embeddings(model: nn.Module) -> None:
    """Give every registered scaled embedding whose width changed the scale its class computes
    for the new width, folding the ratio into its weights (and undoing it on a tied output).

    Only tensors that surgery already replaced are changed (a width changed only by slicing);
    they are changed in place."""
    _register_known()
    for module in model.modules():
        scale_of = by_type(EMBEDDING_SCALES, module)
        old_scale = getattr(module, "embed_scale", None)
        if scale_of is None or not isinstance(old_scale, torch.Tensor):
            continue
        new = scale_of(module.weight.shape[1])
        old = _value(module, old_scale)
        if new == old:
            continue
        compensate = by_type(TIED_OUTPUT_COMPENSATIONS, model) if _is_tied(model, module) else lambda _model, _c: None
        if compensate is None:
            continue  # no exact compensation: the old scale stays (not reloadable)
        if old is not None:  # on meta weights there is nothing to fold
            compensate(model, old / new)
            with torch.no_grad():
                module.weight.mul_(old / new)
        module._buffers["embed_scale"] = torch.tensor(new, dtype=old_scale.dtype, device=old_scale.device)
        if hasattr(module, "scalar_embed_scale"):
            module.scalar_embed_scale = new


def _value(module: nn.Module, scale: torch.Tensor) -> float | None:
    """The scale a layer holds: its buffer's value, or on the meta device the Python number
    it keeps beside it (``scalar_embed_scale``), if any."""
    if not scale.is_meta:
        return float(scale)
    kept = getattr(module, "scalar_embed_scale", None)
    return float(kept) if isinstance(kept, (int, float)) else None


def _is_tied(model: nn.Module, embedding: nn.Module) -> bool:
    """Does any other layer hold the embedding's weight tensor?"""
    return any(p is embedding.weight for m in model.modules() if m is not embedding for p in m.parameters(recurse=False))


def _divide_one_plus_weight(norm: nn.Module, c: float) -> None:
    """An RMSNorm computing ``x_hat * (1 + weight)``: its output divided by ``c``."""
    with torch.no_grad():
        norm.weight.copy_((1 + norm.weight) / c - 1)


def _register_known() -> None:
    """Gemma's text embeddings (``sqrt(width)``) and its causal LMs, whose tied ``lm_head``
    reads the final ``1 + weight`` RMSNorm; registered once, when transformers is installed."""
    if _KNOWN:
        return
    _KNOWN.append(True)
    try:
        from transformers.models.gemma import modeling_gemma
    except ImportError:
        return
    families = [(modeling_gemma, "Gemma")]
    for name in ("gemma2", "gemma3"):
        try:
            families.append((__import__(f"transformers.models.{name}.modeling_{name}", fromlist=["_"]), name.capitalize()))
        except ImportError:
            continue
    for mod, prefix in families:
        embedding = getattr(mod, f"{prefix}TextScaledWordEmbedding", None)
        if embedding is not None and embedding not in EMBEDDING_SCALES:
            register_embedding_scale(embedding)(lambda width: width**0.5)
        for head in ("ForCausalLM",):
            lm = getattr(mod, f"{prefix}{head}", None)
            if lm is not None and lm not in TIED_OUTPUT_COMPENSATIONS:
                register_tied_output_compensation(lm)(lambda model, c: _divide_one_plus_weight(model.model.norm, c))


_KNOWN: list[bool] = []
