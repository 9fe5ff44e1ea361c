"""The ATen ops a forward runs on tensors, compared in order: how ``eager_check`` tells a graph
from the forward where values say nothing (weights on the meta device, random draws)."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["OpLog", "first_other_op", "out_of_place"]


class OpLog(TorchDispatchMode):
    """Note the ATen ops run on tensors (in-place ones as their out-of-place twins), but views,
    copies and the making of constants (a torch.fx graph holds a constant the forward makes
    anew each call)."""

    _ASIDE = frozenset({
        "detach", "clone", "copy_", "_to_copy", "lift_fresh", "lift_fresh_copy", "alias", "contiguous",
        "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range", "sym_constrain_range_for_size",
    })  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        name = out_of_place(func.overloadpacket.__name__)  # ``+=`` may be traced as ``+``
        if not func.is_view and name not in self._ASIDE and any(isinstance(v, Tensor) for v in tree_flatten((args, kwargs))[0]):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def out_of_place(op: str) -> str:
    """``add`` for ``add_``, ``__and__`` for ``__iand__``."""
    if op.startswith("__") and op.endswith("__"):
        return f"__{op[3:]}" if op.startswith("__i") else op
    return op.removesuffix("_")


def first_other_op(eager: list[str], traced: list[str]) -> str | None:
    i = next((i for i, (e, t) in enumerate(zip(eager, traced)) if e != t), min(len(eager), len(traced)))
    if i == len(eager) == len(traced):
        return None
    said = lambda ops: ", ".join(ops[i : i + 3]) or "nothing more"  # noqa: E731
    return f"after {i} ops alike, the forward runs {said(eager)} where the traced graph runs {said(traced)}"
