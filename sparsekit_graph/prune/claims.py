"""Zero-invariance claims checked at the counts ``prune`` keeps, under ``torch.export``.

The export probe (``plan/probe.py``) tried each group at a few channels (3, 5 or 7): a Python
decision on a channel count that flips only at another count (``2.0 if h.shape[1] != 4 else
3.0``, kept at 4) leaves the same ops and changes only a number, which the probe never saw. A
zero-invariant group promises that the pruned model computes what the masked one does, so
``prune`` refuses where a number of the pruned trace differs from the model's and only
zero-invariant groups lost channels; where groups not zero-invariant (whose pruning may change
numbers: ``h.shape[-1] ** -0.5``) lost channels too, the zero-invariant ones are traced again
alone. Groups not zero-invariant make no promise a number could break.
"""

from __future__ import annotations

import torch.fx as fx
from torch import Tensor, nn

from ..errors import SparseKitError
from ..graph.export_bound import bounded_by
from ..graph.trace import Inputs, trace_graph
from ..plan.schema import Plan
from .checks import changed_numbers, check_pruned, compensated
from .copying import copy_model
from .surgery import remove_channels

__all__ = ["check_claims"]


def check_claims(
    plan: Plan, model: nn.Module, masks: dict[str, Tensor], inputs: Inputs, before: fx.Graph, after: fx.Graph
) -> None:
    """Raise ``SparseKitError`` where pruning ``masks`` makes the code compute other numbers
    though the zero-invariant groups among them promised otherwise.

    Args:
        plan: The plan.
        model: The model (not modified: a copy without weights is pruned where a retrace is needed).
        masks: Removed channels per group.
        inputs: The example inputs both traces were made with.
        before: The model's trace (``torch.export``).
        after: The pruned model's trace, which runs the same code as ``before``.
    """
    cut = {g.name: g.zero_invariant for g in plan.groups if g.name in masks and bool(masks[g.name].any())}
    claimed = sorted(n for n, zi in cut.items() if zi)
    if not claimed:
        return
    changed = changed_numbers(before, after, compensated(plan, masks))
    if changed and not all(cut.values()):  # a group making no claim lost channels too: try the claims alone
        alone = {n: masks[n] for n in _with_tied(plan, claimed) if n in masks}
        if not all(cut.get(n, True) for n in alone):
            return  # tied to groups that make no claim: their numbers cannot be told apart
        try:
            work = copy_model(model, weights=False)
            remove_channels(work, plan, alone)
            with bounded_by(before):
                retraced = trace_graph(work, inputs, dynamic=False)
            check_pruned(plan, alone, before, retraced)
        except SparseKitError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever stops the retrace leaves the claims unproven
            raise SparseKitError(f"zero-invariant group(s) {', '.join(claimed)} pruned alone do not retrace: {e}") from e
        changed = changed_numbers(before, retraced, compensated(plan, alone))
    if changed:
        raise SparseKitError(
            f"the code computes other numbers at these counts (at {', '.join(changed[:3])}), though zero-invariant "
            f"group(s) {', '.join(claimed)} promise the masked model's: the forward decides on a pruned channel count "
            "at a count the plan's export probe did not try; keep other counts or pin the group"
        )


def _with_tied(plan: Plan, names: list[str]) -> list[str]:
    """``names`` and every group a tie joins to them (a tie's parts are pruned together)."""
    out = set(names)
    grew = True
    while grew:
        grew = False
        for tie in plan.ties:
            parts = {p.group for p in tie.parts}
            if parts & out and not parts <= out:
                out |= parts
                grew = True
    return sorted(out)
