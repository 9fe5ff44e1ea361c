"""Hugging Face models after surgery: a config that rebuilds exactly the pruned shapes.

``save_pretrained`` writes the config and the weights; ``from_pretrained`` builds the model
class from that config and loads the weights into it, so the pruned model reloads exactly when
some config builds every parameter with its pruned shape. That holds when every layer kept
the same counts (``prune(..., uniform=True)``, or a uniform ratio), and the head size the
config implies did not change. ``fit_config`` searches the config's size attributes for such
values, checking each candidate by building the model on the meta device.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

from ..graph.sizes import SIZE_ATTRIBUTES

__all__ = ["fit_config"]

_MAX_BUILDS = 256


def fit_config(original: nn.Module, pruned: nn.Module) -> bool | None:
    """Set ``pruned.config`` to values under which ``type(pruned)`` builds the pruned shapes.

    Returns None for a model without a Hugging Face config, True when such values exist (the
    config is rewritten), False when none do (the config is left describing the original
    model's sizes where surgery could not rewrite them; ``save_pruned`` still works).
    """
    config = getattr(pruned, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(type(pruned), "from_pretrained"):
        return None
    want = _shapes(pruned)
    before = _shapes(original)
    attrs = sorted(a for a in SIZE_ATTRIBUTES if _is_size(getattr(config, a, None)))
    options = [_candidates(getattr(config, a), getattr(original.config, a, None), before, want) for a in attrs]
    assignments = sorted(itertools.product(*options), key=lambda vals: sum(v != o[0] for v, o in zip(vals, options)))
    for values in assignments[:_MAX_BUILDS]:
        trial = copy.deepcopy(config)
        for a, v in zip(attrs, values):
            setattr(trial, a, v)
        if _builds(type(pruned), trial) == want:
            for a, v in zip(attrs, values):
                setattr(config, a, v)
            return True
    return False


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 1


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _candidates(current: int, original: int | None, before: dict, after: dict) -> list[int]:
    """The attribute's current value first, then its original value and every value it
    would take if it scaled with an axis that pruning shrank."""
    found = [current] + ([original] if isinstance(original, int) and original != current else [])
    v = original if isinstance(original, int) else current
    for name, old in before.items():
        new = after.get(name, old)
        for s, n in zip(old, new):
            if s != n and s % v == 0 and (n * v) % s == 0 and (n * v) // s not in found:
                found.append((n * v) // s)
    return found


def _builds(cls: type, config: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            model = cls(config)
    except Exception:  # noqa: BLE001 - a config the class rejects builds nothing
        return None
    return _shapes(model)
