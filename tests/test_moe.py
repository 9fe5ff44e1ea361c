"""Mixture-of-experts (stacked experts of transformers 5.x), count ties, and the GQA
query-head policy: the oracle, exact reloads, and ties that masks and overrides cannot break."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers import assert_close_rel, call, check_oracle, first_tensor  # noqa: E402

import sparsekit_graph as skg  # noqa: E402
from sparsekit_graph.plan.schema import SCHEMA_VERSION  # noqa: E402
from sparsekit_graph.zoo import hf_model  # noqa: E402

_COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64)  # fmt: skip
MOE = {
    "mixtral": ("Mixtral", dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2-moe": (
        "Qwen2Moe",
        dict(
            intermediate_size=96,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
        ),
    ),  # fmt: skip
    "qwen3-moe": (
        "Qwen3Moe",
        dict(intermediate_size=96, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, head_dim=16),
    ),  # fmt: skip
}


def _moe(name: str, experts: str = "eager") -> tuple[torch.nn.Module, dict]:
    """A small MoE model. ``grouped_mm`` (transformers' default) needs 16-byte aligned rows,
    which pruned widths rarely keep: the tests run the experts eagerly."""
    family, sizes = MOE[name]
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(**_COMMON, **sizes)
    config._experts_implementation = experts
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    ids = torch.randint(1, 128, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


def _expert_groups(plan: skg.Plan, layer: int) -> tuple[skg.Group, list[skg.Group]]:
    prefix = f"model.layers.{layer}.mlp."
    whole = next(g for g in plan.groups if any(m.param.startswith(prefix + "experts") and m.axis == 0 for m in g.members))
    width = [g for g in plan.groups if all(m.fix for m in g.members) and g.members[0].param.startswith(prefix)]
    return whole, width


# The default run keeps one quick MoE oracle (test_a_mask_that_breaks_an_expert_tie_names_the_groups:
# whole experts and tied widths planned, masked dense == pruned); the full oracles and reloads are slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe", "qwen3-moe"])
def test_moe_oracle_experts_and_reload(name: str, tmp_path: Path) -> None:
    """Whole experts (router rows with the expert slabs, not zero-invariant) and each expert's
    width (zero-invariant, tied to equal counts) are prunable in every layer; masked dense ==
    pruned; the pruned model reloads with from_pretrained and computes the same."""
    model, x = _moe(name)
    result = check_oracle(model, x, tmp_path)
    plan = result.plan
    for layer in range(2):
        whole, width = _expert_groups(plan, layer)
        assert whole.prunable and not whole.zero_invariant and whole.size == 4
        assert any(m.param.endswith("gate.weight") for m in whole.members)  # the router's rows go with them
        assert len(width) == 4 and all(g.prunable and g.zero_invariant and g.size == 32 for g in width)
        assert {g.name for g in width} in [{p.group for p in t.parts} for t in plan.ties]
    assert result.report.params_after <= 0.6 * result.report.params_before
    assert result.report.reloadable is True
    result.model.save_pretrained(tmp_path / "hf")
    again = type(model).from_pretrained(tmp_path / "hf", experts_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(result.model, x)), first_tensor(call(again, x)))
    count = "num_local_experts" if "num_local_experts" in MOE[name][1] else "num_experts"
    assert getattr(again.config, count) == 2


@pytest.mark.slow
def test_moe_plans_whatever_experts_implementation_and_leaves_it() -> None:
    """The default ``grouped_mm`` does not export as plain algebra: the plan traces with
    ``batched_mm`` and puts the model's setting back."""
    model, x = _moe("mixtral", experts="grouped_mm")
    plan = skg.plan(model, x)
    assert model.config._experts_implementation == "grouped_mm"
    assert len([g for g in plan.prunable if all(m.fix for m in g.members)]) == 8


_PLANS: dict[str, skg.Plan] = {}


def _mixtral_plan() -> tuple[torch.nn.Module, dict, skg.Plan]:
    model, x = _moe("mixtral")
    if "mixtral" not in _PLANS:
        _PLANS["mixtral"] = skg.plan(model, x)
    return model, x, _PLANS["mixtral"]


def test_a_mask_that_breaks_an_expert_tie_names_the_groups() -> None:
    """The quick MoE oracle: whole experts and tied per-expert widths in every layer; a mask
    breaking the tie is refused; equal counts per expert prune exactly."""
    model, x, plan = _mixtral_plan()
    for layer in range(2):
        whole, widths = _expert_groups(plan, layer)
        assert whole.prunable and not whole.zero_invariant and whole.size == 4
        assert len(widths) == 4 and all(g.prunable and g.zero_invariant and g.size == 32 for g in widths)
    _, width = _expert_groups(plan, 0)
    before = copy.deepcopy(model.state_dict())
    one = torch.zeros(32, dtype=torch.bool)
    one[3] = True
    with pytest.raises(skg.PlanError, match=r"break the tie of groups .*gate_up_proj:1@0.*\[1, 0, 0, 0\]"):
        skg.prune(model, plan, masks={width[0].name: one})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Equal counts, different channels per expert: exact, and the tensor stays rectangular.
    masks = {g.name: torch.roll(one, i) for i, g in enumerate(width)}
    dense = copy.deepcopy(model)
    couplings = skg.bind(plan, dense)
    for name, mask in masks.items():
        couplings[name].apply_mask(mask)
    small = skg.prune(model, plan, masks=masks).model
    assert small.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 62, 64)
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))


