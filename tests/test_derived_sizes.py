"""Issue 7, adversary round 2: lengths computed from a channel count, functional PReLU, parameters
expanded to literal sizes, and forwards that change their own model.

- F3: a length read off an axis (``h.shape[1] // 2``) that sizes something no rule links back to
  that axis (topk's ``k``, a fresh tensor's size, a pool's kernel, a pad) pins the axis, naming the
  node; the uses rules model (channel shuffle, GLU halves, ``view(B, C, -1)``) stay prunable.
- F4: ``F.prelu(x, w)`` / ``torch.prelu`` couple ``w`` to the channel axis (as ``nn.PReLU`` does).
- F5: ``g.expand(2, 8, 6, 6)`` with ``g`` a parameter: a literal size on a kept axis pins it.
- F6/F7: ``plan`` and calibrated ``prune`` leave ``requires_grad``, hooks and weights as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import Body, assert_untouched, check_oracle, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg

X4 = (2, 3, 6, 6)

# -- F3: a length derived from a channel count sizes another axis ---------------------------

DERIVED: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "topk_k": lambda s, h: h.topk(h.shape[1] // 2, 1).values,
    "topk_k_keyword": lambda s, h: torch.topk(h, k=h.size(1) // 2, dim=1).values,
    "topk_smallest": lambda s, h: torch.topk(h, h.size(1) // 2, 1, largest=False).values,
    "cat_new_zeros_channels": lambda s, h: torch.cat([h, h.new_zeros(h.shape[0], h.shape[1] // 2, 6, 6)], 1),
    "expand_new_channels": lambda s, h: h.sum(1, keepdim=True).expand(-1, h.shape[1] // 2, -1, -1),
    "topk_spatial": lambda s, h: h.flatten(2).topk(h.shape[1] // 2, -1).values.unsqueeze(-1),
    "adaptive_pool_size": lambda s, h: F.adaptive_avg_pool2d(h, h.shape[1] // 2),
    "interpolate_size": lambda s, h: F.interpolate(h, size=h.shape[1]),
    "slice_spatial": lambda s, h: h.flatten(2)[..., : h.shape[1]].unsqueeze(-1),
    "unfold_size": lambda s, h: h.unfold(2, h.shape[1] // 4, 1).mean(-1),
    "avg_pool_kernel": lambda s, h: F.avg_pool2d(h, h.shape[1] // 4),
    "max_pool_stride": lambda s, h: F.max_pool2d(h, 2, stride=h.shape[1] // 4),
    "pad_spatial": lambda s, h: F.pad(h, (0, h.shape[1] // 4)),
    "cat_new_zeros_spatial": lambda s, h: torch.cat([h, h.new_zeros(h.shape[0], h.shape[1], h.shape[1] // 4, 6)], 2),
    "expand_new_axis": lambda s, h: h.unsqueeze(2).expand(-1, -1, h.shape[1] // 4, -1, -1).flatten(1, 2),
    "zeros_sized_by_shape_tuple": lambda s, h: torch.cat([h, torch.zeros(h.shape[:1] + (h.shape[1] * 2, 6, 6))], 1),
}


@pytest.mark.parametrize("name", list(DERIVED))
def test_a_derived_length_sizing_another_axis_pins_its_source(name: str) -> None:
    """The group is pinned at plan time, the reason naming the node; ``prune`` then runs."""
    torch.manual_seed(0)
    m, x = Body(DERIVED[name]).eval(), torch.randn(*X4)
    before = fingerprint(m)
    plan = skg.plan(m, x)
    g = plan.group("a:out")
    assert not g.prunable, f"{name}: {g}"
    # ``[..., : h.shape[1]]`` is a prefix tied index by index to the channels it counts
    # (``graph/read_bounds``, ReXNet's residual); the flattened spatial axis it cuts pins them.
    expected = "spatial axis" if name == "slice_spatial" else "node"
    assert expected in (g.reason or ""), g.reason
    result = skg.prune(m, plan, ratio=0.5)  # what stays prunable prunes
    with torch.no_grad():
        assert result.model(x).shape == m(x).shape
    assert_untouched(m, before, "prune")


def _shuffle(s: nn.Module, h: Tensor) -> Tensor:
    b, c, hh, ww = h.size()
    return h.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)


MODELLED: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "channel_shuffle": _shuffle,
    "glu_halves": lambda s, h: h[:, : h.shape[1] // 2] * torch.sigmoid(h[:, h.shape[1] // 2 :]),
    "view_by_read_width": lambda s, h: (
        h.view(h.shape[0], h.shape[1], -1).transpose(1, 2).reshape(h.shape[0], -1, h.shape[1]).mean(1)
    ),
    "layer_norm_read_shape": lambda s, h: F.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2]).permute(0, 3, 1, 2),
}


@pytest.mark.parametrize("name", list(MODELLED))
def test_lengths_a_rule_follows_stay_prunable(name: str, tmp_path: Path) -> None:
    """Uses of a read length that rules link back to its axis keep the group prunable, exactly."""
    torch.manual_seed(0)
    m, x = Body(MODELLED[name]).eval(), torch.randn(*X4)
    g = skg.plan(m, x).group("a:out")
    assert g.prunable, g
    check_oracle(m, x, tmp_path, min_drop=0.0, require=False)


# -- F4: functional PReLU -----------------------------------------------------------------


class FunctionalPReLU(nn.Module):
    """conv -> ``prelu(h, self.w)`` spelled by ``fn`` -> conv; ``export``: torch.fx cannot trace it."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], slopes: int = 8, export: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.w = nn.Parameter(torch.rand(slopes) * 0.5)
        self.fn, self.export = fn, export

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.export and h.is_cuda:  # a branch on a tensor attribute: torch.fx fails, torch.export traces
            h = h.contiguous()
        return self.b(self.fn(h, self.w))


