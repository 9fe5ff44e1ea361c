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
