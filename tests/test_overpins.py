"""Over-pins removed (issue 7: "pinning is not a way out"): each spelling below was pinned
although its exact plan is knowable. Each test checks the group is prunable now and the oracle
holds (masked dense == pruned for zero-invariant groups), and that the relatives which would
not follow a pruned count stay pinned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

C = 8
X4 = (2, 3, 8, 8)


def cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


# -- a depthwise conv whose group count is read off a tensor ------------------------------------


class DepthwiseRead(nn.Module):
    """cbr ``a`` -> ``F.conv2d(h, dw, groups=<count>)`` -> conv ``b``; cbr ``g`` gives a second tensor."""

    def __init__(self, count: Callable[[Tensor, Tensor], object], per_group: int = 1, transposed: bool = False) -> None:
        super().__init__()
        self.a, self.g, self.count, self.transposed = cbr(3, C), cbr(3, C), count, transposed
        self.dw = nn.Parameter(torch.randn(C, per_group, 3, 3) * 0.3)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.a(x), self.g(x)
        conv = F.conv_transpose2d if self.transposed else F.conv2d
        return self.b(conv(h, self.dw, padding=1, groups=self.count(h, g)) + g)


def _decided(h: Tensor, g: Tensor) -> object:
    n = h.shape[1]
    if n < 4:  # Python decides on the count: the traced branch would not follow a pruned one
        raise ValueError(n)
    return n


GROUPS_READ: dict[str, tuple[Callable[[Tensor, Tensor], object], dict[str, object], bool]] = {
    "shape": (lambda h, g: h.shape[1], {}, True),
    "size_dim": (lambda h, g: h.size(1), {}, True),
    "size_then_index": (lambda h, g: h.size()[1], {}, True),
    "other_tensor": (lambda h, g: g.shape[1], {}, True),  # g's channels and h's become one count
    "decided_in_python": (_decided, {}, False),
    "half_the_channels": (lambda h, g: h.shape[1] // 2, {"per_group": 2}, False),
    "transposed": (lambda h, g: h.shape[1], {"transposed": True}, False),
}


@pytest.mark.parametrize("name", sorted(GROUPS_READ))
def test_groups_read_off_the_input(name: str, tmp_path: Path) -> None:
    """``groups=h.shape[1]`` of a depthwise conv follows the pruned count (prunable, the oracle
    holds); a count Python decided on, a grouped (not depthwise) or a transposed conv pins."""
    count, kw, prunable = GROUPS_READ[name]
    torch.manual_seed(0)
    model, x = DepthwiseRead(count, **kw).eval(), torch.randn(*X4)  # type: ignore[arg-type]
    plan = skg.plan(model, x)
    group = next(g for g in plan.groups if any(m.param == "a.0.weight" and m.axis == 0 for m in g.members))
    assert group.prunable == prunable, group.reason
    if prunable:
        assert group.zero_invariant and {m.param for m in group.members} >= {"dw", "a.0.weight", "g.0.weight", "b.weight"}
    check_oracle(model, x, tmp_path, min_drop=0.0, require=prunable)


# -- nn.Unflatten ---------------------------------------------------------------------------------


class ToMap(nn.Module):
    """Linear -> ReLU -> ``unflatten`` to a map -> BN -> conv; as a layer or a method call."""

    def __init__(self, sizes: tuple[int, ...], module: bool) -> None:
        super().__init__()
        self.sizes, self.module = sizes, module
        width = 1
        for s in sizes:
            width *= s if s > 0 else 1
        features = C * 4 if -1 in sizes else width
        self.fc, self.unflatten = nn.Linear(6, features), nn.Unflatten(1, sizes)
        channels = (features // width) if -1 in sizes else sizes[0]
        self.bn = nn.BatchNorm2d(channels) if -1 not in sizes else nn.Identity()
        self.c = nn.Conv2d(channels if -1 not in sizes else sizes[0], 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        return self.c(self.bn(self.unflatten(h) if self.module else h.unflatten(1, self.sizes)))


@pytest.mark.parametrize("sizes", [(C, 1, 1), (C, 2, 2)], ids=["c11", "c22"])
def test_unflatten_layer_follows_the_channels(sizes: tuple[int, ...], tmp_path: Path) -> None:
    """``nn.Unflatten(1, (C, h, w))``: its outermost size is the layer's, rewritten by surgery."""
    torch.manual_seed(0)
    model, x = ToMap(sizes, module=True).eval(), torch.randn(2, 6)
    group = skg.plan(model, x).group("fc:out")
    assert group.prunable and group.zero_invariant, group.reason
    assert [s.attr for s in group.sizes] == ["unflattened_size"]
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    kept = result.model.fc.out_features // (sizes[1] * sizes[2])
    assert result.model.unflatten.unflattened_size == (kept, *sizes[1:])


def test_unflatten_with_an_inferred_size_plans_like_the_method() -> None:
    """With a ``-1`` the layer's literal sizes stay literals, as the method call's do."""
    x = torch.randn(2, 6)
    layer, method = ToMap((2, -1, 1), module=True), ToMap((2, -1, 1), module=False)
    method.load_state_dict(layer.state_dict())
    a, b = skg.plan(layer, x), skg.plan(method, x)
    assert [(g.name, g.prunable, g.zero_invariant, g.size) for g in a.groups] == [
        (g.name, g.prunable, g.zero_invariant, g.size) for g in b.groups
    ]
