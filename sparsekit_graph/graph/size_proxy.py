"""What a traced value answers while ``SizeTracer`` traces: ``SizeProxy``.

Python may ask a Proxy for a number (``int``, ``len``, ``range``), a hash, text, its class,
its dtype or autograd state, or write into it in place (``g += 1``). A torch.fx Proxy refuses or
answers as no tensor would; a ``SizeProxy`` answers as the tensor does where pruning keeps the
answer (sizes from the meta-tensor run of the graph so far, rank, dtype), and notes on the
tracer where the eager forward may answer otherwise (``TO_CHECK``, a class asked, a data swap).
"""

from __future__ import annotations

import functools
import operator
import sys
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .flow_code import asks_class
from .meta import CONTROL, DATA_SWAPPED, upstream
from .normalize import normalize
from .size_flow import converted_nowhere
from .size_sinks import sinks_now
from .user_code import INTERNAL, by_user, caller

if TYPE_CHECKING:
    from .size_tracer import SizeTracer

__all__ = ["SizeProxy", "autograd_state"]

# Protocol methods a Proxy does not have: torch.fx has no node for a write into a traced value.
_WRITES = frozenset({"__setitem__", "__delitem__"})


class SizeProxy(fx.Proxy):
    """A Proxy that a Python number may be made of (``range(n)``, ``int(n)``, ``float(n)``):
    the number its value has at the example's sizes (see ``SizeTracer``). Only
    ``SizeTracer.proxy`` makes them."""

    tracer: SizeTracer

    def _number(self, kind: type) -> Any:
        value = self.tracer.concrete(self, "number")
        if isinstance(value, (bool, int, float)):
            return kind(value)
        raise TypeError(f"'Proxy' object cannot be interpreted as {kind.__name__}")

    def __index__(self) -> int:
        value = self.tracer.parsed_number(self, sys._getframe(1))  # perhaps torch's parser, for an int argument
        if isinstance(value, (bool, int)):
            return int(value)
        if isinstance(value, tuple):  # a traced size tuple, which the parser reads as a sequence next
            raise TypeError("'Proxy' object of a tuple cannot be interpreted as an integer")
        return self._number(int)

    def __int__(self) -> int:
        return self._converted_number(int)

    def __float__(self) -> float:
        return self._converted_number(float)

    def _converted_number(self, kind: type) -> Any:
        """``int(n)`` / ``float(n)`` in the model's code, where ``n`` is new to Python: a number
        ``flow_values`` follows (a value of tensor arithmetic, or control flow)."""
        new = CONTROL not in self.node.meta
        value = self._number(kind)
        if new and by_user(2) and self.node.meta.get(CONTROL) == "number":
            self.tracer.conversions.note(self.node, sys._getframe(2))
        return value

    def __len__(self) -> int:
        value = self.tracer.concrete(self, None)
        if isinstance(value, Tensor) and value.ndim:
            self.tracer.concrete(self.size(0), "number")
        elif not isinstance(value, (tuple, list)):
            return super().__len__()
        return len(value)

    def traced_length(self) -> fx.Proxy | None:
        """``len(h)`` in the model's code (``param_reads._len``): ``h.shape[0]`` of a tensor, a
        Proxy like that spelling's (else None: ``len`` of a shape is its fixed number of axes)."""
        value = self.tracer.concrete(self, None)
        return self.shape[0] if isinstance(value, Tensor) and value.ndim else None  # type: ignore[index]

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLE0307 - what isinstance() asks once the type check failed
        """A Proxy, truthfully; where the model's code asks (``isinstance(h, torch.Tensor)``,
        ``torch.is_tensor(h)``, ``h.__class__``) the eager forward would get another answer: noted,
        and the trace given up for ``torch.export``'s (see ``SizeTracer.trace``)."""
        frame = sys._getframe(1)
        if frame.f_code is torch.is_tensor.__code__ and frame.f_back is not None:
            frame = frame.f_back
        elif not asks_class(frame):
            return type(self)
        if not frame.f_code.co_filename.startswith(INTERNAL):
            if _a_tensor_or_unknown(self.tracer.concrete(self, None)):
                self.tracer.classes_asked.append(caller(frame))
            else:  # a size is no Tensor either way (timm's ``get_same_padding``), but a torch.Size and an int
                self.tracer.to_check.append(f"the forward asks the class of a traced size at {caller(frame)}")
        return type(self)

    def __getattr__(self, k: str) -> fx.proxy.Attribute:
        if k in _WRITES:  # ``h.__setitem__(i, v)`` is ``h[i] = v``, which torch.fx cannot record: fails alike
            raise AttributeError(f"'Proxy' object has no attribute {k!r}")
        if not hasattr(Tensor, k) and by_user(1):  # ``hasattr(h, "items")``
            value = self.tracer.concrete(self, None)
            if value is not None and not hasattr(value, k):  # as the eager forward would find it: no such attribute
                raise AttributeError(f"{type(value).__name__!r} object has no attribute {k!r}")
        tracer = self.tracer
        if k in _AUTOGRAD:  # ``if h.grad_fn is None``, in the mode traced
            needs, recorded = autograd_state(tracer.model, self.node)  # (``forward_modes`` traces the other)
            if k == "requires_grad":
                return needs
            if not recorded:
                return None  # a leaf's, or none recorded
        cast = k in _CAST and tracer.casts  # meta values are not cast
        if k in _ANSWERED and not cast:  # ``h.dtype is torch.float32``: no Proxy
            value = tracer.concrete(self, None)  # answers ``is`` (a meta value's device is not the tensor's)
            if isinstance(value, Tensor):
                return getattr(value, k)
        elif k.startswith("is_") or cast or (k in _DEVICE and tracer.on_meta):
            if by_user(1):  # ``h.is_cuda is False``
                tracer.to_check.append(f"the forward asks a traced value {k} at {caller(sys._getframe(1))}")
        return _SizeAttribute(self, k)  # ``*h.shape`` asks the attribute for its length

    @property
    def data(self) -> Any:
        return self.__getattr__("data")

    @data.setter
    def data(self, value: Any) -> None:
        """``p.data = ...`` in the model's code swaps what the tensor holds, which no node
        records: noted on its node (``DATA_SWAPPED``), unless it sets back what an in-place op
        on it returned (``p.data += 1``)."""
        if isinstance(value, fx.Proxy) and normalize(value.node).inplace:
            return
        self.node.meta[DATA_SWAPPED] = caller(sys._getframe(1))

    def _converted(self, use: str, text: bool) -> Any:
        """The number (or shape) of sizes this proxy has where the model's code (two frames
        up) makes a hash or text of it, else None. Its node is marked ``CONTROL`` (``use``)
        unless it is text only shown (``size_flow.converted_nowhere``): ``hash(C)``,
        ``len(str(C))`` and ``{16: 1.0}.get(C)`` would not follow a pruned size."""
        tracer = self.tracer
        if not by_user(2):
            return None
        value = tracer.concrete(self, None)
        if text and _a_tensor_or_unknown(value):  # ``print(h, file=buf)``: eagerly "tensor(...)", here "Proxy(...)"
            tracer.to_check.append(f"the forward made text of a traced value at {caller(sys._getframe(2))}")
        if not _numeric(value):
            return None
        if not (text and converted_nowhere(sys._getframe(2), sinks_now(), tracer.sinks)):
            tracer.concrete(self, use)
        return value

    def __hash__(self) -> int:
        value = self._converted("a hash or a lookup", text=False)
        return object.__hash__(self) if value is None else hash(value)

    def __repr__(self) -> str:
        value = self._converted("a conversion to text", text=True)
        return super().__repr__() if value is None else repr(value)

    def __str__(self) -> str:
        value = self._converted("a conversion to text", text=True)
        return super().__repr__() if value is None else str(value)

    def __format__(self, spec: str) -> str:
        value = self._converted("a conversion to text", text=True)
        return object.__format__(self, spec) if value is None else format(value, spec)


