"""Sizes matched by value to attributes the trace never saw read (round 11's adversary).

Under torch.fx, a module's or config's attribute explains a literal only where the code read it.
Before, an unrecorded owner counted as read: a class attribute or a read-only property of the
value (``num_heads = 4`` on the class, a ``view(b, n, 4, 8)`` from elsewhere), or a
``SimpleNamespace`` / Hugging Face config of a user's module, "explained" a literal the code
took from a constant; surgery rewrote the attribute (or raised ``AttributeError`` on the
property) and the code kept its 4: the prune failed. Blocks that share one config object
counted it under one name each: their head groups were untied and unequal masks failed.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

transformers = pytest.importorskip("transformers")
HEADS, HEAD_DIM = 4, 8


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, head_dim: int) -> Tensor:
    b, n, _ = q.shape
    split = lambda t: t.view(b, n, heads, head_dim).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, -1)


class Block(nn.Module):
    """Attention whose ``view`` takes the module constant ``HEADS`` while ``holder`` adds an
    attribute of equal value that the code never reads."""

    def __init__(self, holder: Callable[[nn.Module], None] = lambda m: None) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        holder(self)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.o(_attention(self.q(x), self.k(x), self.v(x), HEADS, HEAD_DIM))


class ClassCounts(Block):
    num_heads = HEADS  # class-level defaults, never read
    head_dim = HEAD_DIM


class PropertyCount(Block):
    @property
    def num_heads(self) -> int:  # read-only: surgery could not set it
        return HEADS


def _hf_config(m: nn.Module) -> None:
    m.config = transformers.PretrainedConfig(num_attention_heads=HEADS, head_dim=HEAD_DIM)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "class_attribute": ClassCounts,
    "read_only_property": PropertyCount,
    "namespace_config": lambda: Block(lambda m: setattr(m, "config", types.SimpleNamespace(num_heads=HEADS))),
    "hf_config": lambda: Block(_hf_config),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_an_attribute_the_code_never_read_explains_no_literal(name: str, tmp_path: Path) -> None:
    model, x = MODELS[name]().eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x)
    assert not any(g.name == "q:out" for g in plan.prunable), plan.prunable
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


@dataclasses.dataclass
class Config:
    n_heads: int = HEADS
    head_dim: int = HEAD_DIM


class ConfiguredBlock(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        y = _attention(self.q(x), self.k(x), self.v(x), self.config.n_heads, self.config.head_dim)
        return x + self.o(y)


class SharedConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = Config()
        self.blocks = nn.ModuleList(ConfiguredBlock(config) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_blocks_sharing_one_config_tie_their_heads(tmp_path: Path) -> None:
    model, x = SharedConfig().eval(), torch.randn(2, 5, 32)
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    tie = next(t for t in result.plan.ties if "n_heads" in t.reason)
    assert {p.group for p in tie.parts} == {"blocks.0.q:out", "blocks.1.q:out"}
    assert result.model.blocks[0].config.n_heads == 2 and model.blocks[0].config.n_heads == HEADS
    with pytest.raises(skg.PlanError, match="break the tie"):
        skg.prune(model, result.plan, masks={"blocks.0.q:out": torch.tensor([False, True, True, True])})


class GroupsAttribute(nn.Module):
    """GQA repeated by ``self.num_key_value_groups``, a ratio set in ``__init__``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = 8, 2, 4
        self.num_key_value_groups = 4
        self.q, self.o = nn.Linear(32, 32), nn.Linear(32, 32)
        self.k, self.v = nn.Linear(32, 8), nn.Linear(32, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        k, v = (t.repeat_interleave(self.num_key_value_groups, dim=1) for t in (k, v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


def test_a_ratio_attribute_pins_query_heads_and_prunes_kv_groups(tmp_path: Path) -> None:
    """Under ``query_heads`` nothing rewrites ``num_key_value_groups`` (before: prunable, and
    the prune failed); under ``kv_groups`` the ratio stays."""
    x = torch.randn(2, 5, 32)
    plan = skg.plan(GroupsAttribute().eval(), x, gqa="query_heads")
    assert not any(g.name == "q:out" for g in plan.prunable)
    check_oracle(GroupsAttribute().eval(), x, tmp_path, min_drop=0.0, require=False, gqa="query_heads")
    result = check_oracle(GroupsAttribute().eval(), x, tmp_path, min_drop=0.0)
    assert [g.name for g in result.plan.prunable if g.name == "q:out"] == ["q:out"]


@pytest.mark.parametrize("dim", [1, (2, 3)])
def test_special_logsumexp_plans_as_logsumexp(dim: int | tuple[int, int]) -> None:
    class Net(nn.Module):
        def __init__(self, fn: Callable[..., Tensor]) -> None:
            super().__init__()
            self.fn, self.a, self.head = fn, nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.fn(h, dim=dim).flatten(1).sum(1, keepdim=True) + self.head(h.mean((2, 3)))

    x = torch.randn(2, 3, 8, 8)
    signature = lambda fn: [(g.name, g.prunable, g.zero_invariant) for g in skg.plan(Net(fn), x).groups]  # noqa: E731
    assert signature(torch.special.logsumexp) == signature(torch.logsumexp)


def test_a_cached_method_gives_one_graph_before_and_after_an_eager_call() -> None:
    """Data2VecVision caches its relative position index (``compile_compatible_method_lru_cache``):
    after an eager forward torch.fx traced through the cached tensor where it had failed before,
    and a plan made before the call named nodes that ``prune``'s retrace did not have (its
    prune raised)."""
    config = transformers.Data2VecVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=16,
        patch_size=8, num_labels=4, use_relative_position_bias=True, attn_implementation="sdpa",
    )  # fmt: skip
    model, x = transformers.Data2VecVisionForImageClassification(config).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)}
    plan = skg.plan(model, x)
    with torch.no_grad():
        model(**x)
    assert skg.plan(model, x) == plan
    heads = next(g for g in plan.prunable if g.name.endswith("attention.attention.query:out"))
    skg.prune(model, plan, masks={heads.name: torch.tensor([False, False, True, True])})
