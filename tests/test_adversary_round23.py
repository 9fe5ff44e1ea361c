"""Round 23 of the adversaries (issue 7): lengths unpacked on a path the call's arguments
did not take, plans edited by hand, positions returned whole, options and saved files checked."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg


def _claims(model: nn.Module, x: object, **options: object) -> list[tuple[int, bool]]:
    return [(g.size, g.zero_invariant) for g in skg.plan(model.eval(), x, **options).prunable]


# -- a shape unpacked, then a return the call's arguments decide (HF ``repeat_kv``) ------------


def _repeat(t: Tensor, n_rep: int) -> Tensor:
    """Hugging Face's ``repeat_kv``: unpacks the shape, returns at once when ``n_rep == 1``."""
    batch, heads, length, dim = t.shape
    if n_rep == 1:
        return t
    return t[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


def _widen(t: Tensor, wide: bool) -> Tensor:
    """Uses the unpacked width, where ``wide``, as no traced graph holds it (a list's length)."""
    batch, width = t.shape
    if wide:
        return t * len([0] * width)
    return t


class EagerAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 4) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.groups = heads // kv_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.ModuleList(nn.Linear(dim, kv_heads * self.head_dim) for _ in range(2))
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # a device check torch.fx cannot trace: torch.export plans it
            x = x.contiguous()
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (_repeat(p(x).view(b, t, -1, self.head_dim).transpose(1, 2), self.groups) for p in self.kv)
        a = torch.softmax(q @ k.transpose(2, 3) * self.head_dim**-0.5, -1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_shape_unpacked_before_an_early_return_keeps_heads(kv_heads: int, tmp_path: Path) -> None:
    """``b, h, s, d = t.shape; if n_rep == 1: return t`` (Hugging Face eager attention with as
    many key/value heads as query heads) pinned the heads: the lengths looked used on the path
    the call did not take. The walk now follows only the branch the call's own arguments
    decided (an argument its code never reassigns)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    model = EagerAttention(kv_heads=kv_heads)
    assert _claims(model, x) == [(kv_heads, True)]
    check_oracle(model, x, tmp_path)


@pytest.mark.parametrize("wide", [True, False])
def test_the_branch_taken_decides_whether_an_unpacked_length_is_used(wide: bool) -> None:
    """Soundness of the fold: where the argument sends the call down the path that uses the
    width, the width is a length Python used (the group pins, as before); where it does not,
    nothing reads it."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: Tensor) -> Tensor:
            if x.is_cuda:  # torch.export plans it
                x = x.contiguous()
            return self.b(_widen(torch.relu(self.a(x)), wide))

    torch.manual_seed(0)
    claims = _claims(Net(), torch.randn(3, 8))
    assert claims == ([] if wide else [(16, True)])


def test_hugging_face_eager_attention_keeps_its_heads() -> None:
    """Llama with ``attn_implementation="eager"`` plans its heads as with SDPA."""
    transformers = pytest.importorskip("transformers")
    x = torch.randint(0, 64, (1, 6))
    plans = []
    for impl in ("sdpa", "eager"):
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, attn_implementation=impl,
        )  # fmt: skip
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans.append(_claims(transformers.LlamaForCausalLM(config), x))
    assert plans[0] == plans[1] and (4, True) in plans[1]


# -- ``squeeze()`` drops a channel axis pruned to one channel ----------------------------------

SQUEEZES = {
    "squeeze()": lambda p: p.squeeze(),
    "squeeze(1)": lambda p: p.squeeze(-1).squeeze(-1).squeeze(1).view(p.shape[0], -1),
    "squeeze((2, 3))": lambda p: p.squeeze((2, 3)),
    "flatten(1)": lambda p: p.flatten(1),
}


class SqueezeExcite(nn.Module):
    def __init__(self, spelling: str, width: int = 6) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv, self.fc, self.out = nn.Conv2d(3, width, 3, padding=1), nn.Linear(width, width), nn.Conv2d(width, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        w = torch.sigmoid(self.fc(SQUEEZES[self.spelling](nn.functional.adaptive_avg_pool2d(h, 1))))
        return self.out(h * w[:, :, None, None])


@pytest.mark.parametrize("spelling", list(SQUEEZES))
def test_squeeze_keeps_two_channels_of_an_axis_it_may_drop(spelling: str, tmp_path: Path) -> None:
    """``squeeze()`` (or ``squeeze(1)`` on the channel axis) is a no-op at 6 channels and drops
    the axis at 1: pruned to one channel, the squeeze-excite MLP got a (B,) tensor (a failing
    prune) and a ``normalize(dim=-1)`` ran over the batch (30% off). The axis keeps two."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(SqueezeExcite(spelling).eval(), x)
    (group,) = plan.prunable
    assert (group.size, group.zero_invariant) == (6, True)
    assert group.min_keep == (None if spelling in ("squeeze((2, 3))", "flatten(1)") else 2)
    if group.min_keep:
        with pytest.raises(skg.PlanError, match="min_keep"):
            skg.prune(SqueezeExcite(spelling), plan, masks={group.name: torch.arange(6) > 0})
    check_oracle(SqueezeExcite(spelling), x, tmp_path)
