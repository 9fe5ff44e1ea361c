"""Forwards of a pruned copy that ``torch.export``'s graph does not hold, where it planned the
model: the graph is the eval forward's, with ``use_cache=False`` where the forward takes it.

- The train forward: code only training runs (``if self.training: h.view(b, c // 4, 4)``,
  ``return y, h``) was never planned.
- The eval forward as the user calls it, with the cache its config asks for: RWKV sizes its
  recurrent state by ``config.hidden_size``, whatever its attention kept.

``prune`` runs each on the model and on its pruned copy and refuses a pruning under which only
the pruned one fails, or returns other shapes: on weightless meta copies, or, where the model's
own forward does not run on meta (``.item()``, ``torch.arange(n)`` made on the CPU), on copies
with their weights and the real inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..errors import SparseKitError
from ..graph.export import batched_experts, no_cache
from ..graph.forward_modes import code_reads
from ..graph.meta_pass import to_meta
from ..graph.trace_inputs import Inputs, normalize_inputs
from .copying import copy_model

__all__ = ["Ran", "check_untraced_forwards", "untraced_failure"]

Weighted = Callable[[], nn.Module]  # the pruned model with its weights, built where needed
Shapes = list[tuple[int, ...]]  # of the tensors a forward returns, in order
Ran = tuple[str, Shapes]  # where the model's forward runs ("meta", "weights"), and what it returns
_WHAT = {True: "train forward", False: "eval forward with its cache"}


def check_untraced_forwards(model: nn.Module, pruned: nn.Module, inputs: Inputs) -> None:
    """Raise ``SparseKitError`` where ``pruned`` (a pruned copy of ``model``) fails a forward
    the graph does not hold, or returns other shapes, and ``model`` does not."""
    why = untraced_failure(pruned, inputs, model, weighted=lambda: pruned)
    if why is not None:
        raise SparseKitError(why)


def untraced_failure(
    pruned: nn.Module,
    inputs: Inputs,
    model: nn.Module,
    runs: dict[bool, Ran | None] | None = None,
    weighted: Weighted | None = None,
) -> str | None:
    """Why a forward of ``pruned`` the graph does not hold fails, or returns other shapes, where
    ``model``'s runs; None where each runs alike. ``runs``: a cache of where the model's own
    forwards run ("meta" or "weights") and what shapes they return, by train flag, filled on
    first use; ``weighted``: ``pruned`` with its weights (``pruned`` itself may be weightless),
    asked for where only real weights run."""
    runs = {} if runs is None else runs
    for train in _modes(model, inputs):
        if train not in runs:
            runs[train] = _ran(model, inputs, train)
        if runs[train] is None:
            continue  # the model's own forward fails too: nothing to compare
        where, shapes = runs[train]  # type: ignore[misc]
        got = _outputs(pruned, inputs, meta=True, train=train)
        if isinstance(got, str) and where == "weights":
            if weighted is None:
                continue
            got = _outputs(weighted(), inputs, meta=False, train=train)
        if got != shapes:
            detail = f"fails: {got}" if isinstance(got, str) else f"returns {got} where the model's returns {shapes}"
            return f"the pruned model's {_WHAT[train]} {detail} (torch.export planned the eval forward only)"
    return None


def _modes(model: nn.Module, inputs: Inputs) -> list[bool]:
    """The forwards to run, by train flag: training where the code reads ``self.training``;
    eval where planning turned the cache off."""
    _, kwargs = normalize_inputs(inputs)
    train = [True] if code_reads(model, frozenset(), anywhere=frozenset({"training"})) else []
    return train + ([False] if no_cache(model, kwargs) else [])


def _ran(model: nn.Module, inputs: Inputs, train: bool) -> Ran | None:
    """Where ``model``'s forward runs, with the shapes it returns: on a meta copy, on a copy
    with its weights and the real inputs (neither on meta), or nowhere we can tell."""
    got = _outputs(model, inputs, meta=True, train=train)
    if not isinstance(got, str):
        return "meta", got
    args, kwargs = normalize_inputs(inputs)
    tensors = [*model.parameters(), *model.buffers(), *(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))]
    if any(t.is_meta for t in tensors):
        return None
    got = _outputs(model, inputs, meta=False, train=train)
    return None if isinstance(got, str) else ("weights", got)


def _outputs(model: nn.Module, inputs: Inputs, *, meta: bool, train: bool) -> Shapes | str:
    """The shapes the forward of a copy of ``model`` returns, or why it raises: a weightless
    meta copy on meta inputs, or a copy with the weights on ``inputs`` (its statistics updates
    stay in it)."""
    copy = copy_model(model, weights=not meta).train(train)
    args, kwargs = normalize_inputs(inputs)
    if meta:
        copy, args, kwargs = copy.to("meta"), to_meta(args), to_meta(kwargs)
    try:
        with torch.no_grad(), batched_experts(copy) if meta else nullcontext():  # grouped_mm: bf16 alone on meta
            out = copy(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the forward raises
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
