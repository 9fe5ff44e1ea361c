"""head_dim pruning (``plan(head_dim=True)``): RoPE pairs channel i with i + d/2, q/k/v share
the head size, the attention scale is compensated; pinned with the reason where unproven."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers import assert_close_rel, assert_untouched, call, fingerprint, first_tensor  # noqa: E402

import sparsekit_graph as skg  # noqa: E402
from sparsekit_graph.zoo import hf_model  # noqa: E402

_PLANS: dict[str, tuple[torch.nn.Module, dict, skg.Plan]] = {}


def _plan(spec: str) -> tuple[torch.nn.Module, dict, skg.Plan]:
    if spec not in _PLANS:
        torch.manual_seed(0)
        name, _, attn = spec.partition("@")
        model, x = hf_model(name, attention=attn or "sdpa")
        _PLANS[spec] = model, x, skg.plan(model, x, head_dim=True)
    return _PLANS[spec]


def _head_dim_groups(plan: skg.Plan) -> list[skg.Group]:
    return [g for g in plan.groups if g.name.endswith(":head_dim")]


def test_llama_head_dim_pairs_rope_channels_and_prunes_exactly(tmp_path: Path) -> None:
    """One head_dim group for the model (the rotary frequencies are shared): 8 channels, each
    a RoPE pair (i, i + 8) of q, k, v and o_proj's input in every head; masked dense == pruned."""
    model, x, plan = _plan("llama")
    before = fingerprint(model)
    (g,) = _head_dim_groups(plan)
    assert g.prunable and g.zero_invariant and g.size == 8
    assert {m.factor for m in g.members if "proj" in m.param} == {1}
    q = sorted((m.start, m.stop) for m in g.members if m.param == "model.layers.0.self_attn.q_proj.weight")
    assert q == [(s, s + 8) for s in range(0, 64, 8)]  # each head's two halves
    assert [(s.head_dim, s.per_channel, s.attr) for s in g.scales] == [(16, 2, "scaling")] * 2
    assert {f.per_channel for f in g.follows} == {1} and len(g.follows) == 8  # rotate_half: 2 halves x q, k x 2 layers
    plan.save(tmp_path / "plan.json")
    assert skg.Plan.load(tmp_path / "plan.json") == plan
    plan.check(model)

    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 4, 6]] = True
    dense = copy.deepcopy(model).eval()
    skg.bind(plan, dense)[g.name].apply_mask(mask)
    heads = next(h for h in plan.prunable if h.name == "model.layers.0.self_attn.q_proj:out")
    both = {g.name: mask, heads.name: torch.tensor([False, True])}  # heads x head_dim: the union is removed
    skg.bind(plan, dense)[heads.name].apply_mask(both[heads.name])
    result = skg.prune(model, plan, masks=both)
    small = result.model.eval()
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2 * 10, 64) and attn.k_proj.weight.shape == (10, 64)
    assert small.model.layers[1].self_attn.o_proj.weight.shape == (64, 4 * 10)
    assert attn.scaling == 10**-0.5
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))
    assert_untouched(model, before, "prune")


def test_llama_head_dim_ratio_prune_runs_and_reloads_with_load_pruned(tmp_path: Path) -> None:
    """``save_pruned``/``load_pruned`` rebuild it exactly, and so does ``from_pretrained``: the
    kept rotary frequencies are stated as ``longrope`` factors (``prune/rope_fit.py``)."""
    model, x, plan = _plan("llama")
    result = skg.prune(model, plan, ratio=0.5)
    (g,) = _head_dim_groups(plan)
    assert result.report.kept[g.name] == 4
    assert result.report.params_after <= 0.6 * result.report.params_before
    assert result.report.reloadable is True
    rope = result.model.config.rope_parameters
    assert rope["rope_type"] == "longrope" and len(rope["short_factor"]) == 4 and rope["attention_factor"] == 1.0
    assert model.config.rope_parameters["rope_type"] == "default"  # the user's config is untouched
    result.model.save_pretrained(tmp_path / "hf")
    hf = type(model).from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(result.model.eval(), x)), first_tensor(call(hf, x)))
    skg.save_pruned(result, tmp_path)
    torch.manual_seed(1)
    again = skg.load_pruned(hf_model("llama")[0], tmp_path).eval()
    with torch.no_grad():
        out = first_tensor(call(result.model.eval(), x))
        assert out.shape == first_tensor(call(model, x)).shape
        assert torch.equal(out, first_tensor(call(again, x)))
        call(result.model.train(), x)


