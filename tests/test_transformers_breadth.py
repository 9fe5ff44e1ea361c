"""Transformers beyond the core families: torchvision and timm vision transformers,
``nn.MultiheadAttention``, and Hugging Face OPT, Phi-3, GPT-NeoX, Falcon, Gemma, CLIP,
DistilBERT, RoBERTa, T5 and Swin from small configs (the DESIGN.md oracle, <= 60% kept at
0.5 with heads pruned, reload with ``from_pretrained``). Full-size models run under -m slow."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import assert_close_rel, call, check_oracle, first_tensor
from torch import nn

import sparsekit_graph as skg
from sparsekit_graph.prune.mha import PrunedMultiheadAttention
from sparsekit_graph.zoo import hf_model

tv = pytest.importorskip("torchvision")


def _head_groups(plan: skg.Plan, param_suffix: str) -> list[skg.Group]:
    """Prunable groups owning blocks (> 1 rows per channel) of parameters ending in ``param_suffix``."""
    return [g for g in plan.prunable if any(m.param.endswith(param_suffix) and m.block > 1 for m in g.members)]


def _kept(result: skg.PruneResult) -> float:
    return result.report.params_after / result.report.params_before


# -- nn.MultiheadAttention -----------------------------------------------------------------


def _small_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )
    return model.eval(), torch.randn(2, 3, 32, 32)


def test_torchvision_vit_prunes_heads_of_multihead_attention(tmp_path: Path) -> None:
    model, x = _small_vit()
    result = check_oracle(model, x, tmp_path)
    assert _kept(result) <= 0.6
    heads = _head_groups(result.plan, "in_proj_weight")
    assert len(heads) == 2 and all(g.size == 4 and g.zero_invariant for g in heads)
    rows = sorted(m.start for m in heads[0].members if m.param.endswith("in_proj_weight"))
    assert rows == [0, 64, 128]  # q, k and v slices of the packed projection, 16 rows per head
    attn = result.model.encoder.layers[0].self_attention
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 16, 32)  # heads and width both halved: stock class


class _Mha(nn.Module):
    def __init__(self, batch_first: bool, use_weights: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.use_weights = use_weights
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        y, w = self.attn(h, h, h, key_padding_mask=pad)
        out = self.fc(y)
        return out + w.sum() if self.use_weights else out


def _pad(batch_first: bool) -> dict[str, torch.Tensor]:
    x = torch.randn(2, 6, 8) if batch_first else torch.randn(6, 2, 8)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    return {"x": x, "pad": pad}


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_multihead_attention_with_padding_mask_prunes_heads_exactly(batch_first: bool, tmp_path: Path) -> None:
    model, x = _Mha(batch_first, use_weights=False).eval(), _pad(batch_first)
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    heads = _head_groups(result.plan, "attn.in_proj_weight")
    assert len(heads) == 1 and heads[0].zero_invariant and heads[0].size == 4
    mask = torch.tensor([False, True, True, False])  # heads only: 2 heads of 8 on a 32-wide input
    small = skg.prune(model, result.plan, masks={heads[0].name: mask}).model
    assert isinstance(small.attn, PrunedMultiheadAttention) and small.attn.num_heads == 2
    dense = copy.deepcopy(model)
    skg.bind(result.plan, dense)[heads[0].name].apply_mask(mask)
    with torch.no_grad():
        assert_close_rel(call(dense, x), call(small, x))


def test_inplace_head_pruning_swaps_the_class_of_the_users_layer() -> None:
    model, x = _Mha(True, use_weights=False).eval(), _pad(True)
    plan = skg.plan(model, x)
    heads = _head_groups(plan, "attn.in_proj_weight")[0]
    dense = copy.deepcopy(model)
    result = skg.prune(model, plan, masks={heads.name: torch.tensor([True, False, False, True])}, inplace=True)
    assert result.model is model and isinstance(model.attn, PrunedMultiheadAttention) and model.attn.num_heads == 2
    skg.bind(plan, dense)[heads.name].apply_mask(torch.tensor([True, False, False, True]))
    with torch.no_grad():
        assert_close_rel(call(dense, x), call(model, x))


def test_multihead_attention_weights_used_cost_zero_invariance() -> None:
    """The returned weights average over heads: a zeroed head still counts in the mean."""
    plan = skg.plan(_Mha(True, use_weights=True), _pad(True))
    heads = _head_groups(plan, "attn.in_proj_weight")
    assert len(heads) == 1 and not heads[0].zero_invariant


def test_pruned_multihead_attention_equals_the_stock_layer() -> None:
    """Same parameters, same widths: the pruned class computes what ``nn.MultiheadAttention``
    does, with masks, weights (averaged or not), batch-first or not."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        stock = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        mine = copy.deepcopy(stock)
        mine.__class__ = PrunedMultiheadAttention
        x, pad = _pad(batch_first).values()
        h = torch.randn(*x.shape[:2], 32)
        causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
        for kw in (
            {"need_weights": False},
            {"key_padding_mask": pad},
            {"attn_mask": causal, "average_attn_weights": False},
            {"attn_mask": causal, "key_padding_mask": pad, "need_weights": False},
        ):
            with torch.no_grad():
                a, wa = stock(h, h, h, **kw)
                b, wb = mine(h, h, h, **kw)
            assert_close_rel(a, b, rtol=1e-5)
            assert (wa is None) == (wb is None) and (wa is None or torch.allclose(wa, wb, atol=1e-6))


