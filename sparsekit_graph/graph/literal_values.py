"""What a node holds where that is known without weights: a tensor the code made of literals
(``torch.tensor(1e-5)``, ``h.new_full((1,), 1e-5)``), and a node's own op run on values put
in place of its inputs (``run_op``: the masked values, the value of an op at zero)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .meta import META, TRACED_CONSTANT
from .normalize import normalize
from .pointwise_ops import POINTWISE_FUNCTIONS

__all__ = ["CASTS", "COPIES_AND_CASTS", "ELEMENTS", "constant", "run_op"]

COPIES_AND_CASTS = {
    torch.Tensor.to, torch.Tensor.type_as, torch.clone, torch.Tensor.contiguous, torch.detach, torch.Tensor.detach,
    torch.Tensor.data, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.requires_grad_, torch.Tensor.requires_grad,
}  # fmt: skip
CASTS = {torch.Tensor.to, torch.Tensor.type_as}  # ``.half()``, ``.type(torch.float16)``: ``to``
ELEMENTS = 1 << 20  # the largest tensor computed (a one-channel slice, a constant)
_LITERALS = {torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.full, torch.ones, torch.zeros}
_NEW_LITERALS = {Tensor.new_tensor, Tensor.new_full, Tensor.new_ones, Tensor.new_zeros}  # ``h.new_tensor(1e-5)``
_CONSTANT = "skg.constant"  # node.meta: the tensor a node makes of literals, or None


def constant(n: fx.Node) -> Tensor | None:
    """The value of a tensor the code made of literals (``torch.tensor(1e-5)``,
    ``torch.tensor(1e-5, device=h.device)``, ``h.new_ones(()) * 1e-5``), else None. A buffer's
    or parameter's value is not read: on meta weights there is none, and the plan on meta
    weights is the plan on real ones."""
    if n.op == "get_attr":
        return _held(n.meta.get(TRACED_CONSTANT))
    if n.op not in ("call_function", "call_method"):
        return None
    if _CONSTANT not in n.meta:
        operands = _constant_operands(n)
        n.meta[_CONSTANT] = None if operands is None else _held(run_op(n, operands))
    return n.meta[_CONSTANT]


def _held(value: object) -> Tensor | None:
    """A constant's value on the CPU, where it is one small enough to compute with."""
    if not isinstance(value, Tensor) or value.is_meta or value.numel() > ELEMENTS:
        return None
    return value.detach().cpu()


def _constant_operands(n: fx.Node) -> dict[fx.Node, Any] | None:
    """The operands of a tensor made of literals, as they are made on the CPU: a device read
    off a tensor (``device=h.device``) is the CPU; a tensor only its dtype is read from (``h``
    in ``h.new_tensor(1e-5)`` and ``c.to(h)``) an empty one of that dtype; a tensor operand a
    constant. None where anything else enters (``h.new_tensor(h.size(1))``, ``h * 2``)."""
    call = normalize(n)
    if call.op in _NEW_LITERALS:
        typed = [call.args.get("input")]
    elif call.op in CASTS:
        typed = [v for k, v in call.args.items() if k != "input"]
    elif call.op in _LITERALS or call.op in POINTWISE_FUNCTIONS or call.op in COPIES_AND_CASTS:  # ``lift_fresh_copy``
        typed = []
    else:
        return None
    others: list[fx.Node] = []
    fx.node.map_arg([v for v in call.args.values() if not any(v is t for t in typed)], others.append)
    operands: dict[fx.Node, Any] = {}
    for a in n.all_input_nodes:
        value = a.meta.get(META)
        if a in typed and a not in others and isinstance(value, Tensor):
            operands[a] = torch.empty((), dtype=value.dtype)
        elif isinstance(value, (torch.device, torch.dtype)):
            operands[a] = torch.device("cpu") if isinstance(value, torch.device) else value
        elif (known := constant(a)) is not None:
            operands[a] = known
        else:
            return None
    return operands


def run_op(x: fx.Node, slices: dict[fx.Node, Any], layer: nn.Module | None = None) -> Any:
    """``x``'s op on ``slices`` in place of its inputs (None where it fails there)."""
    args, kwargs = fx.node.map_arg((x.args, x.kwargs), slices.__getitem__)
    try:
        with torch.no_grad():
            if layer is not None:
                return layer(*args, **kwargs)
            if x.op == "call_method":
                return getattr(args[0], x.target)(*args[1:], **kwargs)
            return x.target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an op that will not run on a slice: not known
        return None
