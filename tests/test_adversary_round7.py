"""Wrong plans adversary round 7 found in hand-written models (issue 7): fixed here, or strict xfails.

Most models are ``tests/test_adversary_round4.Net``: a conv ``a`` (group ``a:out``, 12 channels)
-> BN -> ReLU -> the spelling -> a 1x1 conv head. ``_holds`` prunes every prunable group and checks
a zero-invariance claim against the masked dense model. Harness and full list: /tmp/adv7/REPORT.md.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adversary_round4 import Net, _holds
from torch import Tensor, nn

import sparsekit_graph as skg

# --- norms whose statistics run over another layer's channels ---------------------------------------


def _channels_inside(norm: Callable[[nn.Module, Tensor], Tensor]) -> Callable[[nn.Module, Tensor], Tensor]:
    """``norm`` applied to (B, W, C, H): the conv's channels lie on a statistics axis of the norm."""
    return lambda s, h: norm(s, h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


_NORMS: dict[str, tuple[Callable[[nn.Module, Tensor], Tensor], dict[str, object]]] = {
    "InstanceNorm2d": (lambda s, h: s.n(h), {"n": nn.InstanceNorm2d(6, affine=True)}),
    "F.instance_norm": (lambda s, h: F.instance_norm(h), {}),
    "GroupNorm": (lambda s, h: s.n(h), {"n": nn.GroupNorm(2, 6)}),
    "F.group_norm": (lambda s, h: F.group_norm(h, 3), {}),
    "BatchNorm2d without running stats": (lambda s, h: s.n(h), {"n": nn.BatchNorm2d(6, track_running_stats=False)}),
    "F.batch_norm training": (lambda s, h: F.batch_norm(h, None, None, training=True), {}),
}


@pytest.mark.parametrize("name", list(_NORMS))
def test_norm_statistics_over_channels_are_not_zero_invariant(name: str) -> None:
    """Instance, group and batch-statistics norms reduce over axes 2+: channels of ``a`` lying
    there were claimed zero-invariant (a zeroed channel still moves the mean and variance)."""
    norm, extra = _NORMS[name]
    plan = _holds(Net(_channels_inside(norm), **extra))
    group = plan.group("a:out")
    assert group.prunable and not group.zero_invariant, group


class _TimmStyleStdConv(nn.Conv2d):
    """Weight standardisation written as timm writes it: ``F.batch_norm(training=True)`` over the
    weight viewed (1, out, in*k*k): its statistics run over the input channels."""

    def forward(self, x: Tensor) -> Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


def test_hand_written_weight_standardisation_keeps_input_channels_not_zero_invariant() -> None:
    """Input channels of the standardised conv were claimed zero-invariant (the fan-in statistics
    change when one is removed): mismatch 0.06 at ad75bac."""
    plan = _holds(Net(lambda s, h: s.s(h), s=_TimmStyleStdConv(12, 12, 3, padding=1)))
    assert plan.group("a:out").prunable and not plan.group("a:out").zero_invariant
    assert plan.group("s:out").zero_invariant


def test_norm_statistics_in_eval_with_running_stats_stay_zero_invariant() -> None:
    """A BatchNorm in eval mode with running statistics is per-element: nothing mixes."""
    model = Net(_channels_inside(lambda s, h: s.n(h)), n=nn.BatchNorm2d(6)).eval()
    assert _holds(model).group("a:out").zero_invariant


def test_instance_norm_over_channels_alone_keeps_two() -> None:
    """InstanceNorm1d over (B, HW, C): the channels are its only statistics axis, and torch refuses
    statistics of one element (keep-one prune failed to run)."""
    model = Net(lambda s, h: s.n(h.flatten(2).mT).mT.reshape(h.shape), n=nn.InstanceNorm1d(36))
    plan = _holds(model, keep=2)
    assert plan.group("a:out").min_keep == 2
    with pytest.raises(skg.PlanError):
        mask = torch.ones(12, dtype=torch.bool)
        mask[0] = False
        skg.prune(model, plan, masks={"a:out": mask})


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("channels as features", lambda s, h: torch.stack([s.n(t.flatten(1)).view_as(t) for t in h.unbind(0)])),
        ("channels as length", lambda s, h: s.m(h[0].flatten(1).T).T.reshape(h.shape[1:]) + h),
    ],
)
def test_unbatched_instance_norm_takes_channels_first(name: str, norm: Callable[[nn.Module, Tensor], Tensor]) -> None:
    """An unbatched (C, L) input: the norm's channels are axis 0 and its statistics run over axis 1.
    The rule took axis 1 as channels: its affine weight was linked to the length (prune did not
    run), and the conv's channels on the length axis were claimed zero-invariant."""
    plan = _holds(Net(norm, n=nn.InstanceNorm1d(12, affine=True), m=nn.InstanceNorm1d(36)), keep=2)
    group = plan.group("a:out")
    assert group.prunable and group.zero_invariant == (name == "channels as features"), group


# --- a lazy module not yet run ----------------------------------------------------------------------


def test_an_uninitialized_lazy_module_is_refused_by_name_and_left_lazy() -> None:
    """``plan`` raised torch's ValueError from the state snapshot (a non-SparseKitError crash)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.LazyConv2d(4, 1), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(skg.TraceError, match=r"2\.weight of a lazy module is not initialized"):
        skg.plan(model, torch.randn(2, 3, 6, 6))
    assert isinstance(model[2], nn.LazyConv2d) and nn.parameter.is_lazy(model[2].weight)
    model(torch.randn(2, 3, 6, 6))  # once run, it plans
    assert skg.plan(model, torch.randn(2, 3, 6, 6)).group("0:out").prunable
