"""A model's example inputs: normalised, matched to its forward's parameters, run on meta."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx._symbolic_trace import _assert_is_none

from ..errors import TraceError
from .meta_pass import MetaRunner

__all__ = ["Inputs", "fixed_forward_args", "flat_inputs", "normalize_inputs", "propagate"]

Inputs = Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def normalize_inputs(example_inputs: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Tensor, tuple/list or dict of tensors -> (args, kwargs)."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    raise TraceError(f"example_inputs must be a tensor, tuple or dict of tensors, got {type(example_inputs).__name__}")


def fixed_forward_args(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Fix the forward parameters the caller does not pass (e.g. HF's many optional kwargs),
    and the inputs it passes as None (a Proxy cannot answer ``is None``)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    passed = {p.name for p in params[: len(args)]} | set(kwargs)
    fixed = {
        p.name: p.default
        for p in params
        if p.name not in passed and p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    given = dict(zip(positional, args)) | kwargs
    fixed |= {name: None for name, v in given.items() if v is None and name in named}  # ``if scale is not None``
    return fixed or None


def propagate(graph: fx.Graph, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    flat = flat_inputs(graph, args, kwargs)
    with torch.no_grad():
        MetaRunner(model, graph).run(*flat)


def flat_inputs(graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The example inputs in the order of the graph's placeholders."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    named = {n.target for n in placeholders}
    flat: list[Any] = list(args)
    for n in placeholders[len(args) :]:
        if n.target in kwargs:
            flat.append(kwargs[n.target])
        elif str(n.target).startswith("**"):  # forward(x, **extra): the keyword inputs no parameter takes
            flat.append({k: v for k, v in kwargs.items() if k not in named})
            named |= set(kwargs)
        elif any(u.target is _assert_is_none for u in n.users):  # a keyword input fixed as None (``scale_1``)
            flat.append(None)
        elif n.args:
            flat.append(n.args[0])
        else:
            raise TraceError(f"no example input for model input {n.target!r}")
    unknown = {k for k, v in kwargs.items() if v is not None} - named  # a None is fixed (``fixed_forward_args``)
    if unknown:
        raise TraceError(f"example inputs {sorted(unknown)} are not inputs of the model's forward")
    if len(flat) > len(placeholders):
        raise TraceError(f"{len(flat)} example inputs given, the model's forward takes {len(placeholders)}")
    return flat