# What a traced tensor answers as the tensor does: its dtype, layout and number of axes, which
# pruning keeps (``h.is_floating_point() is True``, ``isinstance(h.dim(), int)``); a Proxy would not
_ANSWERED = frozenset({
    "dtype", "layout", "ndim", "dim", "ndimension", "is_floating_point", "is_complex", "is_signed", "element_size", "itemsize",
})  # fmt: skip
_CAST = frozenset({"dtype", "element_size", "itemsize"})  # what autocast changes
_AUTOGRAD = frozenset({"grad_fn", "requires_grad"})  # None and False where autograd records nothing
# Where a model on meta weights runs: its values answer ``h.device != torch.device("meta")`` unlike the real model's
_DEVICE = frozenset({"device", "get_device"})


def _a_tensor_or_unknown(value: object) -> bool:
    """Would the eager forward find a Tensor here (or is it not known)? A size read is a number."""
    return value is None or isinstance(value, Tensor)


def _numeric(value: object) -> bool:
    """A number, or a tuple of numbers (a shape): what a size read gives."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(isinstance(v, (int, float)) for v in value)
    return isinstance(value, (int, float))


def _in_place(op: Any) -> Any:
    def method(self: SizeProxy, other: Any) -> Any:
        """``g += t`` writes into a tensor ``g`` (``g = h; g += 1`` changes ``h``): recorded as the
        in-place operator, not torch.fx's out-of-place one; a number's stays out of place."""
        if _traced_number(self.node):
            return NotImplemented
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return method


_NUMBER_METHODS = frozenset({"size", "numel", "nelement", "dim", "ndimension", "item", "tolist", "element_size"})


def _traced_number(node: fx.Node) -> bool:
    """Is ``node``, as torch.fx records it, a Python number: a size or a value read, or
    Python arithmetic on them?"""
    if node.op == "call_method":
        return node.target in _NUMBER_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    if node.target is len:
        return True
    if getattr(node.target, "__module__", None) in ("_operator", "math", "builtins"):
        inputs = node.all_input_nodes
        return bool(inputs) and all(_traced_number(a) for a in inputs)
    return False


for _name in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor", "imatmul"):
    setattr(SizeProxy, f"__{_name}__", _in_place(getattr(operator, _name)))


class _SizeAttribute(fx.proxy.Attribute, SizeProxy):
    """``h.shape`` and other attributes of a traced value, answering like ``SizeProxy``."""


def autograd_state(model: nn.Module, node: fx.Node) -> tuple[bool, bool]:
    """(``requires_grad``, has a ``grad_fn``) of ``node``'s value: a parameter's flag and no
    ``grad_fn`` (a leaf); else both where autograd is on and a parameter upstream needs a gradient."""
    if node.op == "get_attr":
        return _attribute_needs_grad(model, node), False
    needs = torch.is_grad_enabled() and any(_needs_grad(model, n) for n in upstream(node))
    return needs, needs


def _needs_grad(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "get_attr":
        return _attribute_needs_grad(model, node)
    return node.op == "call_module" and any(p.requires_grad for p in model.get_submodule(str(node.target)).parameters())


def _attribute_needs_grad(model: nn.Module, node: fx.Node) -> bool:
    value = functools.reduce(getattr, str(node.target).split("."), model)
    return bool(getattr(value, "requires_grad", False))