def test_router_topk_keeps_as_many_experts_as_each_token_picks() -> None:
    """The router's ``topk(num_experts_per_tok)`` gives the experts group ``min_keep`` 2: at
    ratio 0.9 every layer keeps 2 of its 4 experts and runs (it kept 1 and failed, 'k not in range')."""
    model, x, plan = _mixtral_plan()
    for layer in range(2):
        whole, _ = _expert_groups(plan, layer)
        assert whole.min_keep == 2 and "top-k" in (whole.min_keep_reason or ""), whole
    result = skg.prune(model, plan, ratio=0.9)
    assert [result.report.kept[_expert_groups(plan, i)[0].name] for i in range(2)] == [2, 2]
    with torch.no_grad():
        assert first_tensor(call(result.model, x)).shape == first_tensor(call(model, x)).shape


def test_check_rejects_overrides_that_break_a_tie(tmp_path: Path) -> None:
    model, _, plan = _mixtral_plan()
    _, width = _expert_groups(plan, 1)
    edited = plan.model_copy(update={"groups": [g.model_copy(update={"keep": 8}) if g is width[2] else g for g in plan.groups]})
    with pytest.raises(skg.PlanError, match="tie of groups .*gate_up_proj:1@0.*overrides differ"):
        edited.check(model)
    plan.save(tmp_path / "p.json")
    assert skg.Plan.load(tmp_path / "p.json") == plan and plan.schema_version == SCHEMA_VERSION
    data = plan.model_dump()
    data["ties"][0]["parts"][1]["group"] = "nope"
    with pytest.raises(skg.PlanError, match="no group named 'nope'"):
        skg.Plan.from_json(json.dumps(data))


def test_a_version_2_plan_still_loads() -> None:
    plan = _mixtral_plan()[2].model_copy(update={"ties": []})  # version 2 had no ties
    old = plan.model_copy(update={"schema_version": 2})
    assert skg.Plan.from_json(old.model_dump_json()).groups == plan.groups


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gqa_query_heads_policy(attention: str, tmp_path: Path) -> None:
    """``gqa="query_heads"``: key/value heads stay, query heads are channels, every KV group
    loses as many (a tie); ratio pruning snaps to it, masks that break it are rejected, masked
    dense == pruned, and a uniform prune reloads."""
    torch.manual_seed(0)
    model, x = hf_model("llama", attention=attention)
    plan = skg.plan(model, x, gqa="query_heads")
    q = [g for g in plan.prunable if any(m.param.endswith("q_proj.weight") and m.axis == 0 for m in g.members)]
    assert len(q) == 2 and all(g.size == 4 and g.zero_invariant for g in q)
    assert not any(m.param.endswith("k_proj.weight") and m.axis == 0 for g in plan.prunable for m in g.members)
    tie = next(t for t in plan.ties if t.parts[0].group == q[0].name)
    assert [p.channels for p in tie.parts] == [[0, 1], [2, 3]]
    with pytest.raises(skg.PlanError, match=r"break the tie .*\[2, 0\]"):
        skg.prune(model, plan, masks={q[0].name: torch.tensor([True, True, False, False])})
    masks = {q[0].name: torch.tensor([False, True, True, False])}
    dense = copy.deepcopy(model)
    skg.bind(plan, dense)[q[0].name].apply_mask(masks[q[0].name])
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(skg.prune(model, plan, masks=masks).model, x)))
    result = skg.prune(model, plan, ratio=0.5)
    assert all(result.report.kept[g.name] == 2 for g in q) and result.report.reloadable is True
    small = result.model
    assert small.config.num_attention_heads == 2 and small.config.num_key_value_heads == 2
    small.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path, attn_implementation=attention).eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(small, x)), first_tensor(call(again, x)))
