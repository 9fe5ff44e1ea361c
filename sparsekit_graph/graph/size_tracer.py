"""The tracer ``trace_graph`` uses: torch.fx symbolic tracing where Python may ask a traced size for its value.

``SizeTracer`` keeps torch.nn layers and layers with a registered rule as leaves, and answers
control flow, conversions and lengths on values made of sizes from a meta-tensor run of the graph
so far; ``size_proxy.SizeProxy`` is the Proxy whose ``int``, ``len``, ``hash`` and text ask it.
"""

from __future__ import annotations

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
from .flow_values import Conversions
from .forward_modes import code_reads
from .meta import CONTROL, META, TO_CHECK, TRACED_CONSTANT, VALUE_READS, WRITTEN_BUFFER, output_node
from .meta_pass import MetaRunner
from .parametrized import traced_through
from .rules import module_rule_for, patched_on_instance
from .size_math import recording_math
from .size_proxy import SizeProxy
from .size_sinks import Sinks
from .tensor_data import recording_tensor_data
from .trace_inputs import flat_inputs
from .user_code import INTERNAL, caller
from .weight_norms import only_weight_norm_pre_hooks

__all__ = ["TRACED_TORCH_LAYERS", "CaughtRefusal", "SizeTracer", "has_hooks", "runs_autocast"]

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
        self._own = {id(m): _layer_tensors(m) for m in model.modules()}  # each layer's own, before the forward runs

    @property
    def model(self) -> nn.Module:
        return self._inputs[0]

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
        if kind == "get_attr" and isinstance(value := _plain_tensor(self.model, str(target)), Tensor):
            node.meta[TRACED_CONSTANT] = value  # as read: the forward may set it to a traced value next (``self.h = h``)
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
        if not _same_tensors(m, self._own.get(id(m))):  # ``functional_call(net, {k: v + 1 ...})``: the tensors it is given
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


class CaughtRefusal(TraceError):
    """The forward caught torch.fx's refusal to branch on a value's data and went on: the
    graph holds the branch the eager forward does not take (torch.export's is checked)."""


_AUTOCAST = frozenset({"autocast"})


def runs_autocast(model: nn.Module) -> bool:
    """Does ``model``'s forward run under autocast (``torch.autocast``, ``torch.amp.autocast``)?
    Asked before the trace: while traced, the model's attributes may hold Proxies."""
    return any(map(torch.is_autocast_enabled, ("cpu", "cuda"))) or bool(code_reads(model, _AUTOCAST))


def _plain_tensor(model: nn.Module, target: str) -> object:
    """The tensor attribute ``target`` names, where it is no parameter or buffer (else None)."""
    *path, attr = target.split(".")
    owner = model
    for p in path:
        owner = owner.__dict__.get("_modules", {}).get(p)
        if owner is None:
            return None
    if attr in owner._parameters or attr in owner._buffers:
        return None
    return owner.__dict__.get(attr)


def _layer_tensors(m: nn.Module) -> tuple[Any, ...]:
    """A layer's parameters and buffers, in order (``functional_call`` swaps them)."""
    return (*m._parameters.values(), *m._buffers.values())


def _same_tensors(m: nn.Module, before: tuple[Any, ...] | None) -> bool:
    now = _layer_tensors(m)
    return before is not None and len(now) == len(before) and all(map(operator.is_, now, before))


def has_hooks(m: nn.Module) -> bool:
    """Forward hooks change what a layer returns, and torch.fx does not trace them. The pre-hooks
    of ``nn.utils.weight_norm`` are modelled (``weight_norms``): the layer's rule reads the weight
    they compute."""
    pre = m._forward_pre_hooks and not only_weight_norm_pre_hooks(m)
    return bool(m._forward_hooks or pre or _module._global_forward_hooks or _module._global_forward_pre_hooks)
