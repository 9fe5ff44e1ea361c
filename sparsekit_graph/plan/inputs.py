"""What a plan records of the example inputs: each tensor's shape and dtype, each plain value."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..errors import PlanError
from ..graph.trace import Inputs, normalize_inputs
from .schema import InputSpec

__all__ = ["input_specs", "input_values"]


def input_values(example_inputs: Inputs) -> dict[str, Any]:
    """The example inputs by the names their ``InputSpec``s take."""
    args, kwargs = normalize_inputs(example_inputs)
    return {f"input{i}": t for i, t in enumerate(args)} | dict(kwargs)


def input_specs(example_inputs: Inputs) -> list[InputSpec]:
    """What ``prune`` needs to run the forward as ``plan`` did: each tensor's shape and dtype,
    each plain value (``use_b=False``) as it is."""
    args, kwargs = normalize_inputs(example_inputs)
    specs = [(f"input{i}", t, False) for i, t in enumerate(args)] + [(k, t, True) for k, t in kwargs.items()]
    found = []
    for name, t, keyword in specs:
        if isinstance(t, Tensor):
            found.append(InputSpec(name=name, shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."), keyword=keyword))
        elif t is None or type(t) in (bool, int, float, str):
            found.append(InputSpec(name=name, keyword=keyword, tensor=False, value=t))
        elif any(isinstance(v, Tensor) for v in _leaves(t)):  # prune could not rebuild a nested input
            raise PlanError(
                f"example input {name} is a {type(t).__name__} holding tensors: pass its tensors as separate "
                "inputs (a tuple) or keyword inputs (a dict)"
            )
        else:
            raise PlanError(
                f"example input {name} is a {type(t).__name__}: a plan records tensors and plain values "
                "(None, bool, int, float, str), which prune passes to forward again"
            )
    return found


def _leaves(x: object) -> list[object]:
    if isinstance(x, dict):
        return [v for e in x.values() for v in _leaves(e)]
    if isinstance(x, (tuple, list)):
        return [v for e in x for v in _leaves(e)]
    return [x]
