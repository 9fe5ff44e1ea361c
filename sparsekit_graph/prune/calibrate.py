"""Run calibration batches through a model and leave it exactly as it was.

A batch is the model's inputs (a tensor, a tuple of positional arguments, or a dict of keyword
arguments) or, when a ``loss_fn`` is given, a pair ``(inputs, target)`` with
``loss_fn(model(inputs), target)`` a scalar tensor. Tensors are moved to the model's device.
The model runs in eval mode (BatchNorm uses its running statistics and updates nothing, dropout
is off); gradients come from ``torch.autograd.grad``, so no ``.grad`` is written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PlanError
from ..model_state import kept

__all__ = ["Batch", "batches", "call_model", "compute_loss", "load_calibration", "model_device", "preserved"]

Batch = tuple[Any, Any]  # (inputs, target or None)


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards the model is as it was (``model_state.kept``): training
    flags, hooks, ``requires_grad``, ``.grad``, buffers (BatchNorm statistics included) and the
    parameters' values, which a forward may change (weight clipping, ``w.data = ...``)."""
    with kept(model, values=True):
        model.eval()
        yield


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def batches(
    calibration: Iterable[Any] | None, loss_fn: Callable[[Any, Any], Tensor] | None, device: torch.device, *, who: str
) -> Iterator[Batch]:
    """``(inputs, target)`` for each calibration batch, on ``device``; ``who`` names the criterion."""
    if calibration is None:
        raise PlanError(f"importance {who!r} needs calibration= batches (an iterable of model inputs)")
    if isinstance(calibration, (Tensor, Mapping)):
        raise PlanError(f"calibration must be an iterable of batches, not a single {type(calibration).__name__}")
    n = 0
    for i, batch in enumerate(calibration):
        if loss_fn is not None:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise PlanError(f"calibration batch {i}: with loss_fn, each batch must be a pair (inputs, target)")
            inputs, target = batch
        else:
            inputs, target = batch, None
        n += 1
        yield _to(inputs, device), _to(target, device)
    if n == 0:
        raise PlanError("calibration: the iterable gave no batches")


def call_model(model: nn.Module, inputs: Any, index: int) -> Any:
    """``model(x)``, ``model(*args)`` or ``model(**kwargs)``; a failure names the batch."""
    try:
        if isinstance(inputs, Mapping):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise PlanError(f"calibration batch {index}: the model failed on it: {e}") from e


def compute_loss(loss_fn: Callable[[Any, Any], Tensor], output: Any, target: Any, index: int) -> Tensor:
    """``loss_fn(output, target)``, checked to be a finite scalar tensor."""
    loss = loss_fn(output, target)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise PlanError(
            f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)} on batch {index}"
        )
    if not bool(torch.isfinite(loss)):
        raise PlanError(f"loss_fn returned {float(loss)} on calibration batch {index}")
    return loss.reshape(())


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def load_calibration(spec: str) -> tuple[Iterable[Any], Callable[[Any, Any], Tensor] | None]:
    """``path/to/file.py:factory`` -> ``(batches, loss_fn)``; ``factory()`` returns the batches,
    or a pair ``(batches, loss_fn)`` (the command line's ``--calibration``)."""
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name:
        raise PlanError(f"calibration {spec!r} must look like 'path/to/file.py:factory'")
    if not Path(path).exists():
        raise PlanError(f"calibration file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or module_spec.loader is None:
        raise PlanError(f"calibration file {path} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise PlanError(f"calibration file {path} has no function {name!r}")
    out = factory()
    if isinstance(out, tuple) and len(out) == 2 and (out[1] is None or callable(out[1])):
        return out[0], out[1]
    return out, None
