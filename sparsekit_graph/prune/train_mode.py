"""A pruned copy's train forward, where ``torch.export`` planned the model: its graph is the
eval forward's alone, so code only training runs (``if self.training: h.view(b, c // 4, 4)``)
was never planned. ``prune`` runs both models' train forwards and refuses a pruning under
which only the pruned one fails, or returns other shapes (``if self.training: return y, h``):
on weightless meta copies, or, where the model's own train forward does not run on meta
(``.item()``, ``torch.arange(n)`` made on the CPU), on copies with their weights and the real
inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..errors import SparseKitError
from ..graph.forward_modes import code_reads
from ..graph.meta_pass import to_meta
from ..graph.trace_inputs import Inputs, normalize_inputs
from .copying import copy_model

__all__ = ["check_train_forward", "train_failure"]

Weighted = Callable[[], nn.Module]  # the pruned model with its weights, built where needed
Shapes = list[tuple[int, ...]]  # of the tensors a forward returns, in order
Ran = tuple[str, Shapes]  # where the model's train forward runs ("meta", "weights"), and what it returns


def check_train_forward(model: nn.Module, pruned: nn.Module, inputs: Inputs) -> None:
    """Raise ``SparseKitError`` where ``pruned`` (a pruned copy of ``model``) fails its train
    forward on ``inputs`` and ``model`` does not."""
    why = train_failure(pruned, inputs, model, weighted=lambda: pruned)
    if why is not None:
        raise SparseKitError(why)


def train_failure(
    pruned: nn.Module, inputs: Inputs, model: nn.Module, runs: list[Ran | None] | None = None, weighted: Weighted | None = None
) -> str | None:
    """Why ``pruned``'s train forward fails, or returns other shapes (a feature returned in
    training only), where ``model``'s runs; None too where the code never reads ``training``.
    ``runs``: a cache of where the model's own train forward runs ("meta" or "weights") and
    what shapes it returns, filled on first use; ``weighted``: ``pruned`` with its weights
    (``pruned`` itself may be weightless), asked for where only real weights run."""
    if not code_reads(model, frozenset(), anywhere=frozenset({"training"})):
        return None
    if runs is None:
        runs = []
    if not runs:
        runs.append(_ran(model, inputs))
    if runs[0] is None:
        return None  # the model's own train forward fails too: nothing to compare
    where, shapes = runs[0]
    got = _outputs(pruned, inputs, meta=True)
    if isinstance(got, str) and where == "weights":
        if weighted is None:
            return None
        got = _outputs(weighted(), inputs, meta=False)
    why = "fails" if isinstance(got, str) else None if got == shapes else "returns other shapes"
    if why is None:
        return None
    detail = got if isinstance(got, str) else f"{got} where the model's returns {shapes}"
    return f"the pruned model's train forward {why} (torch.export planned the eval forward only): {detail}"


def _ran(model: nn.Module, inputs: Inputs) -> Ran | None:
    """Where ``model``'s train forward runs, with the shapes it returns: on a meta copy, on a
    copy with its weights and the real inputs (neither on meta), or nowhere we can tell."""
    got = _outputs(model, inputs, meta=True)
    if not isinstance(got, str):
        return "meta", got
    args, kwargs = normalize_inputs(inputs)
    tensors = [*model.parameters(), *model.buffers(), *(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))]
    if any(t.is_meta for t in tensors):
        return None
    got = _outputs(model, inputs, meta=False)
    return None if isinstance(got, str) else ("weights", got)


def _outputs(model: nn.Module, inputs: Inputs, *, meta: bool) -> Shapes | str:
    """The shapes the train forward of a copy of ``model`` returns, or why it raises: a
    weightless meta copy on meta inputs, or a copy with the weights on ``inputs`` (its
    statistics updates stay in it)."""
    copy = copy_model(model, weights=not meta).train()
    args, kwargs = normalize_inputs(inputs)
    if meta:
        copy, args, kwargs = copy.to("meta"), to_meta(args), to_meta(kwargs)
    try:
        with torch.no_grad():
            out = copy(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the train forward raises
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
