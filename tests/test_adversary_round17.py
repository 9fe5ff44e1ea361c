"""Adversary round 17: wrong plans found on real weights.

- A forward that writes a member in place with an op that does not keep zeros
  (``self.bn.weight.clamp_(min=0.1)`` under ``no_grad``, ``.data.clamp_``, ``copy_``,
  ``add_``) turns a masked channel back on: the group is not zero-invariant (it was claimed,
  0.03-0.09 off); writes that keep zeros (``clamp_(-c, c)``, ``mul_``) keep it.
- A TorchScript submodule (``torch.jit.script`` / ``torch.jit.trace``) made ``plan`` raise
  torch's ``TypeError`` from our own bookkeeping: it is refused with a ``TraceError`` naming it.
- ``F.group_norm(h, h.shape[1], w, b)`` pinned where ``nn.GroupNorm(8, 8)`` prunes.
- ``h.dtype is torch.float32`` (a Proxy's dtype was a Proxy) and a branch on data whose refusal
  the forward catches were traced down the branch the eager forward does not take.
- An f-string in forward opened the eager check's gate, which ran torch's transformer encoder
  down its inference fast path and refused it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import Body, assert_masked_is_pruned, assert_untouched, check_oracle, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.errors import TraceError

_WRITES: dict[str, tuple[Callable[[Tensor], object], bool]] = {  # the write, does it keep zeros
    "clamp_min": (lambda w: w.clamp_(min=0.1), False),
    "data_clamp_min": (lambda w: w.data.clamp_(min=0.1), False),
    "copy_clamped": (lambda w: w.copy_(w.clamp(min=0.1)), False),
    "add": (lambda w: w.add_(0.05), False),
    "clamp_positive_range": (lambda w: w.clamp_(0.2, 2.0), False),
    "through_a_slice": (lambda w: w[:].clamp_(min=0.1), False),
    "through_a_reshape": (lambda w: w.reshape(2, -1).clamp_(min=0.1), False),
    "through_chunks": (lambda w: [t.clamp_(min=0.1) for t in w.chunk(2)], False),
    "chained": (lambda w: w.abs_().add_(0.05), False),
    "hardtanh_function": (lambda w: F.hardtanh_(w, 0.1, 2.0), False),
    "hardtanh_inplace_flag": (lambda w: F.hardtanh(w, min_val=0.1, max_val=2.0, inplace=True), False),
    "hardtanh_keeps": (lambda w: F.hardtanh_(w, -2.0, 2.0), True),
    "clamp_both_ways": (lambda w: w.clamp_(-1.0, 1.0), True),
    "clamp_max": (lambda w: w.clamp_(max=2.0), True),
    "mul": (lambda w: w.mul_(0.5), True),
    "div": (lambda w: w.div_(2.0), True),
}


class _Writes(nn.Module):
    def __init__(self, write: Callable[[Tensor], object]) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.write = write

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.write(self.bn.weight)
        h = torch.relu(self.bn(self.a(x)))
        return self.b(F.normalize(h, dim=1))  # exact over the channels only where masked ones are zero


@pytest.mark.parametrize("name", sorted(_WRITES))
def test_a_member_written_in_place_is_zero_invariant_only_if_the_write_keeps_zeros(name: str, tmp_path: Path) -> None:
    write, keeps = _WRITES[name]
    model, x = _Writes(write).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
    plan = skg.plan(model, x)
    assert plan.group("a:out").zero_invariant == keeps
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 4, 6]] = True
    if keeps:
        assert_masked_is_pruned(model, plan, {"a:out": mask}, x)
    check_oracle(model, x, tmp_path, require=False)


class _Centre(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return h - h.mean(1, keepdim=True)


class _HoldsScript(nn.Module):
    def __init__(self, mid: nn.Module) -> None:
        super().__init__()
        self.a, self.bn, self.mid, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), mid, nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.mid(torch.relu(self.bn(self.a(x)))))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_submodule_is_refused_by_name(how: str) -> None:
    mid = torch.jit.script(_Centre()) if how == "script" else torch.jit.trace(_Centre(), torch.randn(2, 8, 6, 6))
    model, x = _HoldsScript(mid).train(), torch.randn(2, 3, 6, 6)
    before = fingerprint(model)
    with pytest.raises(TraceError, match=r"'mid' is a TorchScript module"):
        skg.plan(model, x)
    assert_untouched(model, before, "a refused plan")


_GROUP_NORMS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "module": lambda s, h: s.gn(h),
    "shape": lambda s, h: F.group_norm(h, h.shape[1], s.gn.weight, s.gn.bias),
    "size": lambda s, h: F.group_norm(h, h.size(1), s.gn.weight, s.gn.bias),
    "negative_dim": lambda s, h: F.group_norm(h, h.size(-3), s.gn.weight, s.gn.bias),
    "keyword": lambda s, h: F.group_norm(h, num_groups=h.shape[1], weight=s.gn.weight, bias=s.gn.bias),
}


@pytest.mark.parametrize("name", sorted(_GROUP_NORMS))
def test_a_group_norm_with_one_channel_per_group_plans_alike_in_every_spelling(name: str, tmp_path: Path) -> None:
    """``F.group_norm(h, h.shape[1], w, b)`` (the count read off the channels it normalises, so
    one channel per group whatever is pruned) pinned "unreadable arguments" where
    ``nn.GroupNorm(8, 8)`` prunes, zero-invariant."""
    model, x = Body(_GROUP_NORMS[name], gn=nn.GroupNorm(8, 8)).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and group.zero_invariant, group
    check_oracle(model, x, tmp_path)


class _Encoder(nn.Module):
    """torch's TransformerEncoder with a padding mask; ``fstring``: an assert message that opens
    the eager check's gate (a formatted value)."""

    def __init__(self, fstring: bool) -> None:
        super().__init__()
        self.fstring = fstring
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(32, 5)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.fstring:
            assert x.shape[-1] == 16, f"expected 16 features, got {x.shape[-1]}"
        return self.out(self.enc(self.inp(x), src_key_padding_mask=mask))


