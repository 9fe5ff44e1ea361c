"""torch's transformer layers plan like their parts written out (issue 7: a layer pinned only
where an op has no rule): ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``,
``nn.TransformerEncoder`` / ``nn.TransformerDecoder`` stacks, ``nn.Transformer`` and
``F.multi_head_attention_forward`` called directly.

Each model is pruned at 0.5 of every prunable group and must run in train and eval mode;
masks on the zero-invariant groups (heads, feed-forward width) must give the masked dense
model's outputs exactly, in train mode (dropout 0) and in eval mode, where torch takes its
fused fast path (``torch._transformer_encoder_layer_fwd``, nested tensors) when it can.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel
from torch import Tensor, nn

import sparsekit_graph as skg

D, H, FF, DIN, OUT, B, L, S, KD, EO = 8, 4, 16, 6, 3, 2, 5, 4, 6, 7


def _padding() -> Tensor:
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 3:] = True  # left aligned, as the nested-tensor path wants
    return pad


class EncoderLayer(nn.Module):
    """Linear in, one ``nn.TransformerEncoderLayer``, linear out; ``inputs`` picks the mask arguments."""

    def __init__(self, batch_first: bool = True, norm_first: bool = False, activation: str | Callable = "relu",
                 inputs: str = "none") -> None:  # fmt: skip
        super().__init__()
        self.inp, self.head, self.inputs, self.batch_first = nn.Linear(DIN, D), nn.Linear(D, OUT), inputs, batch_first
        self.enc = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation=activation, batch_first=batch_first,
                                              norm_first=norm_first)  # fmt: skip
        masked = torch.rand(L, L, generator=torch.Generator().manual_seed(0)) > 0.6
        self.register_buffer("mask", torch.zeros(L, L).masked_fill(masked.fill_diagonal_(False), float("-inf")))
        self.register_buffer("bool_mask", masked)  # F._canonical_mask makes it a float mask on the CPU in tracing
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(L))

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.inp(x if self.batch_first else x.transpose(0, 1))
        if self.inputs == "padding":
            h = self.enc(h, src_key_padding_mask=pad)
        elif self.inputs == "attn_mask":
            h = self.enc(h, src_mask=self.mask)
        elif self.inputs == "bool_mask":
            h = self.enc(h, src_mask=self.bool_mask)
        elif self.inputs == "causal":
            h = self.enc(h, src_mask=self.causal, is_causal=True)
        else:
            h = self.enc(h)
        return self.head(h if self.batch_first else h.transpose(0, 1))


class DecoderLayer(nn.Module):
    """``nn.TransformerDecoderLayer`` over a memory from its own projection, with a causal target mask."""

    def __init__(self, batch_first: bool = True, norm_first: bool = False) -> None:
        super().__init__()
        self.inp, self.mem, self.head = nn.Linear(DIN, D), nn.Linear(DIN, D), nn.Linear(D, OUT)
        self.dec = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(L))

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.dec(self.inp(x), self.mem(x[:, :S]), tgt_mask=self.causal, tgt_is_causal=True)
        return self.head(h)


class Stack(nn.Module):
    """``nn.TransformerEncoder`` of two layers (``nested``: torch's nested-tensor path with a padding mask)."""

    def __init__(self, nested: bool = False) -> None:
        super().__init__()
        self.inp, self.head, self.nested = nn.Linear(DIN, D), nn.Linear(D, OUT), nested
        layer = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested, norm=nn.LayerNorm(D))

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.enc(self.inp(x), src_key_padding_mask=pad) if self.nested else self.enc(self.inp(x))
        return self.head(h)


class Seq2Seq(nn.Module):
    """``nn.Transformer`` with one encoder and one decoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.tgt, self.head = nn.Linear(DIN, D), nn.Linear(DIN, D), nn.Linear(D, OUT)
        self.t = nn.Transformer(D, H, 1, 1, FF, dropout=0.0, batch_first=True)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        return self.head(self.t(self.inp(x), self.tgt(x[:, :S])))


class Functional(nn.Module):
    """``F.multi_head_attention_forward`` with separate projections (CLIP's attention pooling
    spelling) and a memory of another width for keys and values."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mem, self.head = nn.Linear(DIN, D), nn.Linear(DIN, KD), nn.Linear(EO, OUT)
        self.q_proj, self.k_proj, self.v_proj, self.c_proj = nn.Linear(D, D), nn.Linear(KD, D), nn.Linear(KD, D), nn.Linear(D, EO)
        self.num_heads = H

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        q, m = self.inp(x).transpose(0, 1), self.mem(x[:, :S]).transpose(0, 1)
        y, _ = F.multi_head_attention_forward(
            q, m, m, q.shape[-1], self.num_heads, None, torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            None, None, False, 0.0, self.c_proj.weight, self.c_proj.bias, training=self.training,
            key_padding_mask=pad[:, :S], need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
        )  # fmt: skip
        return self.head(y.transpose(0, 1))


def _run(model: nn.Module, x: Tensor, train: bool) -> Tensor:
    model.train(train)
    with torch.no_grad():
        return model(x, _padding())


