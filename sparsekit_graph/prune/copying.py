"""The working copy ``prune`` operates on."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..containers import CONTAINERS
from ..errors import TraceError
from .held_refs import rebind

__all__ = ["copy_model"]


def copy_model(model: nn.Module, *, weights: bool = True) -> nn.Module:
    """A deep copy of ``model``.

    A tensor a layer computes and keeps as a plain attribute (``module.weight`` under the old
    ``nn.utils.weight_norm``, recomputed by a pre-hook before every forward), or in a list or
    dict it holds (a feature cache), is no graph leaf, and torch refuses to deep-copy it: it is
    copied detached. A function a layer holds whose closure or defaults hold the model's layers
    or tensors (``self.act = lambda t: t * self.g``) is rebuilt around the copy's
    (``held_refs.rebind``; deepcopy copies functions as themselves). Nothing of ``model`` changes.
    ``weights=False``: parameters are uninitialised tensors of their shapes, dtypes and devices
    (nothing copied; enough to trace the copy), buffers are copied.

    Raises:
        TraceError: An attribute of a module cannot be copied (named with the module).
    """
    memo: dict[int, object] = {}
    if not weights:
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)
    for m in model.modules():
        for v in _held(m.__dict__.values()):
            if isinstance(v, Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as e:  # noqa: BLE001 - name what could not be copied
        raise TraceError(
            f"cannot copy {type(model).__name__} to prune it: {_culprit(model, memo)}: {type(e).__name__}: {e}"
        ) from e
    rebind(copied, {k: v for k, v in memo.items() if isinstance(v, (nn.Module, Tensor))})  # a lambda's closure
    return copied


def _held(values: Iterable[object], depth: int = 0) -> Iterator[object]:
    """``values`` and what the lists, dicts, sets, deques and tuples among them hold (a few levels)."""
    for v in values:
        yield v
        if depth < 4 and (type(v) in CONTAINERS or type(v) is tuple):
            yield from _held(v.values() if isinstance(v, dict) else v, depth + 1)


def _culprit(model: nn.Module, memo: dict[int, object]) -> str:
    """The first module attribute that does not deep-copy, as ``module.name (type)``."""
    for name, m in model.named_modules():
        for key, v in m.__dict__.items():
            if isinstance(v, (nn.Module, Tensor)) or key in ("_modules", "_parameters", "_buffers"):
                continue  # copied on their own, reported by their own attributes
            try:
                copy.deepcopy(v, dict(memo))
            except Exception:  # noqa: BLE001 - the one to name
                return f"attribute {'.'.join(filter(None, (name, key)))} ({type(v).__name__})"
    return "an attribute"