def test_separate_kv_projections_pin_with_a_reason() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)

        def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return self.attn(q, kv, kv, need_weights=False)[0]

    plan = skg.plan(Cross(), (torch.randn(2, 3, 16), torch.randn(2, 5, 8)))
    assert not any(m.param.startswith("attn.") for g in plan.prunable for m in g.members)
    assert any("separate q/k/v" in (g.reason or "") for g in plan.groups)


@pytest.mark.slow
def test_torchvision_vit_b_16_full_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tv.models.vit_b_16(weights=None).eval()
    result = check_oracle(model, torch.randn(1, 3, 224, 224), tmp_path)
    assert _kept(result) <= 0.6 and len(_head_groups(result.plan, "in_proj_weight")) == 12


def test_saved_pruned_vit_loads_on_a_fresh_model(tmp_path: Path) -> None:
    model, x = _small_vit()
    result = skg.prune(model, skg.plan(model, x), ratio=0.5)
    skg.save_pruned(result, tmp_path)
    again = skg.load_pruned(_small_vit()[0], tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(call(result.model, x), call(again, x))
    assert first_tensor(call(again, x)).shape == (2, 10)


# -- Swin ----------------------------------------------------------------------------------


def _small_swin() -> tuple[nn.Module, torch.Tensor]:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10)
    return model.eval(), torch.randn(2, 3, 32, 32)


def test_torchvision_swin_prunes_heads_with_their_residual_channels(tmp_path: Path) -> None:
    """torchvision's shifted_window_attention splits qkv by the input width: a head is
    ``head_dim`` residual channels with its q/k/v rows, proj columns and bias-table column."""
    model, x = _small_swin()
    result = check_oracle(model, x, tmp_path)
    assert _kept(result) <= 0.6
    g = next(g for g in result.plan.prunable if any(m.param == "features.1.0.attn.qkv.weight" for m in g.members))
    table = [m for m in g.members if m.param == "features.1.0.attn.relative_position_bias_table"]
    assert g.size == 2 and table and table[0].axis == 1
    assert {(r.attr, r.per_channel) for r in g.sizes} == {("num_heads", 1)}
    assert result.model.features[1][0].attn.num_heads == 1


@pytest.mark.slow
def test_torchvision_swin_t_full_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = check_oracle(tv.models.swin_t(weights=None).eval(), torch.randn(1, 3, 224, 224), tmp_path)
    assert _kept(result) <= 0.6


