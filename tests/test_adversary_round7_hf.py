"""Adversary round 7 (issue 7): Hugging Face and timm models as their libraries write them.

Each finding of ``/tmp/adv7hf`` (HF architectures and config options outside the sweep, timm
families outside the tests) in miniature where one exists, else on the small library model
(``@pytest.mark.slow`` when it takes more than a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.trace import is_exported, trace_graph


class RelativePositions(nn.Module):
    """DeBERTa-v2's ``build_relative_position``: ``rel[:query_size, :]`` with ``query_size`` the
    length ``rel`` already has. A slice assignment sends the model to torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.table = nn.Embedding(16, 8), nn.Parameter(torch.randn(8, 8))
        self.up, self.down, self.out = nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)  # (B, L, 8)
        pos = torch.arange(ids.shape[1])
        rel = (pos[:, None] - pos[None, :]).to(torch.long)[: ids.shape[1], :]  # (L, L), every row
        h = h + self.table[rel.clamp(0, 7)].mean(1)
        g = torch.relu(self.up(h)).clone()
        g[:, 0] = 0.0
        return self.out(h + self.down(g))


def test_slice_whole_at_the_traced_length_is_the_same_code(tmp_path: Path) -> None:
    """The export probe compared the dynamic trace (which keeps ``slice(rel, 0, 0, s)``: not
    provably whole) with a static retrace (which drops ``rel[:8]`` of 8 rows): the unpruned
    model "ran other code" and every group pinned (DeBERTa-v2: nothing prunable). A slice from
    0 that keeps its input's shape is the identity at the traced sizes, on both sides."""
    torch.manual_seed(0)
    model, ids = RelativePositions().eval(), torch.randint(0, 16, (2, 8))
    assert is_exported(trace_graph(model, {"ids": ids}))
    result = check_oracle(model, {"ids": ids}, tmp_path)
    assert {g.name for g in result.plan.prunable} == {"up:out", "down:out"}


transformers = pytest.importorskip("transformers")


def _hf(config_cls: str, model_cls: str, **fields: object) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**fields)
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"  # experts as a loop of linears (tests/test_moe.py)
    return getattr(transformers, model_cls)(config).eval()


def _ids(batch: int = 2, seq: int = 8) -> dict[str, Tensor]:
    ids = torch.randint(1, 128, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, : seq // 4] = 0
    return {"input_ids": ids, "attention_mask": mask}


_ENC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
            max_position_embeddings=64)  # fmt: skip


@pytest.mark.slow
def test_deberta_v2_prunes_its_mlp_and_width(tmp_path: Path) -> None:
    """DeBERTa-v2 with relative attention planned nothing prunable (the slice above); its MLP
    channels and hidden width prune now, heads stay pinned (c2p/p2c gathers)."""
    model = _hf("DebertaV2Config", "DebertaV2ForSequenceClassification", **_ENC, relative_attention=True,
                pos_att_type=["p2c", "c2p"], max_relative_positions=16, position_buckets=8)  # fmt: skip
    result = check_oracle(model, _ids(), tmp_path)
    mlp = [
        g for g in result.plan.prunable if any(m.param.endswith("intermediate.dense.weight") and m.axis == 0 for m in g.members)
    ]
    assert len(mlp) == 2 and result.report.params_ratio <= 0.6


_DEC = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)

# Families and config options outside the sweep that round 7 found planning right: name ->
# (config class, model class, fields, whether the pruned model reloads from its config).
_FAMILIES: dict[str, tuple[str, str, dict[str, object], bool]] = {
    "gpt_neox_rotary_pct": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_DEC, "rotary_pct": 0.25}, True),
    "phi_qk_layernorm": ("PhiConfig", "PhiForCausalLM", {**_DEC, "qk_layernorm": True, "partial_rotary_factor": 0.5}, True),
    "llama_attention_and_mlp_bias": ("LlamaConfig", "LlamaForCausalLM", {**_DEC, "attention_bias": True, "mlp_bias": True}, True),
    "gemma_mqa": ("GemmaConfig", "GemmaForCausalLM", {**_DEC, "head_dim": 16, "num_key_value_heads": 1}, True),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", {**_DEC, **_MOE, "head_dim": 16, "sliding_window": 4,
                "layer_types": ["sliding_attention", "full_attention"]}, True),
    "deepseek_v3_mla": ("DeepseekV3Config", "DeepseekV3ForCausalLM", {**_DEC, "num_key_value_heads": 4,
                        "moe_intermediate_size": 32, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1,
                        "topk_group": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 32,
                        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "n_shared_experts": 1}, False),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", _FAMILIES)
def test_family_outside_the_sweep(name: str, tmp_path: Path) -> None:
    """The oracle, <= 60% kept at 0.5, and the reload claim: identical outputs where True."""
    config_cls, model_cls, fields, reloads = _FAMILIES[name]
    model, x = _hf(config_cls, model_cls, **fields), _ids()
    result = check_oracle(model, x, tmp_path)
    assert result.report.params_ratio <= 0.6 and result.report.reloadable is reloads
    if reloads:
        result.model.save_pretrained(tmp_path / "small")
        again = type(model).from_pretrained(tmp_path / "small").eval()
        with torch.no_grad():
            assert torch.equal(result.model.eval()(**x).logits, again(**x).logits)


def _signature(plan: skg.Plan) -> list[tuple]:
    return sorted(
        (g.name, g.size, g.prunable, g.zero_invariant, sorted((m.param, m.axis, m.start, m.stop) for m in g.members))
        for g in plan.groups
    )


@pytest.mark.slow
def test_timm_fastvit_on_meta_plans_like_real_weights() -> None:
    """A timm model built under ``torch.device("meta")`` (reparameterisable blocks, attention
    stages) plans with no weights anywhere, and the plan is the real one."""
    timm = pytest.importorskip("timm")
    kwargs = dict(pretrained=False, num_classes=10)
    with torch.device("meta"):
        model = timm.create_model("fastvit_t8", **kwargs).eval()
    meta = skg.plan(model, torch.randn(2, 3, 64, 64, device="meta"))
    torch.manual_seed(0)
    real = skg.plan(timm.create_model("fastvit_t8", **kwargs).eval(), torch.randn(2, 3, 64, 64))
    assert len(real.prunable) >= 12 and _signature(meta) == _signature(real)
