"""Parameters of a model no traced path reads: the plan holds none of them."""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import UnreadParameters
from .schema import Plan

__all__ = ["warn_unread"]


def warn_unread(model: nn.Module, found: Plan) -> None:
    """Warn where the forward read some parameters of ``model`` on no traced path (a route of an
    ``nn.ModuleDict`` the example inputs did not take): the plan holds none of them and prune
    leaves them whole, so such a path may not fit the pruned layers."""
    read = {m.param for g in found.groups for m in g.members}
    unread = [n for n, p in model.named_parameters() if n not in read and p.numel() > 1]
    if unread:
        more = f" and {len(unread) - 3} more" if len(unread) > 3 else ""
        warnings.warn(
            f"no path of {type(model).__name__}'s forward that the example inputs take reads {', '.join(unread[:3])}{more}: "
            "prune leaves them whole, so another path (a route, a branch) may not fit the pruned layers",
            UnreadParameters,
            stacklevel=3,
        )
