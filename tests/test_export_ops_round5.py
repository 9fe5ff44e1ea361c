"""Export-path ops and in-place spellings that pinned where their plain spelling prunes (issue 7).

Slice assignment only traces through ``torch.export`` (``aten.fill_`` / ``copy_`` / ``index_put_``
on a view of the target); an explicit dunder (``g.__iadd__(t)``) is a method call ``torch.fx``
records by name. Each spelling must plan like its plain one (same groups, prunability and
zero-invariance), prune, and match the masked dense model where zero-invariance is claimed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adversary_round4 import C, Net, X, _holds, _signature
from torch import Tensor, nn

import sparsekit_graph as skg


def _extra() -> dict[str, object]:
    torch.manual_seed(1)
    return {"bias": nn.Parameter(torch.randn(C)), "c": nn.Conv2d(C, 6, 1), "d": nn.Conv2d(C, C, 1)}


def _written(write: Callable[[nn.Module, Tensor], None]) -> Callable[[nn.Module, Tensor], Tensor]:
    """``g = h.clone(); write(g); return g``: later users read the target the write changed."""

    def fn(s: nn.Module, h: Tensor) -> Tensor:
        g = h.clone()
        write(s, g)
        return g

    return fn


def _set(index: object, value: Callable[[nn.Module, Tensor], object]) -> Callable[[nn.Module, Tensor], None]:
    def write(s: nn.Module, g: Tensor) -> None:
        g[index(g) if callable(index) else index] = value(s, g)

    return write


def _plan(fn: Callable[..., Tensor]) -> skg.Plan:
    return skg.plan(Net(fn, **_extra()).eval(), torch.randn(*X))


_NON_CHANNEL_WRITES: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "mask_fill": (  # aten.index_put_ with a mask of g's own shape: g.masked_fill(g < 0.1, 0)
        _written(_set(lambda g: g < 0.1, lambda s, g: 0.0)),
        lambda s, h: h.masked_fill(h < 0.1, 0.0),
    ),
    "mask_fill_tensor": (  # the value a one-element tensor
        _written(_set(lambda g: g > 0.5, lambda s, g: torch.tensor(0.5))),
        lambda s, h: h.masked_fill(h > 0.5, 0.5),
    ),
    "fill_width": (  # aten.fill_ on a slice of the last axis
        _written(_set((..., slice(None, 2)), lambda s, g: 0.0)),
        lambda s, h: F.pad(h[..., 2:], (2, 0)),
    ),
    "fill_row": (  # aten.fill_ on a select of a spatial axis
        _written(_set((slice(None), slice(None), 1), lambda s, g: 0.0)),
        lambda s, h: h * (torch.arange(6) != 1).view(6, 1),
    ),
    "copy_width": (  # aten.copy_: another layer's channels written into a spatial slice
        _written(_set((..., slice(None, 2)), lambda s, g: s.d(g)[..., :2])),
        lambda s, h: torch.cat([s.d(h)[..., :2], h[..., 2:]], -1),
    ),
}


@pytest.mark.parametrize("name", list(_NON_CHANNEL_WRITES))
def test_slice_assignment_over_non_channel_axes_plans_like_its_plain_spelling(name: str) -> None:
    """``g[g < 0.1] = 0``, ``g[..., :2] = 0``, ``g[:, :, 1] = 0``, ``g[..., :2] = d(g)[..., :2]``:
    unknown ops ``index_put`` / ``fill`` / ``copy`` that pinned ``a:out``. Now the plain
    spelling's plan, pruned with keep-one and half masks, exact where zero-invariant."""
    written, plain = _NON_CHANNEL_WRITES[name]
    assert _signature(_plan(written)) == _signature(_plan(plain))
    plan = _holds(Net(written, **_extra()))
    assert plan.group("a:out").prunable
    small = skg.prune(Net(written, **_extra()).eval(), plan, ratio=0.5).model
    assert small(torch.randn(*X)).shape == (2, 4, 6, 6)