PRELUS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "F.prelu": F.prelu,
    "torch.prelu": torch.prelu,
    "aten.prelu": lambda h, w: torch.ops.aten.prelu.default(h, w),
}


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("name", list(PRELUS))
def test_functional_prelu_couples_its_weight(name: str, export: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m, x = FunctionalPReLU(PRELUS[name], export=export).eval(), torch.randn(*X4)
    plan = skg.plan(m, x)
    g = plan.group("a:out")
    assert g.prunable and g.zero_invariant, g
    assert "w" in {mem.param for mem in g.members}
    check_oracle(m, x, tmp_path)


def test_functional_prelu_with_one_slope_prunes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m, x = FunctionalPReLU(F.prelu, slopes=1).eval(), torch.randn(*X4)
    g = skg.plan(m, x).group("a:out")
    assert g.prunable and "w" not in {mem.param for mem in g.members}
    check_oracle(m, x, tmp_path)


def test_functional_prelu_on_tokens(tmp_path: Path) -> None:
    """(B, L, C): the slopes follow axis 1 (torch's rule), the tokens here, which are pinned."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.w, self.b = nn.Linear(6, 8), nn.Parameter(torch.rand(5)), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(F.prelu(self.a(x), self.w))

    torch.manual_seed(0)
    m, x = Tokens().eval(), torch.randn(2, 5, 6)
    plan = skg.plan(m, x)
    assert not any("w" in {mem.param for mem in g.members} for g in plan.prunable)
    check_oracle(m, x, tmp_path, min_drop=0.0)


# -- F5: a parameter expanded to a literal size ----------------------------------------------

EXPANDS: dict[str, Callable[[Tensor], Tensor]] = {
    "expand": lambda g: g.expand(2, 8, 6, 6),
    "expand_keyword": lambda g: g.expand(size=(2, 8, 6, 6)),
    "broadcast_to": lambda g: torch.broadcast_to(g, (2, 8, 6, 6)),
    "aten_expand": lambda g: torch.ops.aten.expand.default(g, [2, 8, 6, 6]),
    "unbound_expand": lambda g: torch.Tensor.expand(g, 2, 8, 6, 6),
}


class ExpandParam(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor], export: bool = False) -> None:
        super().__init__()
        self.a, self.g, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Parameter(torch.randn(1, 8, 1, 1)), nn.Conv2d(8, 4, 1)
        self.fn, self.export = fn, export

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.export and h.is_cuda:
            h = h.contiguous()
        return self.b(h + self.fn(self.g))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("name", list(EXPANDS))
def test_a_parameter_expanded_to_a_literal_size_pins(name: str, export: bool) -> None:
    torch.manual_seed(0)
    m, x = ExpandParam(EXPANDS[name], export=export).eval(), torch.randn(*X4)
    plan = skg.plan(m, x)
    assert not plan.group("a:out").prunable, plan.group("a:out")
    skg.prune(m, plan, ratio=0.5)


def test_a_parameter_expanded_with_minus_one_prunes(tmp_path: Path) -> None:
    """``-1`` keeps the axis whatever its length: prunable, exactly."""
    torch.manual_seed(0)
    m, x = ExpandParam(lambda g: g.expand(2, -1, 6, 6)).eval(), torch.randn(*X4)
    assert skg.plan(m, x).group("a:out").prunable
    check_oracle(m, x, tmp_path)


# -- F6 / F7: forwards that change their own model ---------------------------------------------


class FreezesHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.d.requires_grad_(False)
        return self.d(torch.relu(self.c(x)))


class LazyHook(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d, self.n = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), 0

    def forward(self, x: Tensor) -> Tensor:
        if self.n == 0:
            self.d.register_forward_pre_hook(lambda m, i: None)
        self.n += 1
        return self.d(torch.relu(self.c(x)))


@pytest.mark.parametrize("make", [FreezesHead, LazyHook], ids=["requires_grad", "hook"])
def test_plan_restores_what_forward_changed(make: type[nn.Module]) -> None:
    m = make().eval()
    before = fingerprint(m)
    skg.plan(m, torch.randn(*X4))
    assert_untouched(m, before, "plan")


class Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.c.weight.clamp_(-0.1, 0.1)
        return self.d(torch.relu(self.c(x)))


class Renormalises(Clamps):
    def forward(self, x: Tensor) -> Tensor:
        self.c.weight.data = F.normalize(self.c.weight.data, dim=1)
        return self.d(torch.relu(self.c(x)))


@pytest.mark.parametrize("importance", ["activation", "taylor"])
@pytest.mark.parametrize("make", [Clamps, Renormalises, FreezesHead, LazyHook], ids=["clamp", "data", "requires_grad", "hook"])
def test_calibrated_prune_leaves_the_model_as_it_was(make: type[nn.Module], importance: str) -> None:
    torch.manual_seed(0)
    m, x = make().eval(), torch.randn(*X4)
    plan = skg.plan(m, x)
    before = fingerprint(m)
    weights = {k: v.detach().clone() for k, v in m.state_dict().items()}
    kw = (
        {"calibration": [(x, torch.randn(2, 4, 6, 6))], "loss_fn": F.mse_loss} if importance == "taylor" else {"calibration": [x]}
    )
    try:
        skg.prune(m, plan, ratio=0.5, importance=importance, **kw)
    except skg.SparseKitError:  # a refusal is allowed; a changed model is not
        pass
    assert_untouched(m, before, f"prune({importance})")
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())


class _UpSizedBy(nn.Module):
    """A transposed conv whose ``output_size`` is a full shape (torch reads only its spatial
    entries) or a spatial size made of a channel count."""

    def __init__(self, spatial_from_channels: bool) -> None:
        super().__init__()
        self.spatial_from_channels = spatial_from_channels
        self.a, self.down, self.up = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2, 1), nn.ConvTranspose2d(8, 4, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        size = (h.shape[1], h.shape[1]) if self.spatial_from_channels else h.shape
        return self.up(self.down(h), output_size=size)


@pytest.mark.parametrize("spatial_from_channels", [False, True], ids=["full-shape", "spatial-from-channels"])
def test_transposed_conv_output_size_reads_only_its_spatial_entries(spatial_from_channels: bool) -> None:
    torch.manual_seed(0)
    m, x = _UpSizedBy(spatial_from_channels).eval(), torch.randn(2, 3, 8, 8)
    g = skg.plan(m, x).group("a:out")
    assert g.prunable is not spatial_from_channels, g
    if spatial_from_channels:
        assert "output_size" in (g.reason or ""), g.reason
