"""The tracer ``trace_graph`` uses: torch.fx symbolic tracing where Python may ask a traced size for its value.

``SizeTracer`` keeps torch.nn layers and layers with a registered rule as leaves, and answers
control flow, conversions and lengths on values made of sizes from a meta-tensor run of the graph
so far; ``SizeProxy`` is the Proxy whose ``int``, ``len``, ``hash`` and text ask it.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
import torch.fx as fx
import torch.fx._symbolic_trace as _symbolic_trace
from torch import Tensor, nn
from torch.nn.modules import module as _module

from ..errors import TraceError
from .buffer_views import BufferOps
from .fast_tracer import FastTracer
from .flow_code import asks_class
from .flow_values import Conversions
from .forward_modes import code_reads
from .meta import CONTROL, DATA_SWAPPED, META, TO_CHECK, VALUE_READS, WRITTEN_BUFFER, output_node
from .meta_pass import MetaRunner
from .normalize import normalize
from .parametrized import traced_through
from .rules import module_rule_for, patched_on_instance
from .size_flow import converted_nowhere
from .size_math import recording_math
from .size_sinks import Sinks, sinks_now
from .tensor_data import recording_tensor_data
from .trace_inputs import flat_inputs
from .user_code import INTERNAL, by_user, caller
from .weight_norms import only_weight_norm_pre_hooks

__all__ = ["TRACED_TORCH_LAYERS", "CaughtRefusal", "SizeProxy", "SizeTracer", "has_hooks"]

# torch.nn layers traced through rather than kept as leaves: made of layers with rules
# (``nn.MultiheadAttention``, linears, norms, dropout) joined by residual adds.
TRACED_TORCH_LAYERS: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer,
)  # fmt: skip


class SizeTracer(FastTracer):
    """torch.nn layers and every layer type with a registered rule stay leaves.

    Python control flow on a value computed from sizes alone (``if x.shape[1] == 64``,
    ``range(h.size(1) // 16)``, ``int(x.size(-1) ** 0.5)``) takes the branch the example's
    sizes take: the value is computed on meta tensors and its node marked ``CONTROL`` (the
    planner pins the axes whose lengths it reads, since the code would not follow a pruned
    size). A condition on tensor data still fails (and the planner tries ``torch.export``).

    torch's argument parser asks a Proxy passed as an int argument for ``__index__`` before it
    hands the call to ``__torch_function__`` (``F.conv2d(h, w, groups=h.shape[1])``): that
    number is tentative (``_parsed``), and unmarked when the call is recorded right after with
    the Proxy itself as an argument, from the same bytecode instruction of the same frame. The
    call's rule then reads the length, as ``view(b, h.shape[1])``'s does."""

    def __init__(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], sinks: Sinks, *, casts: bool = False
    ) -> None:
        super().__init__()
        self._inputs = (model, args, kwargs)
        self._runner: MetaRunner | None = None
        self._parsed: dict[fx.Node, tuple[FrameType, int]] = {}  # node -> the asking frame and instruction
        self.buffer_ops = BufferOps(model)  # ops on buffers alone, rebuilt as nodes (``buffer_views``)
        self.sinks = sinks  # output streams and logging as planning found them (``size_sinks``)
        self.conversions = Conversions(sinks)  # ``float(h.shape[1])``: control flow, or a value (``flow_values``)
        self.classes_asked: list[str] = []  # where the model's code asked a traced value's class (``SizeProxy.__class__``)
        self.refused: list[str] = []  # where a branch on a traced value's data was refused (``to_bool``)
        self.to_check: list[str] = []  # what the eager forward may answer otherwise: its graph is checked (``TO_CHECK``)
        self.on_meta = getattr(next(model.parameters(), None), "is_meta", False)
        self.casts = casts  # the forward runs under autocast, which casts values their meta values do not show

    def autograd_state(self, node: fx.Node) -> tuple[bool, bool]:
        """(``requires_grad``, has a ``grad_fn``) of ``node``'s value: a parameter's flag and no
        ``grad_fn`` (a leaf); else both where autograd is on and a parameter upstream needs a gradient."""
        if node.op == "get_attr":
            return self._attribute_needs_grad(node), False
        needs = torch.is_grad_enabled() and self._upstream_needs_grad(node)
        return needs, needs

    def _attribute_needs_grad(self, node: fx.Node) -> bool:
        value = functools.reduce(getattr, str(node.target).split("."), self._inputs[0])
        return bool(getattr(value, "requires_grad", False))

    def _upstream_needs_grad(self, node: fx.Node) -> bool:
        todo, seen = [node], {node}
        while todo:
            n = todo.pop()
            if n.op == "get_attr" and self._attribute_needs_grad(n):
                return True
            if n.op == "call_module" and any(p.requires_grad for p in self._inputs[0].get_submodule(str(n.target)).parameters()):
                return True
            for a in n.all_input_nodes:
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        return False

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        try:
            with (
                recording_tensor_data(self),
                recording_math(),
                self.buffer_ops,
            ):  # ``torch.tensor(h.size(1))``: a node, not a failure
                graph = super().trace(root, concrete_args)
            if self.classes_asked:  # a branch on ``isinstance(h, torch.Tensor)``: torch.fx took the other one
                raise TraceError(f"the forward asks a traced value's class at {self.classes_asked[0]}: a Proxy is not a Tensor")
            if self.refused:  # ``try: bool(h.sum() > 0) except ...``: the forward went on down the other branch
                raise CaughtRefusal(
                    f"the forward caught torch.fx's refusal to branch on a traced value at {self.refused[0]}: "
                    "branch on values outside a try block"
                )
            for n in graph.nodes:  # values no link explains, whenever the write came
                if n.op == "get_attr" and n.target in self.buffer_ops.written:
                    n.meta[WRITTEN_BUFFER] = True
            if self.to_check:  # the forward may go on from what a Proxy answered: the graph is checked
                output_node(graph).meta[TO_CHECK] = self.to_check[0]
            if self.buffer_ops.values.read:  # ``self.amax.max().item()``: a number no rule sees (``value_reads``)
                output_node(graph).meta[VALUE_READS] = dict(self.buffer_ops.values.read)
            self.conversions.resolve("number")
            return graph
        finally:
            self._parsed.clear()  # no frame outlives the trace

    def create_arg(self, a: Any) -> Any:
        if type(a) is Tensor:  # ``self.scale[:, None, None]``, ``(g * 2).view(...)``: ops on the buffer, not a constant
            node = self.buffer_ops.node(self, a)
            if node is not None:
                return node
        return super().create_arg(a)

    def create_node(
        self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None, type_expr: Any = None
    ) -> fx.Node:
        if self._parsed and kind in ("call_function", "call_method"):
            self._unmark_parsed((args, kwargs))
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        self.conversions.recorded(node)
        return node

    def _unmark_parsed(self, arguments: Any) -> None:
        """Numbers torch's parser read for the call now recorded (same frame, same instruction)
        are arguments of that call, not Python control flow."""
        taken: list[fx.Node] = []
        fx.node.map_arg(arguments, taken.append)
        for n in list(taken):  # and the items the parser read of a traced tuple (``h.shape[:2] + (1, 1)``)
            taken.extend(u for u in n.users if u.target is operator.getitem and u.args[0] is n)
        for n in taken:
            asked = self._parsed.get(n)
            if asked is None:
                continue
            frame: FrameType | None = sys._getframe(1)
            while frame is not None and frame is not asked[0]:
                frame = frame.f_back
            if frame is not None and frame.f_lasti == asked[1]:
                del self._parsed[n]
                n.meta.pop(CONTROL, None)

    def parsed_number(self, obj: fx.Proxy, frame: FrameType) -> Any:
        """``obj.__index__()`` asked from ``frame``: its value, marked a number, tentatively
        where the mark is new (see the class docstring)."""
        new = CONTROL not in obj.node.meta
        value = self.concrete(obj, "number")
        if new and obj.node.meta.get(CONTROL) == "number":
            self._parsed[obj.node] = (frame, frame.f_lasti)
        return value

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if has_hooks(m):
            return True
        if patched_on_instance(m):  # ``layer.forward = MethodType(f, layer)``: its own computation, traced
            return False
        if traced_through(m):  # a parametrization no rule models: the ops that compute the weight
            return False
        if module_rule_for(type(m)) is not None:
            return True
        return not isinstance(m, TRACED_TORCH_LAYERS) and super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return SizeProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self.concrete(obj, "branch")
        if not isinstance(value, (bool, int, float)):
            frame = sys._getframe(1)
            while frame.f_back is not None and frame.f_code.co_filename.startswith(INTERNAL):
                frame = frame.f_back  # the model's line
            self.refused.append(caller(frame))  # raised next: if the trace ends, the forward caught it
            return super().to_bool(obj)
        return bool(value)

    def iter(self, obj: fx.Proxy) -> Iterator:
        value = self.concrete(obj, None)
        if isinstance(value, Tensor) and value.ndim:  # ``for row in h``: as many turns as h.size(0)
            self.concrete(obj.size(0), "loop")
        elif not isinstance(value, (tuple, list)):  # ``*shape``: as many items as axes, each still traced
            return super().iter(obj)
        return iter([obj[i] for i in range(len(value))])

    def concrete(self, obj: fx.Proxy, control: str | None) -> Any:
        """The value of ``obj`` at the example's sizes (a Tensor when it depends on data);
        ``control`` marks its node as deciding Python control flow."""
        model, args, kwargs = self._inputs
        try:
            if self._runner is None:
                self._runner = MetaRunner(model, self.graph)
                self._runner.start(flat_inputs(self.graph, args, kwargs))
            with torch.no_grad(), _symbolic_trace._maybe_revert_all_patches():  # layers run, not traced
                value = self._runner.value(obj.node)
        except TraceError:
            return None
        if not _tensors(value) and not _sizes_only(obj.node):
            return None  # ``x.device.type == "cpu"``: meta values would answer for another device
        if control is not None and not isinstance(value, Tensor):
            obj.node.meta.setdefault(CONTROL, control)
            self._parsed.pop(obj.node, None)  # asked again: Python decides on it, whatever the parser did
            self.conversions.decided(obj.node)
        return value


def _tensors(value: object) -> bool:
    """A tensor, or a tuple / list of them (``*x.chunk(2, 1)``: as many parts as meta tensors give)."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(isinstance(v, Tensor) for v in value)
    return isinstance(value, Tensor)


# Reads of a tensor whose value meta tensors give as the real ones would (not ``device``).
_SIZE_METHODS = frozenset({"size", "dim", "numel", "nelement", "ndimension", "is_floating_point"})
_SIZE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "is_nested"})
_SIZE_FUNCTIONS = frozenset({len, torch.is_floating_point})  # a mask's dtype, as F._canonical_mask asks it


