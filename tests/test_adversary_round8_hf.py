"""Adversary round 8 (issue 7): timm and Hugging Face families beyond round 7 and the sweep.

Each finding of ``/tmp/adv8hf`` (models built from small configs, no download) in miniature where
one exists, else on the small library model (``@pytest.mark.slow``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_oracle
from torch import Tensor, nn

from sparsekit_graph.graph.trace import is_exported, trace_graph


class AlibiSlice(nn.Module):
    """MPT's attention bias: a ``(heads, 1, max_len)`` table cut to the keys with
    ``bias[:, max(0, bias.size(1) - q):, max(0, bias.size(2) - k):]``. The first cut is the whole
    axis; a slice assignment sends the model to torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.bias = nn.Embedding(16, 8), nn.Parameter(torch.randn(2, 1, 12))
        self.up, self.down, self.out = nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)  # (B, L, 8)
        length = ids.shape[1]
        bias = self.bias[:, max(0, self.bias.size(1) - length) :, max(0, self.bias.size(2) - length) :]  # (2, 1, L)
        h = h + bias.mean(0).transpose(0, 1)  # (L, 1) over the width
        g = torch.relu(self.up(h)).clone()
        g[:, 0] = 0.0
        return self.out(h + self.down(g))


def test_slice_whole_from_a_computed_start_is_the_same_code(tmp_path: Path) -> None:
    """The dynamic trace keeps ``slice(bias, 1, sym_max)`` (``max(0, 1 - s)`` is not provably 0),
    the probe's static retrace drops the whole slice: the unpruned model "ran other code" and
    every group pinned (MPT: nothing prunable). A slice that keeps its input's shape picks every
    position in order, whatever its bounds: the identity, on both sides."""
    torch.manual_seed(0)
    model, ids = AlibiSlice().eval(), torch.randint(0, 16, (2, 8))
    assert is_exported(trace_graph(model, {"ids": ids}))
    result = check_oracle(model, {"ids": ids}, tmp_path)
    assert {g.name for g in result.plan.prunable} >= {"up:out"}


class TopKRows(nn.Module):
    """JetMoE's expert dispatch: a buffer of ``bsz * length * self.top_k`` rows, a plain int
    attribute times torch.export's symbolic batch and length."""

    def __init__(self) -> None:
        super().__init__()
        self.top_k = 2
        self.up, self.down = nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        bsz, length = x.shape[:2]
        h = torch.relu(self.up(x)).clone()  # (B, L, 12)
        h[:, 0] = 0.0  # a slice assignment: torch.export
        rows = h.new_ones((bsz * length * self.top_k, 1)) * h.reshape(-1, h.shape[-1]).repeat(self.top_k, 1)
        return self.down(rows.reshape(self.top_k, bsz, length, -1).sum(0))


def test_a_plain_attribute_times_a_symbolic_size_traces(tmp_path: Path) -> None:
    """``SymInt * self.top_k`` raised TypeError inside our tracing (the attribute's tracked int
    gave up on the SymInt instead of handing it its plain value), so ``plan`` refused a model
    torch.export traces (JetMoE, Longformer: 'unsupported operand type(s) for *: SymInt and
    PlainRead')."""
    torch.manual_seed(0)
    model, x = TopKRows().eval(), torch.randn(2, 4, 8)
    assert is_exported(trace_graph(model, x))
    result = check_oracle(model, x, tmp_path)
    assert {g.name for g in result.plan.prunable} == {"up:out"}


class SpanMin(nn.Module):
    """DeBERTa's and CANINE's ``min(length, self.max_relative_positions)``: under torch.export a
    ``torch.sym_min`` of the symbolic length and a tracked attribute read."""

    def __init__(self) -> None:
        super().__init__()
        self.max_span = 6
        self.emb, self.table = nn.Embedding(16, 8), nn.Parameter(torch.randn(12, 8))
        self.up, self.down, self.out = nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)  # (B, L, 8)
        span = min(ids.shape[1], self.max_span)
        h = h + self.table[:span].mean(0)
        g = torch.relu(self.up(h)).clone()
        g[:, 0] = 0.0  # a slice assignment: torch.export
        return self.out(h + self.down(g))