# -- timm and MaxViT -------------------------------------------------------------------------

timm = pytest.importorskip("timm")


def _timm(name: str, size: int, **kwargs: object) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=size, **kwargs).eval(), torch.randn(2, 3, size, size)


def test_timm_vit_with_three_heads_prunes_heads(tmp_path: Path) -> None:
    """``reshape(B, N, 3, num_heads, head_dim)`` with 3 heads: the later 3 is the head count."""
    model, x = _timm("vit_tiny_patch16_224", 32, depth=2)
    result = check_oracle(model, x, tmp_path)
    assert _kept(result) <= 0.6
    heads = _head_groups(result.plan, "attn.qkv.weight")
    assert len(heads) == 2 and all(g.size == 3 and g.zero_invariant for g in heads)
    assert {(r.attr, r.per_channel) for r in heads[0].sizes} == {("num_heads", 1), ("attn_dim", 64)}


def _small_maxvit() -> tuple[nn.Module, torch.Tensor]:
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2, block_channels=[32, 64], block_layers=[1, 1],
                   head_dim=16, stochastic_depth_prob=0.0, num_classes=10)  # fmt: skip
    return model.eval(), torch.randn(2, 3, 64, 64)


VISION_SLOW = {
    "timm_deit_tiny": lambda: _timm("deit_tiny_patch16_224", 224),
    "timm_vit_tiny": lambda: _timm("vit_tiny_patch16_224", 224),
    "timm_swin_small_config": lambda: _timm(
        "swin_tiny_patch4_window7_224", 56, depths=(2, 2), num_heads=(3, 6), embed_dim=48, num_classes=10
    ),  # a 1000-class head (a model output) would be a quarter of so small a model
    "timm_swin_tiny": lambda: _timm("swin_tiny_patch4_window7_224", 224),
    "maxvit_small_config": _small_maxvit,
    "maxvit_t": lambda: (tv.models.maxvit_t(weights=None).eval(), torch.randn(1, 3, 224, 224)),
    "swin_v2_t": lambda: (tv.models.swin_v2_t(weights=None).eval(), torch.randn(1, 3, 256, 256)),  # cosine attention
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VISION_SLOW))
def test_vision_transformers_prune_attention(name: str, tmp_path: Path) -> None:
    """The oracle, <= 60% kept, and a prunable group with head blocks in every attention layer."""
    model, x = VISION_SLOW[name]()
    result = check_oracle(model, x, tmp_path)
    assert _kept(result) <= 0.6
    attention = [
        n
        for n, m in model.named_modules()
        if type(m).__name__.removesuffix("V2").endswith("Attention")
        and hasattr(m, "num_heads" if "maxvit" not in name else "n_heads")
    ]
    qkv = {n: next(a for a in ("qkv", "to_qkv") if hasattr(dict(model.named_modules())[n], a)) for n in attention}
    covered = {
        n
        for n in attention
        for g in result.plan.prunable
        if any(m.param == f"{n}.{qkv[n]}.weight" and m.block > 1 for m in g.members)
    }
    assert attention and covered == set(attention), f"attention layers without prunable heads: {sorted(set(attention) - covered)}"


# -- Hugging Face families from small configs -----------------------------------------------

transformers = pytest.importorskip("transformers")

HF_FAMILIES = ("phi3", "opt", "gpt_neox", "falcon", "distilbert", "roberta", "t5_encoder", "t5", "clip_vision", "gemma", "swin")
_DEFAULT_HF = ()  # each exports three times (slow); Phi-3's rule is tested below in the default run
_EQUAL_COUNTS = {"phi3"}  # reads config.num_attention_heads in forward: one count for all layers
_NOT_RELOADABLE: set[str] = set()  # Gemma's embed_scale follows the pruned width (prune/embed_scale.py)


