"""A number made from a layer size, classified by the argument an op takes it as (issue 7).

``F.interpolate(h, scale_factor=self.a.out_channels / 4)`` changes the output's shape when ``a``
is pruned: the group pins, naming the attribute and the argument (it was planned prunable and
``prune`` refused). ``scaled_dot_product_attention(scale=n ** -0.5)``, ``dropout(p=1 / n)`` or
``pad(value=n / 4)`` only change numbers: prunable, not zero-invariant, and pruned exactly.
Each spelling runs under torch.fx and under torch.export (``Exported``: a branch torch.fx
cannot trace), which must agree (``graph/number_args.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import Body, check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

X4 = (2, 3, 6, 6)
Fn = Callable[[nn.Module, Tensor], Tensor]


class Exported(Body):
    """``Body`` with an ``is_cuda`` branch torch.fx cannot trace: planned by ``torch.export``."""

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        if h.is_cuda:
            h = h.contiguous()
        return self.b(self.fn(self, h))


TRACERS = {"fx": Body, "export": Exported}

SIZES: dict[str, Fn] = {
    "scale_factor_keyword": lambda s, h: F.interpolate(h, scale_factor=s.a.out_channels / 4),
    "scale_factor_positional": lambda s, h: F.interpolate(h, None, s.a.out_channels / 4, "nearest"),
    "scale_factor_tuple": lambda s, h: F.interpolate(h, scale_factor=(s.a.out_channels / 4, 2.0)),
    "size_keyword": lambda s, h: F.interpolate(h, size=s.a.out_channels),
    "size_positional": lambda s, h: F.interpolate(h, (s.a.out_channels, 6)),
    "upsample_function": lambda s, h: F.upsample(h, scale_factor=s.a.out_channels / 4),
    "upsample_module_in_forward": lambda s, h: nn.Upsample(scale_factor=s.a.out_channels / 4)(h),
    "avg_pool_kernel": lambda s, h: F.avg_pool2d(h, s.a.out_channels // 4),
    "adaptive_pool_output_size": lambda s, h: F.adaptive_avg_pool2d(h, s.a.out_channels // 2),
}

VALUES: dict[str, Fn] = {
    "sdpa_scale": lambda s, h: F.scaled_dot_product_attention(h, h, h, scale=s.a.out_channels**-0.5),
    "dropout_p": lambda s, h: F.dropout(h, p=1 / s.a.out_channels, training=s.training),
    "pad_value": lambda s, h: F.pad(h, (1, 1), value=s.a.out_channels / 4),
    "times_float": lambda s, h: h * (s.a.out_channels / 4),
    "float_times": lambda s, h: (s.a.out_channels / 4) * h,
    "leaky_relu_slope": lambda s, h: F.leaky_relu(h, 1 / s.a.out_channels),
}


def _group(cls: type[Body], fn: Fn) -> skg.Group:
    return skg.plan(cls(fn).eval(), torch.randn(*X4)).group("a:out")


@pytest.mark.parametrize("tracer", list(TRACERS))
@pytest.mark.parametrize("name", list(SIZES))
def test_a_number_made_from_a_size_pins_where_an_op_takes_it_as_a_size(name: str, tracer: str) -> None:
    """Pinned, and the reason names the attribute and how the op took it."""
    g = _group(TRACERS[tracer], SIZES[name])
    assert not g.prunable, g
    assert "a.out_channels" in (g.reason or ""), g.reason
    assert "as a size" in (g.reason or ""), g.reason


def _prunes_exactly(model: Body, keep: int = 5) -> None:
    """Pruning ``a:out`` to its first ``keep`` channels gives the dense model with the others
    zeroed and ``a.out_channels`` set to ``keep``: the number follows the kept count (for ops
    where a zeroed channel adds nothing: not ``pad(value=...)``)."""
    torch.manual_seed(0)
    x = torch.randn(*X4)
    model.eval()
    plan = skg.plan(model, x)
    mask = torch.arange(8) >= keep  # True: removed
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model.eval()
    dense = Body.__new__(type(model))
    dense.__dict__ = copy.deepcopy(model).__dict__
    with torch.no_grad():
        dense.bn.weight[mask] = 0  # BN then ReLU: the removed channels are zeros
        dense.bn.bias[mask] = 0
        dense.a.out_channels = keep
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tracer", list(TRACERS))
@pytest.mark.parametrize("name", list(VALUES))
def test_a_number_made_from_a_size_is_a_value_where_an_op_takes_it_as_one(name: str, tracer: str, tmp_path: Path) -> None:
    """Prunable, not zero-invariant (as ``h / h.size(1)``); prunes at 0.5 to a model that runs,
    and to the dense model with the number recomputed at the kept count."""
    torch.manual_seed(0)
    g = _group(TRACERS[tracer], VALUES[name])
    assert (g.prunable, g.zero_invariant) == (True, False), g
    check_oracle(TRACERS[tracer](VALUES[name]), torch.randn(*X4), tmp_path, require=False)
    if name != "pad_value":
        _prunes_exactly(TRACERS[tracer](VALUES[name]))


def test_sdpa_scale_by_math_sqrt_stays_prunable_under_fx(tmp_path: Path) -> None:
    """``scale=1 / math.sqrt(n)`` (``size_math``): a value, pruned exactly."""
    fn: Fn = lambda s, h: F.scaled_dot_product_attention(h, h, h, scale=1 / math.sqrt(s.a.out_channels))  # noqa: E731
    g = _group(Body, fn)
    assert (g.prunable, g.zero_invariant) == (True, False), g
    check_oracle(Body(fn), torch.randn(*X4), tmp_path, require=False)
    _prunes_exactly(Body(fn))


def test_a_literal_scale_factor_still_prunes(tmp_path: Path) -> None:
    """``interpolate(h, scale_factor=2.0)``: nothing made from a size, the channels prune (zero-invariant)."""
    fn: Fn = lambda s, h: F.interpolate(h, scale_factor=2.0)  # noqa: E731
    g = _group(Body, fn)
    assert (g.prunable, g.zero_invariant) == (True, True), g
    check_oracle(Body(fn), torch.randn(*X4), tmp_path)


@pytest.mark.parametrize("tracer", list(TRACERS))
def test_a_float_size_no_table_classifies_pins(tracer: str) -> None:
    """A float made from a size at an argument no table names (``torch.full``'s fill is a value,
    ``arange``'s end a size): fail closed."""
    g = _group(TRACERS[tracer], lambda s, h: h + torch.arange(s.a.out_channels / 4).sum())
    assert not g.prunable, g
    assert "a.out_channels" in (g.reason or ""), g.reason