def test_sym_min_of_a_length_and_an_attribute_traces(tmp_path: Path) -> None:
    """``torch.sym_min(SymInt, read)`` returned NotImplemented (a SymInt takes exact ints only)
    inside the torch function mode that classifies reads, so ``plan`` refused ("no
    implementation found for 'torch.sym_min'"): CANINE refused, 12/18 groups prunable now."""
    torch.manual_seed(0)
    model, ids = SpanMin().eval(), torch.randint(0, 16, (2, 8))
    assert is_exported(trace_graph(model, {"ids": ids}))
    result = check_oracle(model, {"ids": ids}, tmp_path)
    assert {g.name for g in result.plan.prunable} >= {"up:out"}


class GrowingTable(nn.Module):
    """XGLM's sinusoidal positions: ``if max_pos > self.weights.size(0)`` rebuilds the table,
    ``max_pos`` made from torch.export's symbolic length."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.randn(16, 8), persistent=False)
        self.emb = nn.Embedding(16, 8)
        self.up, self.down, self.out = nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        max_pos = 2 + ids.shape[1]
        if max_pos > self.weights.size(0):
            raise ValueError("longer than the table")
        h = self.emb(ids) + self.weights.index_select(0, torch.arange(ids.shape[1]))  # (B, L, 8)
        g = torch.relu(self.up(h)).clone()
        g[:, 0] = 0.0  # a slice assignment: torch.export
        return self.out(h + self.down(g))


def test_a_symbolic_length_compared_with_a_buffer_length_traces(tmp_path: Path) -> None:
    """``SymInt > self.weights.size(0)``: the tracked length read returned NotImplemented to the
    SymInt's reflected comparison, and ``plan`` refused XGLM ("'>' not supported between
    instances of 'SymInt' and 'SizeRead'"); it plans now (5/7 groups prunable)."""
    torch.manual_seed(0)
    model, ids = GrowingTable().eval(), torch.randint(0, 16, (2, 8))
    assert is_exported(trace_graph(model, {"ids": ids}))
    result = check_oracle(model, {"ids": ids}, tmp_path)
    assert {g.name for g in result.plan.prunable} >= {"up:out"}


transformers = pytest.importorskip("transformers")
from test_adversary_round7_hf import _hf, _ids  # noqa: E402  (tiny configs, vocab 128)


@pytest.mark.slow
def test_mpt_prunes_its_mlp_and_width(tmp_path: Path) -> None:
    """MPT (ALiBi) planned nothing prunable: its MLP and hidden width prune now; heads stay
    pinned (the ALiBi slopes are computed from the head count)."""
    model = _hf("MptConfig", "MptForCausalLM", vocab_size=128, d_model=64, n_heads=4, n_layers=2, expansion_ratio=2,
                max_seq_len=64)  # fmt: skip
    result = check_oracle(model, _ids(), tmp_path)
    up = [g for g in result.plan.prunable if any(m.param.endswith("ffn.up_proj.weight") and m.axis == 0 for m in g.members)]
    assert len(up) == 2 and result.report.params_ratio <= 0.4


_ENC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
# Refused by our own tracing under torch.export before this round: name -> (config class, model
# class, fields, largest fraction of parameters kept at 0.5, as measured).
_REFUSED: dict[str, tuple[str, str, dict[str, object], float]] = {
    "canine": ("CanineConfig", "CanineForSequenceClassification", {**_ENC, "downsampling_rate": 2, "num_hash_functions": 2,
               "num_hash_buckets": 64, "max_position_embeddings": 64, "local_transformer_stride": 4}, 0.3),
    "xglm": ("XGLMConfig", "XGLMForCausalLM", dict(vocab_size=128, d_model=64, ffn_dim=128, num_layers=2,
             attention_heads=4, max_position_embeddings=64), 0.3),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", _REFUSED)
def test_refused_family_plans(name: str, tmp_path: Path) -> None:
    """The oracle and the measured kept fraction."""
    config_cls, model_cls, fields, kept = _REFUSED[name]
    result = check_oracle(_hf(config_cls, model_cls, **fields), _ids(), tmp_path)
    assert result.report.params_ratio <= kept
