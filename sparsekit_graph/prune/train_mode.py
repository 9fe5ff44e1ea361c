"""A pruned copy's train forward, where ``torch.export`` planned the model: its graph is the
eval forward's alone, so code only training runs (``if self.training: h.view(b, c // 4, 4)``)
was never planned. ``prune`` runs both models' train forwards and refuses a pruning under
which only the pruned one fails: on weightless meta copies, or, where the model's own train
forward does not run on meta (``.item()``, ``torch.arange(n)`` made on the CPU), on copies
with their weights and the real inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import SparseKitError
from ..graph.forward_modes import code_reads
from ..graph.meta_pass import to_meta
from ..graph.trace_inputs import Inputs, normalize_inputs
from .copying import copy_model

__all__ = ["check_train_forward", "train_failure"]

Weighted = Callable[[], nn.Module]  # the pruned model with its weights, built where needed


def check_train_forward(model: nn.Module, pruned: nn.Module, inputs: Inputs) -> None:
    """Raise ``SparseKitError`` where ``pruned`` (a pruned copy of ``model``) fails its train
    forward on ``inputs`` and ``model`` does not."""
    why = train_failure(pruned, inputs, model, weighted=lambda: pruned)
    if why is not None:
        raise SparseKitError(why)


def train_failure(
    pruned: nn.Module, inputs: Inputs, model: nn.Module, runs: list[str | None] | None = None, weighted: Weighted | None = None
) -> str | None:
    """Why ``pruned``'s train forward fails where ``model``'s runs, or None; None too where the
    code never reads ``training``. ``runs``: a cache of where the model's own train forward
    runs ("meta", "weights" or None), filled on first use; ``weighted``: ``pruned`` with its
    weights (``pruned`` itself may be weightless), asked for where only real weights run."""
    if not code_reads(model, frozenset(), anywhere=frozenset({"training"})):
        return None
    why = _fails(pruned, inputs, meta=True)
    if why is None:
        return None
    if runs is None:
        runs = []
    if not runs:
        runs.append(_runs_where(model, inputs))
    if runs[0] == "weights" and weighted is not None:
        why = _fails(weighted(), inputs, meta=False)
    elif runs[0] != "meta":
        return None  # the model's own train forward fails too: nothing to compare
    return f"the pruned model's train forward fails (torch.export planned the eval forward only): {why}" if why else None


def _runs_where(model: nn.Module, inputs: Inputs) -> str | None:
    """Where ``model``'s train forward runs: on a meta copy, on a copy with its weights and the
    real inputs (neither on meta), or nowhere we can tell."""
    if _fails(model, inputs, meta=True) is None:
        return "meta"
    args, kwargs = normalize_inputs(inputs)
    tensors = [*model.parameters(), *model.buffers(), *(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))]
    if any(t.is_meta for t in tensors):
        return None
    return "weights" if _fails(model, inputs, meta=False) is None else None


def _fails(model: nn.Module, inputs: Inputs, *, meta: bool) -> str | None:
    """Why the train forward of a copy of ``model`` raises, or None: a weightless meta copy on
    meta inputs, or a copy with the weights on ``inputs`` (its statistics updates stay in it)."""
    copy = copy_model(model, weights=not meta).train()
    args, kwargs = normalize_inputs(inputs)
    if meta:
        copy, args, kwargs = copy.to("meta"), to_meta(args), to_meta(kwargs)
    try:
        with torch.no_grad():
            copy(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the train forward raises
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
