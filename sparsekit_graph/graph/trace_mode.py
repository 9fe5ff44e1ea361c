"""The model as tracing needs it, and as it was after: train/eval flags, buffers, attributes."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import eq, is_
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..containers import CONTAINERS, record, restore
from ..errors import TraceError
from .hidden_writes import written_tensors

__all__ = ["MODULE_KEYS", "Undo", "model_mode", "unfused_attention"]

MODULE_KEYS = frozenset(nn.Module().__dict__)  # torch's own: hook dictionaries, _parameters, ...


class Undo:
    """Puts the modules' attributes and containers back at once (between a failed trace and the
    next); ``created()``: the parameters and buffers the forward registered while traced."""

    def __init__(
        self, modules: list[nn.Module], put_back: Callable[[], None], attributes: list[tuple[Any, dict[str, Any]]]
    ) -> None:
        self._stores = [(m, dict(m._parameters), dict(m._buffers)) for m in modules]
        self._put_back = put_back
        self._attributes = attributes

    def set_attributes(self) -> Iterator[tuple[Any, str, Any]]:
        """(owner, name, value) of each attribute the forward set since the trace began."""
        for m, before in self._attributes:
            now = m.__dict__
            if len(now) == len(before) and all(map(is_, now.values(), before.values())):
                continue  # the common case: nothing set, checked in C
            yield from ((m, k, v) for k, v in now.items() if k not in before or before[k] is not v)

    def __call__(self) -> None:
        self._put_back()
        self.replaced()
        for m, params, buffers in self._stores:  # ``self.register_buffer("scale", ...)`` on a first call
            for store, before in ((m._parameters, params), (m._buffers, buffers)):
                for k in [k for k in store if k not in before]:
                    del store[k]

    def replaced(self) -> None:
        """Put back the parameters and buffers the forward replaced (``self.ema = 0.9 * self.ema
        + ...``: a Proxy while traced, which the shape pass would run as the buffer)."""
        for m, params, buffers in self._stores:
            for store, before in ((m._parameters, params), (m._buffers, buffers)):
                for k, v in before.items():
                    if k in store and store[k] is not v:
                        store[k] = v

    def created(self) -> dict[int, Tensor]:
        """id -> tensor of each parameter and buffer registered since the trace began."""
        return {
            id(t): t
            for m, params, buffers in self._stores
            for store, before in ((m._parameters, params), (m._buffers, buffers))
            for k, t in store.items()
            if k not in before and t is not None
        }


@contextmanager
def model_mode(model: nn.Module, train: bool, modules: list[nn.Module]) -> Iterator[Undo]:
    """Put every submodule in train/eval mode; afterwards restore each one's own flag, any
    buffer that tracing changed in place (e.g. a norm layer counting ``num_batches_tracked``
    while its Python code runs under the tracer), and the attributes, containers, parameters and
    buffers the forward set or registered (a buffer made on a first call). Yields the ``Undo``
    that does the last at once."""
    flags = [m.training for m in modules]
    buffers = [b for b in {id(b): b for m in modules for b in m._buffers.values() if b is not None}.values() if not b.is_meta]
    versions = [b._version for b in buffers]
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    owners = [*modules, *_plain_objects(modules)]  # a config, a stats record: their attributes are state too
    attributes = [(m, dict(m.__dict__)) for m in owners]
    # lists, dicts, sets, deques forward fills (a bias cache, ``self.hist.append(h.shape[1])``): not
    # to hold a Proxy or a FakeTensor after the trace; and hook dictionaries (transformers installs
    # its output-capturing hooks on a first call, with a flag attribute that goes with the rest:
    # the hooks must go too, or the next call installs them twice). torch's other dictionaries
    # are left to ``kept``.
    values = [v for _, d in attributes for k, v in d.items() if _held_key(k)]
    held = record([v for v in (*values, *_closed_over(values)) if type(v) in CONTAINERS])
    # model.train() only where it changes something: some flag differs, or a layer overrides train()
    switch = any(flag != train or type(m).train is not nn.Module.train for m, flag in zip(modules, flags))
    written = _Written(model)
    if switch:
        try:
            with written:  # a layer's own ``train()`` may fold a scale into its weight
                model.train(train)
        except Exception as e:  # noqa: BLE001 - the user's own ``train()``
            written.put_back()
            _restore_attributes(attributes)
            raise TraceError(f"{type(model).__name__}.train({train}) raised {type(e).__name__}: {e}") from e
    # what a failed trace is undone to: the mode asked for (torch.export, after torch.fx failed, in it too)
    switched = [(m, dict(m.__dict__)) for m in owners] if switch else attributes

    def put_back() -> None:
        _restore_attributes(switched)
        restore(held)

    undo = Undo(modules, put_back, switched)
    try:
        yield undo
    finally:
        undo()  # filled in place while traced (timm LeViT's bias cache, holding a Proxy)
        written.put_back()
        if switch:
            _restore_attributes(attributes)  # what the layers' own ``train()`` set too
            for m, flag in zip(modules, flags):
                object.__setattr__(m, "training", flag)  # a plain attribute: skip Module.__setattr__
        with torch.no_grad():
            for b, version, copy in zip(buffers, versions, saved):
                if b._version != version:
                    if b.shape != copy.shape:  # resized by ``out=``
                        b.resize_(copy.shape)
                    b.copy_(copy)


class _Written(TorchDispatchMode):
    """While active, each parameter of ``model`` written in place is copied first; ``put_back``
    restores them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model
        self._saved: dict[int, tuple[Tensor, Tensor]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func._schema.is_mutable:
            written = written_tensors(func, dict(zip((a.name for a in func._schema.arguments), args)) | kwargs)
            own = {t.untyped_storage().data_ptr(): t for t in self._model.parameters() if not t.is_meta} if written else {}
            for _, _, t in written:
                p = None if t.is_meta else own.get(t.untyped_storage().data_ptr())
                if p is not None and id(p) not in self._saved:
                    self._saved[id(p)] = (p, p.detach().clone())
        return func(*args, **kwargs)

    def put_back(self) -> None:
        with torch.no_grad():
            for p, copy in self._saved.values():
                p.copy_(copy)


def _closed_over(values: list[Any]) -> list[Any]:
    """What the closures of the functions among ``values`` hold (``cache = []; self.act =
    lambda t: cache.append(t) or t``)."""
    found = []
    for v in values:
        kind = type(v)
        f = v.__func__ if kind is types.MethodType else v.func if kind is functools.partial else v
        if type(f) is types.FunctionType and f.__closure__:
            for cell in f.__closure__:
                try:
                    found.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
    return found


def _plain_objects(modules: list[nn.Module]) -> list[object]:
    """The plain Python objects (not layers, tensors, containers, classes or functions) the
    modules hold as attributes, once each."""
    found: dict[int, object] = {}
    for m in modules:
        for k, v in m.__dict__.items():
            if k not in MODULE_KEYS and not isinstance(v, _NOT_PLAIN) and type(_own_dict(v)) is dict:
                found.setdefault(id(v), v)
    return list(found.values())


def _own_dict(v: object) -> object:
    """``v.__dict__``, or None (an object with slots whose ``__getattr__`` raises ``KeyError``)."""
    try:
        return object.__getattribute__(v, "__dict__")
    except Exception:  # noqa: BLE001 - no instance dictionary
        return None


_NOT_PLAIN = (nn.Module, Tensor, type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial)


def _held_key(key: str) -> bool:
    return key not in MODULE_KEYS or "hooks" in key


def _restore_attributes(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Python attributes that ``forward`` set while traced (``self.calls += 1``, ``self.last = h``
    left holding a Proxy) get their values back, and the ones it created go, the tensors torch.fx
    adds to the root for its ``get_attr`` nodes (``_tensor_constant0``) included: ``trace_graph``
    keeps those on their nodes (``TRACED_CONSTANT``)."""
    for m, before in saved:
        now = m.__dict__
        if len(now) == len(before) and all(map(is_, now.values(), before.values())) and all(map(eq, now, before)):
            continue  # the common case: nothing set, checked in C
        for k in [k for k in now if k not in before]:
            del now[k]
        for k, v in before.items():
            if k not in now or now[k] is not v:
                now[k] = v


@contextmanager
def unfused_attention() -> Iterator[None]:
    """torch's transformer layers and ``nn.MultiheadAttention`` take their plain path while
    traced, never the fused eval fast path (``torch._transformer_encoder_layer_fwd``,
    ``_native_multi_head_attention``, nested tensors): the graph is then the computation the
    fast path fuses, the same whatever the fast path's own conditions (an odd head count,
    hooks, a padding mask) say, in the model and in its pruned copy."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