def test_the_eager_check_runs_torchs_transformer_layers_as_traced() -> None:
    """Under ``no_grad`` with a padding mask the encoder's fast path returns zeros at padded
    positions where its traced layers return values: the check ran it and refused the model
    (differs by 1.4) once an f-string opened the gate. It runs without the fast path."""
    x, mask = torch.randn(2, 10, 16), torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True
    plain, checked = _Encoder(fstring=False).eval(), _Encoder(fstring=True).eval()
    checked.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert skg.plan(checked, (x, mask)).groups == skg.plan(plain, (x, mask)).groups
    assert torch.backends.mha.get_fastpath_enabled(), "the fast path is left on"


_DATA_ASKS: dict[str, Callable[[Tensor], bool]] = {
    "dtype_is": lambda h: h.dtype is torch.float32,  # a Proxy's dtype was a Proxy: ``is`` said False
    "dtype_in": lambda h: h.dtype in (torch.float32, torch.float64),
    "dtype_eq": lambda h: h.dtype == torch.float32,
    "layout_is": lambda h: h.layout is torch.strided,
    "caught_refusal": lambda h: _centred_unless_refused(h),
}
_DATA_ASKS["match_class"] = lambda h: _matches_tensor(h)  # ``case torch.Tensor():`` asks the class unseen
_CAUGHT = {"caught_refusal"}  # torch.export's fake values refuse alike: refused


def _matches_tensor(h: Tensor) -> bool:
    match h:
        case torch.Tensor():
            return True
        case _:
            return False


def _centred_unless_refused(h: Tensor) -> bool:
    try:
        return bool(h.sum() > -1e9)  # torch.fx refuses a branch on data: the forward went on
    except Exception:  # noqa: BLE001 - the spelling under test
        return False


class _AsksData(nn.Module):
    def __init__(self, ask: Callable[[Tensor], bool]) -> None:
        super().__init__()
        self.ask = ask
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        if self.ask(h):
            h = h - h.mean(1, keepdim=True)
        return self.b(h)


@pytest.mark.parametrize("name", sorted(_DATA_ASKS))
def test_a_branch_torch_fx_would_take_wrongly_plans_the_eager_branch_or_is_refused(name: str, tmp_path: Path) -> None:
    """``h.dtype is torch.float32`` (a Proxy's dtype answers now) and a refused branch the forward
    catches (torch.fx's graph takes the ``except`` path: the graph is checked) planned ``a:out``
    zero-invariant beside the ``h - h.mean(1)`` the forward runs."""
    model, x = _AsksData(_DATA_ASKS[name]).eval(), torch.randn(2, 3, 6, 6)
    if name in _CAUGHT:
        with pytest.raises(TraceError, match="caught torch.fx's refusal to branch on a traced value"):
            skg.plan(model, x)
        return
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable and not plan.group("a:out").zero_invariant, "the mean over a's channels runs"
    check_oracle(model, x, tmp_path, require=False)


class _AsksAndMore(nn.Module):
    """``type(h) is torch.Tensor`` (refused) beside a forward the check could not run twice:
    one that clips its own weights in place, or one that adds noise drawn in forward."""

    def __init__(self, extra: str) -> None:
        super().__init__()
        self.extra = extra
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.extra == "weight_clip":
            with torch.no_grad():
                self.b.weight.clamp_(-1.0, 1.0)
        h = torch.relu(self.bn(self.a(x)))
        if type(h) is torch.Tensor:
            h = h - h.mean(1, keepdim=True)
        out = self.b(h)
        return out + 0.01 * torch.randn_like(out) if self.extra == "noise" else out


@pytest.mark.parametrize("extra", ["weight_clip", "noise"])
def test_the_check_runs_forwards_that_write_their_weights_or_draw_noise(extra: str) -> None:
    """Both were skipped (a forward that writes a parameter was stopped, an output that changes
    with the seed not compared), so the branch torch.fx did not take was planned: the weights
    are now copied and put back around each run, and noisy outputs compared by their ops."""
    model, x = _AsksAndMore(extra).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.b.weight.mul_(10)  # the clip changes it
    before = fingerprint(model)
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(model, x)
    assert_untouched(model, before, "a refused plan")