def test_a_copy_into_a_channel_slice_pins_with_the_slice() -> None:
    """``g[:, :6] = c(h)`` writes 6 channels at a fixed offset: both the target's channels and
    ``c``'s pin, naming the slice."""
    plan = _plan(_written(_set((slice(None), slice(None, 6)), lambda s, g: s.c(g))))
    for name in ("a:out", "c:out"):
        group = plan.group(name)
        assert not group.prunable and "slic" in (group.reason or ""), (name, group.reason)


def test_index_put_at_fixed_channels_pins() -> None:
    """``g[:, [0, 3]] = 0``: channels picked by index pin, with the reason naming index_put."""
    plan = _plan(_written(_set((slice(None), torch.tensor([0, 3])), lambda s, g: 0.0)))
    group = plan.group("a:out")
    assert not group.prunable and "index_put" in (group.reason or "")


def test_a_nonzero_write_breaks_zero_invariance_of_a_channel_sum() -> None:
    """``g[..., :2] = 1`` then a sum over the channels: a removed channel adds 1 there, so the
    sum is not zero-invariant (the write is seen through the slice view of the target)."""
    fn = _written(_set((..., slice(None, 2)), lambda s, g: 1.0))
    plan = _holds(Net(lambda s, h: fn(s, h).sum(1, keepdim=True), **_extra()))
    assert not plan.group("a:out").zero_invariant


_DUNDERS = {
    "__iadd__": lambda g, t: g.__iadd__(t),
    "__isub__": lambda g, t: g.__isub__(t),
    "__imul__": lambda g, t: g.__imul__(t),
    "__add__": lambda g, t: g.__add__(t),
    "__radd__": lambda g, t: g.__radd__(t),
    "__rsub__": lambda g, t: g.__rsub__(t),
}
_PLAIN = {"__iadd__": "+", "__isub__": "-", "__imul__": "*", "__add__": "+", "__radd__": "+", "__rsub__": "r-"}


def _augmented(op: str) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(g: Tensor, t: Tensor) -> Tensor:
        if op == "+":
            g += t
        elif op == "-":
            g -= t
        elif op == "*":
            g *= t
        else:
            g = t - g
        return g

    return fn