def _hf(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return hf_model(name)


def _attention_modules(model: nn.Module) -> list[str]:
    """Modules that own the q/k/v (or fused qkv) projections of one attention layer."""
    return [
        n
        for n, m in model.named_modules()
        if type(m).__name__.endswith("Attention") and any(isinstance(c, nn.Linear) for c in m.children())
    ]


def _params() -> list[pytest.ParameterSet]:
    return [pytest.param(n, marks=() if n in _DEFAULT_HF else pytest.mark.slow) for n in HF_FAMILIES]


@pytest.mark.parametrize("name", _params())
def test_hf_family_oracle_heads_and_reload(name: str, tmp_path: Path) -> None:
    """The oracle; <= 60% kept at 0.5 with a prunable, zero-invariant head group in every
    attention layer; ``save_pretrained`` -> ``from_pretrained`` gives identical outputs."""
    model, x = _hf(name)
    result = check_oracle(model, x, tmp_path, equal_counts=name in _EQUAL_COUNTS)
    assert _kept(result) <= 0.6, f"{name} keeps {_kept(result):.1%}"
    layers = _attention_modules(model)
    with_heads = {
        layer for layer in layers for g in result.plan.prunable
        if g.zero_invariant and any(m.param.startswith(layer + ".") and m.block > 1 for m in g.members)
    }  # fmt: skip
    assert layers and with_heads == set(layers), f"layers without a head group: {sorted(set(layers) - with_heads)}"
    if name in _NOT_RELOADABLE:
        assert result.report.reloadable is False
        return
    assert result.report.reloadable is True
    small = result.model.eval()  # the oracle left it in train mode
    small.save_pretrained(tmp_path / "hf")
    again = type(model).from_pretrained(tmp_path / "hf", attn_implementation=small.config._attn_implementation).eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(small, x)), first_tensor(call(again, x)))


def test_phi3_fused_qkv_parts_follow_head_counts() -> None:
    """Phi-3 slices ``qkv_proj`` at ``num_attention_heads * head_dim`` and
    ``num_key_value_heads * head_dim``: each KV group owns its query heads' rows, its key and
    value rows, and the counts are rewritten on the config and the layer."""
    model, x = _hf("phi3")
    plan = skg.plan(model, x)
    g = next(
        g for g in plan.prunable if any(m.param == "model.layers.0.self_attn.qkv_proj.weight" and m.block > 1 for m in g.members)
    )
    parts = sorted((m.start, m.stop, m.block) for m in g.members if m.param.endswith("qkv_proj.weight"))
    assert g.size == 2 and parts == [(0, 64, 32), (64, 96, 16), (96, 128, 16)]
    assert {(r.owner, r.attr, r.per_channel) for r in g.sizes} >= {
        ("config", "num_attention_heads", 2),
        ("model.layers.0.self_attn", "num_key_value_heads", 1),
    }
    mask = {h.name: torch.tensor([True, False]) for h in plan.prunable if h.size == 2 and h.sizes}
    small = skg.prune(model, plan, masks=mask).model
    assert small.config.num_attention_heads == 2 and small.model.layers[1].self_attn.num_key_value_heads == 1
    dense = copy.deepcopy(model)
    for name, m in mask.items():
        skg.bind(plan, dense)[name].apply_mask(m)
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))


@pytest.mark.slow
def test_phi3_head_counts_are_tied_across_layers() -> None:
    """Every layer reads ``config.num_attention_heads``: the plan ties the layers' head groups
    (equal counts), masks that break it are rejected before surgery, and a global ranking is
    snapped to one count for all layers."""
    model, x = _hf("phi3")
    plan = skg.plan(model, x)
    g = next(
        g for g in plan.prunable if any(m.param == "model.layers.0.self_attn.qkv_proj.weight" and m.block > 1 for m in g.members)
    )
    tie = next(t for t in plan.ties if "config.num_attention_heads" in t.reason)
    assert {p.group for p in tie.parts} == {h.name for h in plan.prunable if h.size == 2 and h.sizes}  # every layer
    with pytest.raises(skg.PlanError, match="masks break the tie"):
        skg.prune(model, plan, masks={g.name: torch.tensor([True, False])})
    assert model.config.num_attention_heads == 4
    small = skg.prune(model, plan, ratio=0.5, global_ranking=True).model  # ranked globally, snapped to one count
    assert small.config.num_attention_heads == 2 and {m.self_attn.num_key_value_heads for m in small.model.layers} == {1}


