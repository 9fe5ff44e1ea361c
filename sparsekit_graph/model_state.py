"""Put a model back as it was after the library ran its ``forward``.

A user's ``forward`` may change its own model: freeze a layer (``requires_grad_(False)``),
register a hook once, clip its weights (``w.clamp_()`` under ``no_grad``), replace a weight's
data (``w.data = F.normalize(w)``), swap a submodule or a parameter. ``kept(model)`` records
what a forward can reach and puts it back afterwards: every module's training flag, hook
dictionaries and ``_parameters`` / ``_buffers`` / ``_modules``, the contents of every list, dict,
set and deque a module holds (``self.hist.append(...)``, a feature cache: ``containers``), and
every parameter's and buffer's data, ``requires_grad`` and ``.grad``. With ``values=True`` the
tensors' contents are copied first and written back where they changed (calibration runs real
batches through the user's weights); with ``values=False`` only what costs no copy is restored (planning traces
without running the weights' in-place ops, so their contents never change there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from operator import attrgetter, methodcaller

import torch
from torch import Tensor, nn

from .containers import record, restore
from .errors import TraceError

__all__ = ["kept"]

# A parameter or buffer as it was: the tensor, ``tensor.detach()`` (the storage it held:
# ``.data = ...`` swaps it), ``requires_grad``, ``.grad``, and its contents where ``values=True``.
_TensorState = tuple[Tensor, Tensor, bool, "Tensor | None", "Tensor | None"]


@contextmanager
def kept(model: nn.Module, *, values: bool = True) -> Iterator[None]:
    """Run the body, then restore what it changed of ``model`` (see the module docstring)."""
    _refuse_unreadable(model)
    modules = list(model.modules())
    flags = [m.training for m in modules]
    held = record(list(chain.from_iterable(map(methodcaller("values"), map(attrgetter("__dict__"), modules)))))
    tensors = _record(modules, values)
    try:
        yield
    finally:
        restore(held)  # hook dictionaries, _parameters / _buffers / _modules, the user's lists
        for m, flag in zip(modules, flags):
            if m.training != flag:
                object.__setattr__(m, "training", flag)
        for s in tensors:
            t, data, requires_grad, grad, copy = s
            if copy is None and t.requires_grad == requires_grad and t.grad is grad and _same_data(t, data):
                continue  # the common case, checked cheaply
            _restore(s)


def _refuse_unreadable(model: nn.Module) -> None:
    """A lazy module's weight has no shape until a forward runs; initialising it here would
    change the user's model, so planning and pruning refuse it by name. A TorchScript module
    (``torch.jit.script`` / ``trace``) runs compiled code neither tracer can follow."""
    for prefix, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            raise TraceError(
                f"{prefix or 'the model'!r} is a TorchScript module ({type(m).__name__}): plan the eager module it was made from"
            )
        for name, t in chain(m._parameters.items(), m._buffers.items()):
            if t is not None and nn.parameter.is_lazy(t):
                where = f"{prefix}.{name}" if prefix else name
                raise TraceError(f"{where} of a lazy module is not initialized: run the model once on an example input first")


def _record(modules: list[nn.Module], values: bool) -> list[_TensorState]:
    """Every parameter and buffer of ``modules`` once (a shared one is one state)."""
    seen: dict[int, Tensor] = {}
    for m in modules:
        for d in (m._parameters, m._buffers):
            for t in d.values():
                if t is not None:
                    seen.setdefault(id(t), t)
    if not values:
        return [(t, t.detach(), t.requires_grad, t.grad, None) for t in seen.values()]
    with torch.no_grad():
        return [(t, t.detach(), t.requires_grad, t.grad, None if t.is_meta else t.detach().clone()) for t in seen.values()]


def _restore(s: _TensorState) -> None:
    t, data, requires_grad, grad, copy = s
    with torch.no_grad():
        if _swapped(t, data):
            t.data = data  # ``w.data = ...`` in forward
        if copy is not None and not torch.equal(t, copy):
            t.copy_(copy)
    if t.is_leaf and t.requires_grad != requires_grad:
        t.requires_grad_(requires_grad)
    if t.grad is not grad:
        t.grad = grad


def _same_data(t: Tensor, before: Tensor) -> bool:
    try:
        return t.data_ptr() == before.data_ptr() and t.shape == before.shape and t.dtype == before.dtype
    except RuntimeError:
        return True


def _swapped(t: Tensor, before: Tensor) -> bool:
    """Does ``t`` hold other data than ``before`` (``.data`` assigned)? False where a layout
    has no data pointer to compare (sparse)."""
    if t.shape != before.shape or t.dtype != before.dtype or t.device != before.device:
        return True
    try:
        return t.data_ptr() != before.data_ptr()
    except RuntimeError:
        return False