def _sizes_only(node: fx.Node) -> bool:
    """Is ``node`` computed from tensors only through their sizes (shape, ndim, dtype, layout)?"""
    todo, seen = [node], {node}
    while todo:
        n = todo.pop()
        for a in n.all_input_nodes:
            if isinstance(a.meta.get(META), Tensor):
                size_read = (n.op == "call_method" and n.target in _SIZE_METHODS) or (
                    n.op == "call_function"
                    and (n.target in _SIZE_FUNCTIONS or (n.target is getattr and n.args[1] in _SIZE_ATTRIBUTES))
                )
                if not size_read:
                    return False
            elif a not in seen:
                seen.add(a)
                todo.append(a)
    return True


# Protocol methods a Proxy does not have: torch.fx has no node for a write into a traced value.
_WRITES = frozenset({"__setitem__", "__delitem__"})


class CaughtRefusal(TraceError):
    """The forward caught torch.fx's refusal to branch on a value's data and went on: the
    graph holds the branch the eager forward does not take (torch.export's is checked)."""


class SizeProxy(fx.Proxy):
    """A Proxy that a Python number may be made of (``range(n)``, ``int(n)``, ``float(n)``):
    the number its value has at the example's sizes (see ``SizeTracer``)."""

    def _number(self, kind: type) -> Any:
        value = self.tracer.concrete(self, "number") if isinstance(self.tracer, SizeTracer) else None
        if isinstance(value, (bool, int, float)):
            return kind(value)
        raise TypeError(f"'Proxy' object cannot be interpreted as {kind.__name__}")

    def __index__(self) -> int:
        if isinstance(self.tracer, SizeTracer):  # perhaps torch's parser, for an int argument (see ``SizeTracer``)
            value = self.tracer.parsed_number(self, sys._getframe(1))
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
        new = isinstance(self.tracer, SizeTracer) and CONTROL not in self.node.meta
        value = self._number(kind)
        if new and by_user(2) and self.node.meta.get(CONTROL) == "number":
            self.tracer.conversions.note(self.node, sys._getframe(2))  # type: ignore[attr-defined]
        return value

    def __len__(self) -> int:
        value = self.tracer.concrete(self, None) if isinstance(self.tracer, SizeTracer) else None
        if isinstance(value, Tensor) and value.ndim:
            self.tracer.concrete(self.size(0), "number")
        elif not isinstance(value, (tuple, list)):
            return super().__len__()
        return len(value)

    def traced_length(self) -> fx.Proxy | None:
        """``len(h)`` in the model's code (``param_reads._len``): ``h.shape[0]`` of a tensor, a
        Proxy like that spelling's (else None: ``len`` of a shape is its fixed number of axes)."""
        value = self.tracer.concrete(self, None) if isinstance(self.tracer, SizeTracer) else None
        return self.shape[0] if isinstance(value, Tensor) and value.ndim else None  # type: ignore[index]

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLE0307 - what isinstance() asks once the type check failed
        """A Proxy, truthfully; where the model's code asks (``isinstance(h, torch.Tensor)``,
        ``torch.is_tensor(h)``, ``h.__class__``) the eager forward would get another answer: noted,
        and the trace given up for ``torch.export``'s (see ``SizeTracer.trace``)."""
        if isinstance(self.tracer, SizeTracer):
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
        if not hasattr(Tensor, k) and isinstance(self.tracer, SizeTracer) and by_user(1):  # ``hasattr(h, "items")``
            value = self.tracer.concrete(self, None)
            if value is not None and not hasattr(value, k):  # as the eager forward would find it: no such attribute
                raise AttributeError(f"{type(value).__name__!r} object has no attribute {k!r}")
        tracer = self.tracer
        if k in _AUTOGRAD and isinstance(tracer, SizeTracer):  # ``if h.grad_fn is None``, in the mode traced
            needs, recorded = tracer.autograd_state(self.node)  # (``forward_modes`` traces the other)
            if k == "requires_grad":
                return needs
            if not recorded:
                return None  # a leaf's, or none recorded
        cast = k in _CAST and isinstance(tracer, SizeTracer) and tracer.casts  # meta values are not cast
        if k in _ANSWERED and not cast and isinstance(tracer, SizeTracer):  # ``h.dtype is torch.float32``: no Proxy
            value = tracer.concrete(self, None)  # answers ``is`` (a meta value's device is not the tensor's)
            if isinstance(value, Tensor):
                return getattr(value, k)
        elif isinstance(tracer, SizeTracer) and (k.startswith("is_") or cast or (k in _DEVICE and tracer.on_meta)):
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
        if not isinstance(tracer, SizeTracer) or not by_user(2):
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
_AUTOCAST = frozenset({"autocast"})
# Where a model on meta weights runs: its values answer ``h.device != torch.device("meta")`` unlike the real model's
_DEVICE = frozenset({"device", "get_device"})


def runs_autocast(model: nn.Module) -> bool:
    """Does ``model``'s forward run under autocast (``torch.autocast``, ``torch.amp.autocast``)?
    Asked before the trace: while traced, the model's attributes may hold Proxies."""
    return any(map(torch.is_autocast_enabled, ("cpu", "cuda"))) or bool(code_reads(model, _AUTOCAST))


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


def has_hooks(m: nn.Module) -> bool:
    """Forward hooks change what a layer returns, and torch.fx does not trace them. The pre-hooks
    of ``nn.utils.weight_norm`` are modelled (``weight_norms``): the layer's rule reads the weight
    they compute."""
    pre = m._forward_pre_hooks and not only_weight_norm_pre_hooks(m)
    return bool(m._forward_hooks or pre or _module._global_forward_hooks or _module._global_forward_pre_hooks)