# -- Falcon's multi-query and grouped fused qkv ------------------------------------------------

FALCON_MQA = {
    "multi_query": dict(multi_query=True),  # view(b, s, num_heads + 2, head_dim); k, v = [..., [-2]], [..., [-1]]
    "new_arch_2_groups": dict(new_decoder_architecture=True, num_kv_heads=2),  # view(b, s, -1, H // G + 2, hd)
}


def _falcon(extra: dict) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    base = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.FalconConfig(**{**base, **extra})
    return transformers.FalconForCausalLM(config).eval(), {"input_ids": torch.randint(0, 128, (2, 8))}


@pytest.mark.parametrize(
    ("name", "gqa"),
    [
        ("multi_query", "query_heads"),
        pytest.param("multi_query", "kv_groups", marks=pytest.mark.slow),
        pytest.param("new_arch_2_groups", "kv_groups", marks=pytest.mark.slow),
    ],
)
def test_falcon_fused_key_value_slots_prune_query_heads_and_reload(name: str, gqa: str, tmp_path: Path) -> None:
    """The key and value slots Falcon picks by fixed positions (``[..., [-2], :]``) pin; the
    query heads before them (``[..., :-2, :]``, as many as ``num_heads``) are channels, and
    ``num_heads`` (with ``num_kv_heads`` for whole groups) follows: oracle and exact reload."""
    model, x = _falcon(FALCON_MQA[name])
    result = check_oracle(model, x, tmp_path, gqa=gqa)
    assert _kept(result) <= 0.6
    qkv = "transformer.h.0.self_attention.query_key_value.weight"
    heads = [g for g in result.plan.prunable if g.zero_invariant and any(m.param == qkv and m.block > 1 for m in g.members)]
    assert len(heads) == 1
    if name == "multi_query":  # one key/value head: any number of query heads may go (one group)
        assert heads[0].size == 4 and [(m.start, m.stop, m.block) for m in heads[0].members if m.param == qkv] == [(0, 64, 16)]
        slots = next(g for g in result.plan.groups if any(m.param == qkv and m.start == 64 for m in g.members))
        assert not slots.prunable and "fixed positions [-2]" in (slots.reason or "")
    else:  # a key/value group with its 2 query heads is one channel of 64 rows
        assert heads[0].size == 2 and {(r.attr, r.per_channel) for r in heads[0].sizes} >= {("num_heads", 2), ("num_kv_heads", 1)}
    assert result.report.reloadable is True
    small = result.model.eval()
    assert small.config.num_attention_heads == 2
    small.save_pretrained(tmp_path / "hf")
    again = transformers.FalconForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(small(**x).logits, again(**x).logits)


def test_falcon_grouped_slots_that_no_count_explains_pin_with_a_reason() -> None:
    """8 heads in 2 groups: ``H // G + 2 = 6`` equals no count plus the key/value slots, so the
    picks pin the heads (the plan cannot say how the literal would follow)."""
    model, x = _falcon(dict(new_decoder_architecture=True, num_kv_heads=2, num_attention_heads=8, hidden_size=128))
    plan = skg.plan(model, x)
    qkv = "transformer.h.0.self_attention.query_key_value.weight"
    heads = [g for g in plan.groups if any(m.param == qkv and m.axis == 0 for m in g.members)]
    assert heads and not any(g.prunable for g in heads) and all(g.reason for g in heads)  # the picks or the probe


