"""A module's own int attribute written at a size position is that attribute, never a config
field of equal value (HF Hiera's ``reshape(b, -1, self.hidden_size_output)`` beside a config
whose ``embed_dim`` is also 16): surgery rewrites the config, not the module's attribute."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg


class Config(SimpleNamespace):
    """A plain config object (not a torch.nn layer): ``embed_dim`` read by the forward."""


class Attention(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.width_out = out  # a module's own int attribute, no size name: a plain read
        self.qkv = nn.Linear(width, 3 * out)
        self.proj = nn.Linear(out, out)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, -1).unbind(2)
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(a.reshape(b, -1, self.width_out))  # the -1 would absorb a pruned width


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = Config(embed_dim=16)
        self.embed = nn.Linear(4, self.config.embed_dim)
        self.attn = Attention(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).view(x.shape[0], -1, self.config.embed_dim)  # the config field is read
        return self.attn(h)


def test_a_plain_attribute_at_a_reshape_is_not_a_config_field_of_equal_value(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(2, 5, 4)
    plan = skg.plan(model, x)
    g = plan.group("attn.qkv:out")
    # the reshape keeps that axis whole: the module's own count follows it (round 21), the
    # config's field of equal value is not touched
    assert [(s.owner, s.attr) for s in g.sizes] == [("attn", "width_out")], g.sizes
    check_oracle(model, x, tmp_path, min_drop=0.0)  # every group that plans prunable prunes exactly
