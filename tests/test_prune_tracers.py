"""``prune`` compares the model's trace with its pruned copy's op by op; where torch.fx failed
on one of them and ``trace_graph`` fell back to torch.export, the two cannot be compared, and
the refusal says so (issue 7: timm's mobileone_s0, interrupted by a harness's SIGALRM while its
pruned copy was traced, was refused as 'runs other code from None on')."""

from __future__ import annotations

import pytest
import torch
from helpers import realistic_bn
from torch import nn

import sparsekit_graph as skg


class FailsFxOncePruned(nn.Module):
    """Raises inside a torch.fx trace of any copy of itself (``prune`` traces a pruned copy), as
    an interruption would; torch.export traces the copy instead."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.origin = str(id(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).relu()
        if isinstance(h, torch.fx.Proxy) and self.origin != str(id(self)):
            raise RuntimeError("interrupted")
        return self.b(h)


def test_a_pruned_copy_traced_by_another_tracer_is_named() -> None:
    torch.manual_seed(0)
    model, x = FailsFxOncePruned().eval(), torch.randn(2, 3, 8, 8)
    plan = skg.plan(model, x)
    assert [g.name for g in plan.prunable] == ["a:out"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(skg.SparseKitError, match="torch.fx could not trace the pruned model"):
        skg.prune(model, plan, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_timm_mobileone_s0_prunes_all_its_groups_at_once() -> None:
    """Issue 7: its four groups at ratio 0.5 prune together, and the pruned model runs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model, x = timm.create_model("mobileone_s0", pretrained=False, num_classes=10), torch.randn(2, 3, 64, 64)
    realistic_bn(model, x)
    model.eval()
    plan = skg.plan(model, x)
    assert len(plan.prunable) == 4
    result = skg.prune(model, plan, ratio=0.5)
    assert all(result.masks[g.name].any() for g in plan.prunable)
    with torch.no_grad():
        assert result.model(x).shape == (2, 10)
