"""Hugging Face models after surgery: a config that rebuilds exactly the pruned shapes.

``save_pretrained`` writes the config and the weights; ``from_pretrained`` builds the model
class from that config and loads the weights into it, so the pruned model reloads exactly when
some config builds every parameter with its pruned shape. That holds when every layer kept
the same counts (``prune(..., uniform=True)``, or a uniform ratio); a pruned head size is
stated by ``head_dim`` and its kept rotary frequencies by ``longrope`` factors
(``rope_fit.py``). ``fit_config`` searches the config's size attributes for such
values, fewest changes first: a candidate's shapes are checked on the meta device, then what
it computes on the CPU.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..graph.positions import EXPERT_COUNT_ATTRIBUTES
from ..graph.sizes import SIZE_ATTRIBUTES
from .rope_fit import fit_rope_factors

__all__ = ["CONFIG_SIZE_ATTRIBUTES", "adopt_sizes", "fit_config", "fit_experts_kernel"]

_MAX_BUILDS = 256
# Sizes only a config holds (its layers read them as ``embed_dim``/``num_heads``/``fc1``):
# encoder-decoder configs (Whisper, BART, Marian), Whisper's classifier projection.
CONFIG_SIZE_ATTRIBUTES: set[str] = {
    "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "classifier_proj_size",
}  # fmt: skip


def fit_config(original: nn.Module, pruned: nn.Module, inputs: Any) -> bool | None:
    """Set ``pruned.config`` to values under which ``type(pruned)`` builds the pruned model.

    A candidate must build every parameter and buffer with its pruned shape and, when the
    weights are real, compute what the pruned model computes (both given the same random
    weights and random ``inputs`` shaped like the example inputs): shapes alone cannot tell
    4 heads of 8 from 2 heads of 16.

    Returns None for a model without a Hugging Face config, True when such values exist (the
    config is rewritten), False when none do (the config is left describing the original
    model's sizes where surgery could not rewrite them; ``save_pruned`` still works).
    """
    config = getattr(pruned, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(type(pruned), "from_pretrained"):
        return None
    want = _shapes(pruned)
    before = _shapes(original)
    for sub in ["", *_sub_configs(config)]:  # the config itself, then each nested one (CLIP's vision_config)
        holder, was = _at(config, sub), _at(original.config, sub)
        attrs = sorted(
            a
            for a in SIZE_ATTRIBUTES | EXPERT_COUNT_ATTRIBUTES | CONFIG_SIZE_ATTRIBUTES
            if (_is_size(getattr(holder, a, None)) or _is_sizes(getattr(holder, a, None))) and _settable(holder, a)
        )
        options = [_candidates(getattr(holder, a), getattr(was, a, None), before, want) for a in attrs]
        unit = _new_head_dim(holder, pruned) if not sub else None
        if unit is not None:  # Qwen2: layers read config.head_dim when set, else hidden // heads; stated first
            attrs, options = [*attrs, "head_dim"], [*options, [unit, None]]
        for values in itertools.islice(_fewest_changes_first(options), _MAX_BUILDS):
            trial = copy.deepcopy(config)
            for a, v in zip(attrs, values):
                if v is not None:
                    setattr(_at(trial, sub), a, v)
            built = _build(type(pruned), trial, "meta")
            if built is None or _shapes(built) != want:
                continue
            if not _on_meta(pruned):
                built = _build(type(pruned), trial, "cpu")  # non-persistent buffers as from_pretrained makes them
                if built is not None and fit_rope_factors(_at(trial, sub), pruned, built):  # head_dim pruned
                    built = _build(type(pruned), trial, "cpu")
            if built is not None and _same_function(pruned, built, inputs):
                for a, v in zip(attrs, values):
                    if v is not None:
                        setattr(holder, a, v)
                if getattr(_at(trial, sub), "rope_parameters", None) != getattr(holder, "rope_parameters", None):
                    holder.rope_parameters = _at(trial, sub).rope_parameters
                adopt_sizes(pruned, built)
                return True
    return False


def _new_head_dim(config: Any, pruned: nn.Module) -> int | None:
    """The one head size the pruned layers hold where the config has no ``head_dim`` to say it
    (a candidate to add; Mixtral's is None): it changed (Qwen2), or the heads did, and the
    layers' default ``hidden_size // num_attention_heads`` would change it (OLMo)."""
    if getattr(config, "head_dim", None) is not None:
        return None
    new = {m.head_dim for m in pruned.modules() if _is_size(getattr(m, "head_dim", None))}
    return new.pop() if len(new) == 1 else None


def _sub_configs(config: Any) -> list[str]:
    """Attributes holding nested configs (``vision_config``, ``text_config``), searched one at
    a time after the config itself."""
    from transformers import PretrainedConfig

    return sorted(k for k, v in vars(config).items() if isinstance(v, PretrainedConfig))


def _at(config: Any, sub: str) -> Any:
    return getattr(config, sub) if sub else config


def _fewest_changes_first(options: list[list[int]]) -> Iterator[tuple[int, ...]]:
    """Every choice of one value per attribute (the first is its current value), those that
    change fewer attributes first, generated lazily."""
    current = tuple(o[0] for o in options)
    for k in range(len(options) + 1):
        for changed in itertools.combinations(range(len(options)), k):
            for values in itertools.product(*(options[i][1:] for i in changed)):
                trial = list(current)
                for i, v in zip(changed, values):
                    trial[i] = v
                yield tuple(trial)


def adopt_sizes(target: nn.Module, source: nn.Module) -> None:
    """Give ``target`` the size attributes of ``source``, a model of the same structure: its
    config's and every layer's. After a fit, layer attributes the forward never read (BERT's
    ``num_attention_heads``) no longer say the original sizes; ``prune(inplace=True)`` hands
    the fitted config to the user's model this way too."""
    configs = [(getattr(target, "config", None), getattr(source, "config", None))]
    if configs[0][0] is not None and configs[0][1] is not None:
        configs += [(getattr(configs[0][0], k), getattr(configs[0][1], k, None)) for k in _sub_configs(configs[0][0])]
    for mine, theirs in [*configs, *zip(target.modules(), source.modules())]:
        if mine is None or theirs is None or type(mine) is not type(theirs):
            continue
        for attr in SIZE_ATTRIBUTES | EXPERT_COUNT_ATTRIBUTES:
            new = getattr(theirs, attr, None)
            if _is_size(new) and _is_size(getattr(mine, attr, None)) and new != getattr(mine, attr) and _settable(mine, attr):
                setattr(mine, attr, new)


def _settable(obj: Any, attr: str) -> bool:
    """Not a read-only property (Falcon's ``head_dim`` is computed from the other sizes)."""
    prop = getattr(type(obj), attr, None)
    return not isinstance(prop, property) or prop.fset is not None


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 1


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_sizes(v: Any) -> bool:
    """A size per stage (Swin's ``num_heads = [3, 6, 12, 24]``)."""
    return isinstance(v, (list, tuple)) and bool(v) and all(_is_size(x) or x == 1 for x in v)


def _scaled(current: list | tuple, original: Any, before: dict, after: dict) -> list:
    """A per-stage list first as it is, then as it was, then scaled by each ratio that pruning
    shrank an axis by (every stage alike: what a uniform ratio gives)."""
    base = original if _is_sizes(original) else current
    found = [current] + ([original] if _is_sizes(original) and original != current else [])
    ratios = {(s, n) for name, old in before.items() for s, n in zip(old, after.get(name, old)) if s != n}
    for s, n in sorted(ratios):
        if all((v * n) % s == 0 and v * n >= s for v in base):
            scaled = type(base)(v * n // s for v in base)
            if scaled not in found:
                found.append(scaled)
    return found


def _candidates(current: Any, original: Any, before: dict, after: dict) -> list:
    """The attribute's current value first, then its original value and every value it
    would take if it scaled with an axis that pruning shrank."""
    if _is_sizes(current):
        return _scaled(current, original, before, after)
    found = [current] + ([original] if isinstance(original, int) and original != current else [])
    v = original if isinstance(original, int) else current
    for name, old in before.items():
        new = after.get(name, old)
        for s, n in zip(old, new):
            if s != n and s % v == 0 and (n * v) % s == 0 and (n * v) // s not in found:
                found.append((n * v) // s)
    return found


def _build(cls: type, config: Any, device: str) -> nn.Module | None:
    """The model ``config`` builds, or None where the class rejects it or the config would not
    load again as saved (``from_pretrained`` validates it: Swin's ``embed_dim`` and heads)."""
    try:
        type(config).from_dict(config.to_dict())
        with torch.device(device):
            return cls(config).eval()
    except Exception:  # noqa: BLE001 - a config the class rejects builds nothing
        return None


def _on_meta(model: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in model.state_dict().values())


def _same_function(pruned: nn.Module, built: nn.Module, inputs: Any) -> bool:
    """Do ``built`` and ``pruned`` compute one function? Both get the same random weights of
    unit-scale activations (the model's own small init can hide a wrong head size: near-zero
    attention logits make every scaling look alike) and random inputs. ``built`` keeps the
    non-persistent buffers its class computes (RoPE frequencies, Gemma's embedding scale), as
    ``from_pretrained`` would."""
    if _on_meta(pruned):
        return True  # nothing to run: shapes are all there is
    g = torch.Generator().manual_seed(0)
    saved = pruned.state_dict()
    ties: dict[int, list[str]] = {}  # one tensor under several names gets one random value
    for name, t in (*pruned.named_parameters(remove_duplicate=False), *pruned.named_buffers(remove_duplicate=False)):
        if name in saved:
            ties.setdefault(id(t), []).append(name)
    state = {}
    for names in ties.values():
        state.update(dict.fromkeys(names, _random_weight(saved[names[0]], g)))
    twin = copy.deepcopy(pruned).eval()
    twin.load_state_dict(state)
    dtype = next((t.dtype for t in saved.values() if t.is_floating_point()), torch.float32)
    device = next((t.device for t in saved.values()), torch.device("cpu"))  # a model on a GPU runs there
    built.to(device=device, dtype=dtype).load_state_dict(state)
    args, kwargs = _random_like(inputs, device)
    try:
        with torch.no_grad():
            a, b = _first(twin(*args, **kwargs)).float(), _first(built(*args, **kwargs)).float()
    except Exception:  # noqa: BLE001 - a candidate that does not run is not the model
        return False
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max()) + 1e-6))


def _random_weight(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if not t.is_floating_point():
        return t.clone()
    if t.ndim < 2:
        return 1 + 0.5 * torch.randn(t.shape, generator=g).to(t.dtype)
    return (torch.randn(t.shape, generator=g) / t.shape[-1] ** 0.5).to(t.dtype)


def _random_like(inputs: Any, device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Real tensors on ``device`` shaped like the (meta) example inputs: floats ~ N(0, 1);
    integers 0 or 1 with every row's first entry 1 (valid token ids, type ids and attention masks)."""
    g = torch.Generator().manual_seed(0)

    def real(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=t.dtype).to(device)
        x = torch.randint(0, 2, t.shape, generator=g, dtype=t.dtype)
        if x.ndim:
            x[..., 0] = 1
        return x.to(device)

    if isinstance(inputs, dict):
        return (), {k: real(v) for k, v in inputs.items()}
    return tuple(real(v) for v in inputs), {}


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        return _first(next(iter(out.values())))
    return _first(out[0])


def fit_experts_kernel(model: nn.Module) -> None:
    """Hugging Face's ``grouped_mm`` experts kernel (the default) needs every stride of its
    operands a multiple of 16 bytes: an expert width pruned to another count (13 of 32 in
    float32) fails it at the first call. Such a model's experts run ``batched_mm``, the
    computation the plan was made of (``graph.export.batched_experts``); set
    ``model.set_experts_implementation(...)`` again after ``from_pretrained``."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "_experts_implementation_internal", None) != "grouped_mm":
            continue
        stacked = [p for p in m.parameters(recurse=False) if p.ndim == 3]
        if any(n * p.element_size() % 16 for p in stacked for n in p.shape[1:]):
            config._experts_implementation_internal = "batched_mm"  # type: ignore[union-attr]
