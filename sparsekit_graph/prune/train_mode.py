"""A pruned copy's train forward, where ``torch.export`` planned the model: its graph is the
eval forward's alone, so code only training runs (``if self.training: h.view(b, c // 4, 4)``)
was never planned. ``prune`` runs both models' train forwards on meta copies and refuses a
pruning under which only the pruned one fails."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SparseKitError
from ..graph.forward_modes import code_reads
from ..graph.meta_pass import to_meta
from ..graph.trace_inputs import Inputs, normalize_inputs
from .copying import copy_model

__all__ = ["check_train_forward", "train_failure"]


def check_train_forward(model: nn.Module, pruned: nn.Module, inputs: Inputs) -> None:
    """Raise ``SparseKitError`` where ``pruned`` (a pruned copy of ``model``) fails its train
    forward on ``inputs`` and ``model`` does not."""
    why = train_failure(pruned, inputs, model)
    if why is not None:
        raise SparseKitError(why)


def train_failure(pruned: nn.Module, inputs: Inputs, model: nn.Module, runs: list[bool] | None = None) -> str | None:
    """Why ``pruned``'s train forward fails where ``model``'s runs (``runs``: a cache of that,
    filled on first use), or None; None too where the code never reads ``training``."""
    if not code_reads(model, frozenset(), anywhere=frozenset({"training"})):
        return None
    why = _fails(pruned, inputs)
    if why is None:
        return None
    if runs is None:
        runs = []
    if not runs:
        runs.append(_fails(model, inputs) is None)
    return f"the pruned model's train forward fails (torch.export planned the eval forward only): {why}" if runs[0] else None


def _fails(model: nn.Module, inputs: Inputs) -> str | None:
    """Why the train forward of a weightless meta copy of ``model`` raises, or None."""
    copy = copy_model(model, weights=False).to("meta").train()
    args, kwargs = normalize_inputs(inputs)
    try:
        with torch.no_grad():
            copy(*to_meta(args), **to_meta(kwargs))
    except Exception as e:  # noqa: BLE001 - whatever the train forward raises
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
