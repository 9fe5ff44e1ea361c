"""FastTracer records exactly the graph fx.Tracer records: nodes, arguments, module stacks, scopes."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.fx import _symbolic_trace

from sparsekit_graph.graph.fast_tracer import FastTracer

Pair = namedtuple("Pair", ["a", "b"])


class _Twice(nn.Module):
    """A submodule called twice (module stack keys ``name@1``), with keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return F.relu(self.conv(x)) * scale


class _Literals(nn.Module):
    """Every kind of argument create_arg lowers: literals, tuples, lists, dicts, slices, a
    named tuple, dtypes and devices, a parameter and a buffer read in forward, a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = _Twice()
        self.gain = nn.Parameter(torch.ones(4))
        self.register_buffer("shift", torch.zeros(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.stem(x)
        h = self.block(self.block(h, scale=0.5))
        h = h * self.gain.view(1, -1, 1, 1) + self.shift[None, :, None, None]
        h = torch.cat([h[:, :2], h[:, 2:]], dim=1).permute(0, 1, 3, 2)
        h = F.pad(h, (1, 1, 0, 0), mode="constant", value=0.0)[..., 1:-1]
        h = h.to(torch.float32).to(device=x.device) + torch.tensor(1.0)
        pooled = h.mean(dim=(2, 3), keepdim=False)
        pair = Pair(pooled, pooled * 2)
        return {"out": self.head(pair.a + pair.b), "parts": (h.size(1), [h.shape[-1], None])}


def _record(tracer: fx.Tracer, model: nn.Module) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    graph = tracer.trace(model)
    nodes = [(n.op, n.name, str(n.target), str(n.args), str(n.kwargs), n.meta.get("nn_module_stack")) for n in graph.nodes]
    return nodes, dict(tracer.node_name_to_scope)


@pytest.mark.parametrize(
    ("build", "get_attrs"),
    [
        pytest.param(_Literals, 3, id="literals"),
        pytest.param(lambda: torchvision.models.resnet18(), 0, id="resnet18"),
        pytest.param(lambda: torchvision.models.mobilenet_v3_small(), 0, id="mobilenet_v3_small"),
    ],
)
def test_same_graph_as_fx_tracer(build: Any, get_attrs: int) -> None:
    torch.manual_seed(0)
    fast = _record(FastTracer(), build().eval())
    torch.manual_seed(0)
    plain = _record(fx.Tracer(), build().eval())  # a fresh model: tracing leaves constants on the root
    assert fast == plain
    assert sum(op == "get_attr" for op, *_ in fast[0]) == get_attrs  # a parameter and two constants
    assert any(stack and len(stack) > 1 for *_, stack in fast[0])  # nested module stacks recorded


def test_scope_restored_after_a_failing_layer() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("no")

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Sequential(Fails())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    tracer = FastTracer()
    with pytest.raises(ValueError, match="no"):
        tracer.trace(Outer())
    assert (tracer.scope.module_path, tracer.scope.module_type) == ("", None)


class _Lookup(nn.Module):
    """A class with its own ``__getattr__`` (it calls ``nn.Module``'s, which fx patches)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def __getattr__(self, name: str) -> Any:
        return super().__getattr__(name)


class _Called(nn.Linear):
    """A class with its own ``__call__`` around ``nn.Module.__call__``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs) * 2


class _OwnDunders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.called = _Lookup(), _Called(4, 4)
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block.inner(x) * self.gain + self.block.inner.weight.sum()
        return self.called(h)


class _Unregistered(nn.Module):
    """A layer the root does not hold: fx refuses it (``path_of_module``), and so must we."""

    def __init__(self, made_in_forward: bool) -> None:
        super().__init__()
        self.fc, self.made_in_forward = nn.Linear(4, 4), made_in_forward
        self.plain = [nn.ReLU()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.ReLU()(self.fc(x)) if self.made_in_forward else self.plain[0](self.fc(x))


def test_same_graph_as_fx_tracer_with_own_dunders() -> None:
    torch.manual_seed(0)
    fast = _record(FastTracer(), _OwnDunders().eval())
    torch.manual_seed(0)
    assert fast == _record(fx.Tracer(), _OwnDunders().eval())
    assert [t for op, _, t, *_ in fast[0] if op == "call_module"] == ["block.inner"]  # `called` is traced through


@pytest.mark.parametrize("made_in_forward", [False, True])
def test_unregistered_layer_refused_as_fx_refuses(made_in_forward: bool) -> None:
    errors = []
    for tracer in (FastTracer(), fx.Tracer()):
        with pytest.raises(NameError) as info:
            tracer.trace(_Unregistered(made_in_forward))
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_no_module_class_written_while_tracing() -> None:
    """fx's trace writes ``nn.Module.__call__`` and ``__getattr__`` (a slot update of every
    subclass); FastTracer writes neither, and leaves every class as it found it."""
    model = torchvision.models.resnet18().eval()
    classes = (*{type(m) for m in model.modules()}, nn.Module)
    before = {c: dict(vars(c)) for c in classes}
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    tracer = FastTracer()
    seen: list[tuple[Any, Any]] = []
    call_module = tracer.call_module

    def spy(*args: Any) -> Any:
        seen.append((nn.Module.__call__, nn.Module.__getattr__))
        return call_module(*args)

    tracer.call_module = spy  # type: ignore[method-assign]
    tracer.trace(model)
    assert seen and all(c is call and g is getattr_ for c, g in seen)
    assert {c: dict(vars(c)) for c in classes} == before


class _MyLN(nn.LayerNorm):
    """Keeps its parent's forward: a leaf with LayerNorm's rule (issue 7: one lookup for subclasses)."""


class _Subclassed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(6, 8), _MyLN(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.fc(x))
        return self.head(self.attn(h, h, h, need_weights=False)[0] + h)


@pytest.mark.parametrize("pruned_mha", [False, True])
def test_plans_equal_with_fx_patches(monkeypatch: pytest.MonkeyPatch, pruned_mha: bool) -> None:
    """The planner inspects classes while tracing (a subclass that keeps its parent's forward is
    a leaf): the patches on the root's classes must not read as an override of theirs."""
    import sparsekit_graph as skg
    from sparsekit_graph.graph.rules import module_rule_for
    from sparsekit_graph.graph.trace import trace_graph
    from sparsekit_graph.prune.mha import PrunedMultiheadAttention

    x = torch.randn(2, 5, 6)

    def planned() -> tuple[str, list[str]]:
        module_rule_for.cache_clear()  # the leaf decision is cached per class
        torch.manual_seed(0)
        model = _Subclassed().eval()
        if pruned_mha:
            model.attn.__class__ = PrunedMultiheadAttention
        leaves = [str(n.target) for n in trace_graph(model, (x,)).nodes if n.op == "call_module"]
        return skg.plan(model, x).model_dump_json(), leaves

    cheap = planned()
    monkeypatch.setattr(FastTracer, "trace", lambda self, root, concrete_args=None: fx.Tracer.trace(self, root, concrete_args))
    assert cheap == planned()
    assert cheap[1] == ["fc", "norm", "attn", "head"]


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.fc = nn.Parameter(torch.randn(4, 4)), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x @ self.w.t())