def _check(model: nn.Module, expect: set[str]) -> skg.Plan:
    """Plan (``expect``: the prunable groups); prune at 0.5 runs in train and eval; masks on the
    zero-invariant groups give the masked dense model's outputs in train and eval."""
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(B, L, DIN)
    plan = skg.plan(model, (x, _padding()))
    assert {g.name for g in plan.prunable} == expect
    small = skg.prune(model, plan, ratio=0.5).model
    for train in (True, False):
        assert _run(small, x, train).shape == _run(model, x, train).shape
    gen = torch.Generator().manual_seed(1)
    masks = {}
    for g in plan.prunable:
        if g.zero_invariant and g.size > 1:
            m = torch.zeros(g.size, dtype=torch.bool)
            m[torch.randperm(g.size - 1, generator=gen)[: g.size // 2] + 1] = True
            masks[g.name] = m
    assert masks
    dense = copy.deepcopy(model)
    couplings = skg.bind(plan, dense)
    for name, m in masks.items():
        couplings[name].apply_mask(m)
    pruned = skg.prune(model, plan, masks=masks).model
    for train in (True, False):
        assert_close_rel(_run(dense, x, train), _run(pruned, x, train))
    return plan


def _layer(prefix: str, *attention: str) -> set[str]:
    """A layer's groups: the heads of each attention, the feed-forward width."""
    return {f"{prefix}.{a}.in_proj_weight:0" for a in attention} | {f"{prefix}.linear1:out"}


ENCODER = _layer("enc", "self_attn") | {"inp:out"}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_layouts(batch_first: bool, norm_first: bool) -> None:
    _check(EncoderLayer(batch_first, norm_first), ENCODER)


@pytest.mark.parametrize("activation", ["gelu", F.gelu, nn.SiLU()], ids=["gelu", "F.gelu", "SiLU"])
def test_encoder_layer_activations(activation: str | Callable) -> None:
    _check(EncoderLayer(activation=activation), ENCODER)


@pytest.mark.parametrize("inputs", ["padding", "attn_mask", "bool_mask", "causal"])
def test_encoder_layer_masks(inputs: str) -> None:
    _check(EncoderLayer(inputs=inputs), ENCODER)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer(norm_first: bool) -> None:
    _check(DecoderLayer(norm_first=norm_first), _layer("dec", "self_attn", "multihead_attn") | {"inp:out"})


def test_encoder_stack() -> None:
    _check(Stack(), _layer("enc.layers.0", "self_attn") | _layer("enc.layers.1", "self_attn") | {"inp:out"})


def test_encoder_stack_nested() -> None:
    """A padded batch that ``nn.TransformerEncoder`` runs as nested tensors in eval: torch's fused
    layers need ``num_heads * head_dim == embed_dim``, so heads and width pin, saying why."""
    plan = _check(Stack(nested=True), {"enc.layers.0.linear1:out", "enc.layers.1.linear1:out"})
    reasons = {g.name: g.reason or "" for g in plan.groups}
    assert "nested tensors" in reasons["enc.layers.0.self_attn.in_proj_weight:0"]
    assert "nested tensors" in reasons["inp:out"]


def test_transformer() -> None:
    """``nn.Transformer`` checks ``src.size(-1) != self.d_model``: Python control flow on the
    width, which pins it; heads and feed-forward widths of both stacks prune."""
    layers = _layer("t.encoder.layers.0", "self_attn") | _layer("t.decoder.layers.0", "self_attn", "multihead_attn")
    plan = _check(Seq2Seq(), layers)
    assert "control flow" in next(g.reason for g in plan.groups if g.name == "inp:out")


def test_functional_attention() -> None:
    """``F.multi_head_attention_forward`` sizes its heads by the query width: that width, the
    q/k/v rows and ``out_proj``'s columns pin; the key/value width and the output width prune."""
    plan = _check(Functional(), {"mem:out", "c_proj:out"})
    assert "splits the query width by num_heads=4" in next(g.reason for g in plan.groups if g.name == "inp:out")


class HandEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)`` written out, with
    the same layers under the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D, H, dropout=0.0, batch_first=True)
        self.linear1, self.dropout, self.linear2 = nn.Linear(D, FF), nn.Dropout(0.0), nn.Linear(FF, D)
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.dropout1, self.dropout2 = nn.Dropout(0.0), nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def _groups(plan: skg.Plan) -> list[tuple]:
    return sorted((g.name, g.size, g.zero_invariant, g.reason is None, sorted(map(str, g.members))) for g in plan.groups)


def test_encoder_layer_plans_as_written_out() -> None:
    """One computation, two spellings, one plan: the stock layer and the same forward by hand."""
    stock = EncoderLayer()
    hand = EncoderLayer()
    hand.enc = HandEncoderLayer()
    x = torch.randn(B, L, DIN)
    assert _groups(skg.plan(stock.eval(), (x, _padding()))) == _groups(skg.plan(hand.eval(), (x, _padding())))