class _CropByComputedBounds(nn.Module):
    """timm Swin's patch merging: pad to even sizes, then ``x[:, :H, :W, :]`` with ``H, W``
    read from the input's shape (torch.fx keeps the bounds as nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(4, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        y = nn.functional.pad(self.inp(x), (0, 0, 0, w % 2 + 1, 0, h % 2 + 1))
        return self.out(y[:, :h, :w, :].relu())


def test_slices_with_computed_bounds_keep_the_other_axes(tmp_path: Path) -> None:
    """A slice bounded by values computed in forward pins its own (spatial) axes only; before,
    the rule failed (``slice indices must be integers``) and pinned the channels too."""
    model = _CropByComputedBounds().eval()
    result = check_oracle(model, torch.randn(2, 5, 7, 4), tmp_path)
    g = next(g for g in result.plan.groups if any(m.param == "inp.weight" and m.axis == 0 for m in g.members))
    assert g.prunable and g.zero_invariant and g.size == 16
    assert not any("rule getitem failed" in (h.reason or "") for h in result.plan.groups)


# -- LeViT attention biases, Swin V2 cosine attention -----------------------------------------


def _levit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("levit_128s", pretrained=False, img_size=64, num_classes=10).eval(), torch.randn(2, 3, 64, 64)


def test_levit_attention_biases_are_members_of_their_heads() -> None:
    """timm LeViT adds ``attention_biases[:, attention_bias_idxs]`` (heads x offsets, gathered
    by a fixed index) to the scores: row ``h`` is a member of head ``h``; the output reshape
    reads ``val_attn_dim`` (num_heads x val_dim), which surgery lowers. 16 heads of key_dim 16
    (stage 2's downsampling attention): by value a 16 could be either, but each was read from its
    attribute, so those heads prune too (they pinned while sizes were matched by value)."""
    plan = skg.plan(*_levit())
    g = next(g for g in plan.prunable if any(m.param == "stages.0.blocks.0.attn.attention_biases" for m in g.members))
    assert g.size == 4 and g.zero_invariant
    assert {(r.attr, r.per_channel) for r in g.sizes} >= {("num_heads", 1), ("val_attn_dim", 32)}
    biases = "stages.2.downsample.attn_downsample.attention_biases"
    down = next(g for g in plan.groups if any(m.param == biases and m.axis == 0 for m in g.members))
    assert down.prunable and down.zero_invariant and down.size == 16, down.reason
    assert {(r.attr, r.per_channel) for r in down.sizes} == {("num_heads", 1), ("val_attn_dim", 64)}


@pytest.mark.slow
def test_levit_oracle(tmp_path: Path) -> None:
    """The oracle on levit_128s (the eval-mode bias cache is filled before pruning: the oracle
    runs the dense model first); heads pruned in every attention layer, stage 2's downsampling one too."""
    model, x = _levit()
    result = check_oracle(model, x, tmp_path)
    assert _kept(result) <= 0.6
    attn = result.model.stages[0].blocks[0].attn
    assert attn.num_heads == 2 and attn.attention_biases.shape[0] == 2 and attn.val_attn_dim == 64


def test_torchvision_swin_v2_cosine_attention_prunes_heads(tmp_path: Path) -> None:
    """Swin V2 normalises q and k within each head and scales the scores by that head's
    ``logit_scale`` (nH, 1, 1): a member of the head, with its q/k/v rows, residual channels,
    ``proj`` columns and ``cpb_mlp`` output row."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=10, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2).eval()  # fmt: skip
    result = check_oracle(model, torch.randn(2, 3, 32, 32), tmp_path)
    assert _kept(result) <= 0.6
    g = next(g for g in result.plan.prunable if any(m.param == "features.1.0.attn.logit_scale" for m in g.members))
    params = {m.param for m in g.members}
    assert g.size == 2 and {"features.1.0.attn.qkv.weight", "features.1.0.attn.cpb_mlp.2.weight"} <= params
    assert result.model.features[1][0].attn.num_heads == 1 and result.model.features[1][0].attn.logit_scale.shape[0] == 1