@pytest.mark.parametrize("dunder", list(_DUNDERS))
def test_an_explicit_dunder_plans_like_the_operator(dunder: str) -> None:
    """``g.__iadd__(t)`` (result unused: ``g`` changed in place) was an unknown op
    ``__iadd__`` that pinned; it is ``g += t``, and ``g.__rsub__(t)`` is ``t - g``."""

    def spelled(call: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
        def fn(s: nn.Module, h: Tensor) -> Tensor:
            g = h.clone()
            out = call(g, s.bias.view(1, -1, 1, 1))
            return g if dunder.startswith("__i") else out

        return fn

    assert _signature(_plan(spelled(_DUNDERS[dunder]))) == _signature(_plan(spelled(_augmented(_PLAIN[dunder]))))
    plan = _holds(Net(spelled(_DUNDERS[dunder]), **_extra()))
    group = plan.group("a:out")
    assert group.prunable and "bias" in {m.param for m in group.members}


# --- ops on buffers alone: rebuilt as nodes over the buffer (buffer_views.BufferOps) -------------


def _buffers() -> dict[str, object]:
    torch.manual_seed(2)
    return {"g": torch.rand(C) + 0.5, "w": torch.rand(1, C) + 0.5}


def _scaled_after_an_in_place_write(s: nn.Module, h: Tensor) -> Tensor:
    t = s.g * 2
    t.add_(1)  # its record no longer holds: a constant again, which pins
    return h * t.view(1, -1, 1, 1)


def _branch_on_buffer_data(s: nn.Module, h: Tensor) -> Tensor:
    return h * (s.g * 2).view(1, -1, 1, 1) if (s.g * 2).sum() > 0 else h


def test_ops_on_buffers_are_nodes_and_control_flow_on_their_data_still_runs() -> None:
    """``(w * 2).mT`` (an attribute of a buffer op), a branch on a buffer op's value, and a
    softmax-like normalisation of a buffer over its channels: the buffer is a member, and the
    normalisation (a sum over the channels) is not zero-invariant. The branch traces, and pins
    the channels whose values it reads (pruned, the sum could take the other branch:
    ``value_reads``, round 14)."""
    plan = _holds(Net(lambda s, h: h * (s.w * 2).mT.reshape(1, -1, 1, 1), **_buffers()), keep=2)
    group = plan.group("a:out")
    assert group.prunable and group.zero_invariant and "w" in {m.param for m in group.members}
    plan = _holds(Net(_branch_on_buffer_data, **_buffers()), keep=2)
    group = plan.group("a:out")
    assert not group.prunable and "values of g (python control flow)" in (group.reason or "")
    assert "g" in {m.param for m in group.members}
    plan = _holds(Net(lambda s, h: h * (s.g.exp() / s.g.exp().sum()).view(1, -1, 1, 1), **_buffers()), keep=2)
    assert plan.group("a:out").prunable and not plan.group("a:out").zero_invariant


def test_a_buffer_op_written_in_place_after_stays_a_constant() -> None:
    """``t = g * 2; t.add_(1)``: the recorded op no longer makes ``t``, so it is not rebuilt (a
    constant, pinned with the reason) rather than planned from a wrong op chain."""
    plan = _holds(Net(_scaled_after_an_in_place_write, **_buffers()))
    assert not plan.group("a:out").prunable and "constant" in (plan.group("a:out").reason or "")


def test_buffer_ops_plan_alike_on_meta_and_leave_the_model_untouched() -> None:
    """Planned on the meta device, the plan equals the real one; planning adds no attribute (no
    ``_tensor_constant``) and leaves every buffer the same object with the same values."""
    fn = lambda s, h: h * (s.g * 2).view(1, -1, 1, 1) / (s.bn.running_var.view(1, -1, 1, 1) + 1)  # noqa: E731
    with torch.device("meta"):
        meta = Net(fn, **_buffers())
    model = Net(fn, **_buffers()).eval()
    before = {k: (v, v.clone()) for k, v in model.named_buffers()}
    keys = {name: set(m.__dict__) for name, m in model.named_modules()}
    plan = skg.plan(model, torch.randn(*X))
    assert _signature(skg.plan(meta, torch.randn(*X, device="meta"))) == _signature(plan)
    assert plan.group("a:out").prunable
    assert all(b is before[k][0] and torch.equal(b, before[k][1]) for k, b in model.named_buffers())
    assert keys == {name: set(m.__dict__) for name, m in model.named_modules()}


def _written_through_a_view(s: nn.Module, h: Tensor) -> Tensor:
    t = s.g * 2
    t[:1].mul_(0)  # through a view of t
    t[1] = 5.0  # __setitem__, which returns nothing
    return h * t.view(1, -1, 1, 1)


def test_a_buffer_op_written_through_a_view_or_setitem_stays_a_constant() -> None:
    """A write into a view of the result, or ``t[1] = 5``, also drops the record: pinned."""
    plan = _holds(Net(_written_through_a_view, **_buffers()))
    assert not plan.group("a:out").prunable and "constant" in (plan.group("a:out").reason or "")


class _Tokens(nn.Module):
    """Tokens plus a slice of a positional table kept as a buffer, scaled by a buffer op."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.register_buffer("pe", torch.randn(1, 10, 16))
        self.register_buffer("scale", torch.rand(16) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu((self.a(x) + self.pe[:, :5]) * (self.scale * 2)))


def test_a_slice_of_a_buffer_table_is_a_member() -> None:
    """``self.pe[:, :5]`` (a constant slice of a float buffer, rebuilt as ``operator.getitem`` as
    torch.fx writes it) makes ``pe`` a member of the hidden group, sliced by prune; exact."""
    model, x = _Tokens().eval(), torch.randn(2, 5, 8)
    plan = skg.plan(model, x)
    group = plan.group("a:out")
    assert group.prunable and group.zero_invariant and {"pe", "scale"} <= {m.param for m in group.members}
    mask = torch.zeros(16, dtype=torch.bool)
    mask[::2] = True
    small = skg.prune(model, plan, masks={"a:out": mask}).model
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    assert small.pe.shape == (1, 10, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), dense(x), rtol=1e-4, atol=1e-5)
