"""The export probe tries the model's own decisions on the sizes surgery rewrites
(``SizeTest``: ``if self.num_heads > 2``) at a count that flips them, and retraces the pruned
copy with static sizes (half the cost of a dynamic export) against the plan's dynamic trace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_untouched, check_oracle, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph
from sparsekit_graph.plan import probe
from sparsekit_graph.prune.checks import changed_numbers, check_pruned

X = (2, 5, 32)  # (B, L, C)


class Attention(nn.Module):
    """A user's attention (torch.fx fails on its device check): ``decide(self.num_heads)``
    chooses whether queries are halved."""

    def __init__(self, decide: str, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.decide = heads, dim // heads, decide
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        if x.is_cuda:
            x = x.contiguous()
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if eval(self.decide, {"n": self.num_heads}):  # noqa: S307 - the test's own expressions
            q = q * 0.5
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Net(nn.Module):
    def __init__(self, decide: str) -> None:
        super().__init__()
        self.attn, self.head = Attention(decide), nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.attn(x).mean(1))


def _plan(decide: str) -> tuple[Net, skg.Plan]:
    torch.manual_seed(0)
    model = Net(decide).eval()
    x = torch.randn(*X)
    assert is_exported(trace_graph(model, x))
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    return model, plan


@pytest.mark.parametrize(
    ("decide", "kept"),
    [("n > 2", 2), ("n // 2 > 1", 3), ("n == 4", 3), ("n - 3", 3)],
    ids=["greater", "derived", "equal", "truth"],
)
def test_a_decision_on_a_user_modules_head_count_pins_under_export(decide: str, kept: int) -> None:
    """Each decision flips at a count the probe tries (the default 3 of 4 does not cross ``> 2``)."""
    _, plan = _plan(decide)
    heads = plan.group("attn.qkv:out")
    assert not heads.prunable and f"keeping {kept} of 4" in heads.reason, heads.reason
    assert plan.group("attn.proj:out").prunable


@pytest.mark.parametrize("decide", ["n > 0", "n < 9"], ids=["never_below", "never_above"])
def test_a_decision_no_count_flips_keeps_the_heads(decide: str, tmp_path: Path) -> None:
    model, plan = _plan(decide)
    assert plan.group("attn.qkv:out").prunable
    check_oracle(model, torch.randn(*X), tmp_path, min_drop=0.0)


def test_query_heads_are_tried_at_one_per_key_value_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF LLaMA with ``gqa="query_heads"``: ``repeat_kv``'s ``n_rep == 1`` and sdpa's
    ``num_key_value_groups > 1`` flip at one query head per key/value group, so the probe keeps
    one; the code then drops only re-views (the same code), and the heads stay prunable."""
    pytest.importorskip("transformers")
    from sparsekit_graph.zoo import hf_model

    tried: list[dict[str, Tensor]] = []
    real = probe._prune_and_trace
    monkeypatch.setattr(
        probe, "_prune_and_trace", lambda p, m, x, t, masks, *rest: tried.append(masks) or real(p, m, x, t, masks, *rest)
    )
    model, x = hf_model("llama")
    plan = skg.plan(model, x, gqa="query_heads")
    heads = [g for g in plan.groups if g.name.endswith("q_proj:out")]
    assert heads and all(g.prunable for g in heads), [g.reason for g in heads]
    n_rep = model.config.num_attention_heads // model.config.num_key_value_heads
    for g in heads:
        assert int((~tried[0][g.name]).sum()) == g.size // n_rep, (g.name, tried[0][g.name])


@pytest.mark.parametrize(
    "name", ["llama", pytest.param("swin", marks=pytest.mark.slow), pytest.param("t5", marks=pytest.mark.slow)]
)
def test_a_static_retrace_passes_every_check_against_the_dynamic_trace(name: str) -> None:
    """The probe's retrace keeps batch and length static: same code, no symbolic size nodes,
    other node names (Swin's ``mul`` on sizes); nothing pruned, every check passes."""
    pytest.importorskip("transformers")
    from sparsekit_graph.zoo import hf_model

    model, x = hf_model(name)
    plan = skg.plan(model, x)
    dynamic = trace_graph(model.eval(), x)
    static = trace_graph(model, x, dynamic=False)
    assert sum(n.target is torch.ops.aten.sym_size.int for n in dynamic.nodes) > 0
    assert not any(n.target is torch.ops.aten.sym_size.int for n in static.nodes)
    check_pruned(plan, {}, dynamic, static)
    assert changed_numbers(dynamic, static) == []