@pytest.mark.parametrize(
    ("spec", "why"),
    [("llama@eager", "no attention proved its scale"), ("qwen3", "no projection found whose scaling scales the query")],
)
def test_head_dim_stays_pinned_where_the_scale_is_unproven(spec: str, why: str) -> None:
    """Eager attention scales ``q @ k^T`` by a number no rule ties to head_dim; Qwen3's q_norm
    (an RMSNorm over head_dim) sits between the projection and the query."""
    _, _, plan = _plan(spec)
    pinned = [g for g in plan.groups if any(m.param.endswith("inv_freq") for m in g.members)]
    assert pinned and not any(g.prunable for g in pinned)
    assert not any(g.prunable for g in _head_dim_groups(plan))
    reasons = " ".join(g.reason or "" for g in plan.groups)
    assert why in reasons


def test_head_dim_is_off_by_default_and_validated() -> None:
    model, x = hf_model("llama")
    assert not _head_dim_groups(skg.plan(model, x))
    with pytest.raises(skg.PlanError, match="head_dim='yes'"):
        skg.plan(model, x, head_dim="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["qwen2", pytest.param("mistral", marks=pytest.mark.slow)])
def test_head_dim_on_qwen2_and_mistral_is_exact_and_reloads(spec: str, tmp_path: Path) -> None:
    """The LLaMA recipe on its cousins: one head_dim group of RoPE pairs, masked dense ==
    pruned, and the pruned model reloads identically (Qwen2's config gains ``head_dim``)."""
    model, x, plan = _plan(spec)
    (g,) = _head_dim_groups(plan)
    assert g.prunable and g.zero_invariant and g.size == 8
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 3, 5]] = True
    dense = copy.deepcopy(model).eval()
    skg.bind(plan, dense)[g.name].apply_mask(mask)
    small = skg.prune(model, plan, masks={g.name: mask}).model.eval()
    assert small.model.layers[0].self_attn.k_proj.weight.shape == (2 * 10, 64)
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))
    result = skg.prune(model, plan, ratio=0.5)
    assert result.report.reloadable is True and result.model.config.head_dim == 8
    result.model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(result.model.eval(), x)), first_tensor(call(again, x)))


def test_rope_factors_are_exact_or_absent() -> None:
    """Each kept frequency is stated bit for bit (any positive frequencies can be: halved ones
    get factor 2); a non-default rope type is left alone."""
    from sparsekit_graph.prune.rope_fit import _exact_factors, fit_rope_factors

    period = 10000.0 ** (torch.arange(0, 8, 2, dtype=torch.int64).float() / 8)
    full = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.int64).float() / 16))
    kept = full[[0, 3, 4, 7]]
    factors = _exact_factors(kept, period)
    assert factors is not None
    assert torch.equal(1.0 / (torch.tensor(factors, dtype=torch.float32) * period), kept)
    model, _ = hf_model("llama")
    config = copy.deepcopy(model.config)
    shifted = copy.deepcopy(model)
    shifted.model.rotary_emb.inv_freq = shifted.model.rotary_emb.inv_freq * 0.5
    assert fit_rope_factors(config, shifted, model) is True and config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["short_factor"] == pytest.approx([2.0] * 8, rel=1e-6)
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert fit_rope_factors(config, shifted, model) is False