class _TracesInForward(nn.Module):
    """A forward that traces a submodule (and a fresh one) itself: that trace is fx's alone, as
    under fx, where the inner trace's patches shadow the outer's. ``box`` holds a parameter: a
    plain ``nn.Module`` (``nn.Module`` itself is then one of the patched classes) or a layer."""

    def __init__(self, inner: str, box: bool) -> None:
        super().__init__()
        self.sub, self.head, self.box = _Inner(), nn.Linear(4, 4), nn.Module() if box else nn.Identity()
        self.box.p = nn.Parameter(torch.ones(4))
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for target in (self.sub, _Inner()):
            if self.inner == "symbolic_trace":
                graph = fx.symbolic_trace(target).graph
            else:
                graph = (FastTracer if self.inner == "fast" else fx.Tracer)().trace(target)
            self.seen.append([(n.op, str(n.target), str(n.args), n.meta.get("nn_module_stack")) for n in graph.nodes])
        return self.head(self.sub(x)) * self.box.p


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("inner", ["fx", "fast", "symbolic_trace"])
def test_nested_trace_same_as_under_fx(inner: str, box: bool) -> None:
    records = []
    for tracer in (FastTracer(), fx.Tracer()):
        torch.manual_seed(0)
        model = _TracesInForward(inner, box)
        records.append((_record(tracer, model), model.seen))
        assert _symbolic_trace.CURRENT_PATCHER is None and "__getattr__" not in vars(_Inner)
    assert records[0] == records[1]
    fresh = [op for op, *_ in records[0][1][1]]  # the fresh layer's own graph: its parameter read as fx reads it
    assert fresh == ["placeholder", "get_attr", "call_method", "call_function", "call_module", "output"]


class _ImplCaller(nn.Linear):
    """Its own ``__call__`` runs ``_call_impl`` directly: fx (which catches ``nn.Module.__call__``) traces it through."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_impl(*args, **kwargs)


class _CallPaths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.direct, self.own = _ImplCaller(4, 4), nn.Linear(4, 4)
        self.own._call_impl = lambda *args, **kwargs: self.own.forward(*args, **kwargs) * 2  # fx catches it before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.own(self.direct(x))


class _Frozen(type(nn.Module)):  # type: ignore[misc]
    """A metaclass refusing writes to its classes once frozen (fx writes only ``nn.Module``)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        if getattr(cls, "frozen", False):
            raise TypeError(f"{cls.__name__} is frozen")
        super().__setattr__(name, value)


class _FrozenLayer(_Inner, metaclass=_Frozen):
    frozen = True


@pytest.mark.parametrize(
    "build", [_CallPaths, lambda: nn.Sequential(nn.Linear(4, 4), _FrozenLayer())], ids=["call_paths", "frozen"]
)
def test_call_paths_and_metaclasses_as_fx(build: Any) -> None:
    torch.manual_seed(0)
    fast = _record(FastTracer(), build())
    torch.manual_seed(0)
    assert fast == _record(fx.Tracer(), build())
    assert _symbolic_trace.CURRENT_PATCHER is None and "__getattr__" not in vars(nn.Linear)
