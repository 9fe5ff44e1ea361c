"""Hugging Face transformers through torch.export: the oracle, reload, generate, and the rules
for heads, GQA, RoPE, fused qkv, tied weights and q_norm/k_norm (small configs, no download)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers import assert_close_rel, call, check_oracle, first_tensor  # noqa: E402

import sparsekit_graph as skg  # noqa: E402
from sparsekit_graph.graph.trace import is_exported, trace_graph  # noqa: E402
from sparsekit_graph.zoo import hf_model  # noqa: E402

MODELS = ["llama", "llama@eager", "qwen2", "qwen3", "mistral@eager", "bert", "gpt2", "vit"]
_PLANS: dict[str, skg.Plan] = {}


def _build(spec: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    name, _, attn = spec.partition("@")
    return hf_model(name, attention=attn or "sdpa")


def _plan(spec: str) -> tuple[torch.nn.Module, dict, skg.Plan]:
    model, x = _build(spec)
    if spec not in _PLANS:
        _PLANS[spec] = skg.plan(model, x)
    return model, x, _PLANS[spec]


def _attention_layers(model: torch.nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if type(m).__name__.endswith(("Attention", "SelfAttention")) and "Sdpa" not in type(m).__name__
    ]


def _head_groups(plan: skg.Plan, model: torch.nn.Module) -> dict[str, skg.Group]:
    """The prunable head group of each attention layer (a member with block > 1 inside it)."""
    found = {}
    for layer in _attention_layers(model):
        for g in plan.prunable:
            if any(m.param.startswith(layer + ".") and m.block > 1 for m in g.members):
                found[layer] = g
    return found


@pytest.mark.parametrize("spec", MODELS)
def test_oracle(spec: str, tmp_path: Path) -> None:
    """Plan, round trip, prune at 0.5 (<= 60% kept), exactness on zero-invariant groups,
    untouched input model, and a head group in every attention layer."""
    model, x = _build(spec)
    result = check_oracle(model, x, tmp_path)
    assert result.report.params_after <= 0.6 * result.report.params_before
    heads = _head_groups(result.plan, model)
    assert set(heads) == set(_attention_layers(model)) and heads, f"head groups: {sorted(heads)}"
    assert all(g.zero_invariant for g in heads.values())


@pytest.mark.parametrize("spec", MODELS)
def test_pruned_model_reloads_with_from_pretrained(spec: str, tmp_path: Path) -> None:
    model, x, plan = _plan(spec)
    result = skg.prune(model, plan, ratio=0.5)
    assert result.report.reloadable is True
    small = result.model
    assert type(small) is type(model)
    small.save_pretrained(tmp_path)
    attn = small.config._attn_implementation
    again = type(model).from_pretrained(tmp_path, attn_implementation=attn).eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(small, x)), first_tensor(call(again, x)))
    assert sum(p.numel() for p in again.parameters()) == result.report.params_after


@pytest.mark.parametrize("spec", ["llama", "gpt2", "qwen3"])
def test_generate_before_and_after(spec: str) -> None:
    """The pruned causal LM keeps its class and generates with its KV cache; greedy decoding
    with the cache equals the full forward's argmax."""
    model, x, plan = _plan(spec)
    small = skg.prune(model, plan, ratio=0.5).model
    ids = x["input_ids"][:1, :5]
    for m in (model, small):
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 9)
        with torch.no_grad():
            logits = m(input_ids=out[:, :-1]).logits
        assert torch.equal(logits[0, 4:].argmax(-1), out[0, 5:])


def test_uniform_snaps_global_ranking_so_the_model_reloads(tmp_path: Path) -> None:
    model, x, plan = _plan("llama")
    ragged = skg.prune(model, plan, ratio=0.5, global_ranking=True, importance="random", seed=3)
    even = skg.prune(model, plan, ratio=0.5, global_ranking=True, importance="random", seed=3, uniform=True)
    mlp = [g.name for g in plan.prunable if g.size == 128]
    assert len({ragged.report.kept[n] for n in mlp}) > 1, "the test needs a ragged global ranking"
    assert len({even.report.kept[n] for n in mlp}) == 1
    assert even.report.reloadable is True and ragged.report.reloadable is False
    skg.save_pruned(ragged, tmp_path)  # what from_pretrained cannot express still saves
    again = skg.load_pruned(_build("llama")[0], tmp_path)
    with torch.no_grad():
        assert torch.equal(first_tensor(call(ragged.model, x)), first_tensor(call(again, x)))


def test_gqa_key_value_head_with_its_query_heads() -> None:
    """4 query heads share 2 key/value heads: a channel is a KV head with its 2 query heads."""
    model, _, plan = _plan("llama")
    g = _head_groups(plan, model)["model.layers.0.self_attn"]
    blocks = {m.param.rsplit(".", 2)[-2]: (m.axis, m.block) for m in g.members}
    assert g.size == 2
    assert blocks == {"q_proj": (0, 32), "k_proj": (0, 16), "v_proj": (0, 16), "o_proj": (1, 32)}
    refs = {(r.owner, r.attr): r.per_channel for r in g.sizes}
    assert refs == {("config", "num_attention_heads"): 2}


@pytest.mark.parametrize("spec", ["llama", "llama@eager", "qwen3"])
def test_head_dim_is_pinned_with_its_reason(spec: str) -> None:
    """RoPE (rotate_half's slices, inv_freq) and the attention scale depend on head_dim."""
    _, _, plan = _plan(spec)
    rope = next(g for g in plan.groups if any("inv_freq" in m.param or "q_norm" in m.param for m in g.members))
    assert not rope.prunable and ("head_dim" in rope.reason or "slicing" in rope.reason)


def test_qwen3_q_norm_and_k_norm_act_per_head_on_head_dim() -> None:
    _, _, plan = _plan("qwen3")
    norms = [g for g in plan.groups if any(m.param.endswith(("q_norm.weight", "k_norm.weight")) for m in g.members)]
    assert norms and all(not g.prunable for g in norms)
    covered: dict[str, int] = {}
    for m in (m for g in norms for m in g.members if m.param.endswith("norm.weight")):
        covered[m.param] = covered.get(m.param, 0) + m.stop - m.start
    assert set(covered.values()) == {16}, covered  # each norm spans head_dim (RoPE ties its halves)


def test_gpt2_fused_qkv_and_tied_embedding() -> None:
    """``c_attn`` is q|k|v: each head owns three slices of its output; ``lm_head`` is ``wte``."""
    model, _, plan = _plan("gpt2")
    g = _head_groups(plan, model)["transformer.h.0.attn"]
    c_attn = sorted(m.start for m in g.members if m.param == "transformer.h.0.attn.c_attn.weight" and m.axis == 1)
    assert c_attn == [0, 64, 128] and g.size == 4
    assert {(r.attr, r.per_channel) for r in g.sizes} >= {("split_size", 16)}
    hidden = next(g for g in plan.prunable if any(m.param == "transformer.wte.weight" for m in g.members))
    assert not hidden.zero_invariant  # LayerNorms span the residual stream
    assert not any(m.param == "lm_head.weight" for g in plan.groups for m in g.members)  # tied: one name


def test_hidden_size_is_one_group_across_layers() -> None:
    model, _, plan = _plan("llama")
    hidden = next(g for g in plan.prunable if any(m.param == "model.embed_tokens.weight" for m in g.members))
    params = {m.param for m in hidden.members}
    assert {"model.norm.weight", "lm_head.weight", "model.layers.1.mlp.down_proj.weight"} <= params
    assert not hidden.zero_invariant
    pinned = skg.plan(model, _build("llama")[1], ignore=["model.embed_tokens"])
    assert not any(m.param == "model.norm.weight" for g in pinned.prunable for m in g.members)


def test_meta_plan_equals_the_real_plan() -> None:
    model, x, plan = _plan("llama")
    with torch.device("meta"):
        meta_model = type(model)(copy.deepcopy(model.config))
    meta_inputs = {k: v.to("meta") for k, v in x.items()}
    assert skg.plan(meta_model, meta_inputs).groups == plan.groups


def test_bfloat16_prunes_like_float32() -> None:
    model, x, plan = _plan("llama")
    half = copy.deepcopy(model).to(torch.bfloat16)
    r32, r16 = skg.prune(model, plan, ratio=0.5), skg.prune(half, plan, ratio=0.5)
    assert r16.report.params_after == r32.report.params_after
    assert all(p.dtype == torch.bfloat16 for p in r16.model.parameters())
    with torch.no_grad():
        assert_close_rel(first_tensor(call(r32.model, x)), first_tensor(call(r16.model, x)).float(), rtol=5e-2)


def test_bind_heads_and_mask_matches_pruning() -> None:
    """Masking one KV group through bind() zeroes exactly what pruning it removes."""
    model, x, plan = _plan("qwen2")
    g = _head_groups(plan, model)["model.layers.1.self_attn"]
    dense = copy.deepcopy(model)
    coupling = skg.bind(plan, dense)[g.name]
    assert coupling.numblk() == g.size
    mask = torch.tensor([True, False])
    coupling.apply_mask(mask)
    assert dense.model.layers[1].self_attn.q_proj.weight[:32].abs().sum() == 0
    small = skg.prune(model, plan, masks={g.name: mask}).model
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(small, x)))


def test_a_hard_coded_head_count_pins_the_heads() -> None:
    """A literal head count no attribute explains must not be taken for a model size."""

    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = torch.nn.Linear(32, 96), torch.nn.Linear(32, 32)

        def forward(self, x):  # (B, N, 32)
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(b, n, 32))

    plan = skg.plan(Attn(), torch.randn(2, 5, 32))
    qkv = [g for g in plan.groups if any(m.param == "qkv.weight" and m.axis == 0 for m in g.members)]
    assert qkv and not any(g.prunable for g in qkv)
    assert any("constant size" in (g.reason or "") for g in qkv)


class EinsumAttention(torch.nn.Module):
    """Attention as a stranger writes it: einsum, and views by its own attributes."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        width = heads * head_dim
        self.q, self.k, self.v = (torch.nn.Linear(16, width) for _ in range(3))
        self.o = torch.nn.Linear(width, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.num_heads, self.head_dim) for f in (self.q, self.k, self.v))
        a = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return self.o(torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, -1))


@pytest.mark.parametrize("head_dim", [8, 4], ids=["heads-4-of-8", "heads-4-of-4"])
def test_einsum_attention_with_attribute_sizes_prunes_heads(head_dim: int, tmp_path: Path) -> None:
    """Heads prune by ``self.num_heads``; with 4 heads of 4 a 4 could be either attribute by value,
    but each 4 of ``view(b, n, self.num_heads, self.head_dim)`` was read from one, so it follows."""
    model = EinsumAttention(4, head_dim)
    result = check_oracle(model, torch.randn(2, 5, 16), tmp_path, min_drop=0.0)
    heads = next(g for g in result.plan.prunable if any(m.param == "q.weight" for m in g.members))
    assert heads.size == 4 and heads.zero_invariant
    assert [(r.owner, r.attr, r.per_channel) for r in heads.sizes] == [("", "num_heads", 1)]
    assert result.model.num_heads == 2 and result.model.head_dim == head_dim


def test_gqa_policy_is_validated() -> None:
    model, x = _build("llama")
    assert skg.plan(model, x, gqa="kv_groups").groups == _plan("llama")[2].groups
    with pytest.raises(skg.PlanError, match="gqa='heads'"):
        skg.plan(model, x, gqa="heads")


_BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
VARIANTS = {
    "llama-bias-tied": ("Llama", "ForCausalLM", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "llama-mqa": ("Llama", "ForCausalLM", dict(num_key_value_heads=1)),
    "llama-mha": ("Llama", "ForCausalLM", dict(num_key_value_heads=4)),
    "llama-rope-llama3": (
        "Llama",
        "ForCausalLM",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        ),
    ),  # fmt: skip
    "llama-head-dim-32": ("Llama", "ForCausalLM", dict(head_dim=32)),
    "llama-classifier": ("Llama", "ForSequenceClassification", dict(pad_token_id=0)),
    "qwen2-tied": ("Qwen2", "ForCausalLM", dict(tie_word_embeddings=True)),
    "mistral-sliding-window": ("Mistral", "ForCausalLM", dict(sliding_window=4)),
}


def _variant(name: str) -> tuple[torch.nn.Module, dict]:
    family, head, extra = VARIANTS[name]
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(**{**_BASE, **extra})
    model = getattr(transformers, f"{family}{head}")(config).eval()
    ids = torch.randint(1, 128, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


_DEFAULT_VARIANTS = ("llama-bias-tied", "llama-mqa")  # the rest under -m slow


@pytest.mark.parametrize("name", [n if n in _DEFAULT_VARIANTS else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS])
def test_llama_family_variants(name: str, tmp_path: Path) -> None:
    """Biases, tied heads, MQA and MHA, llama3 RoPE scaling, an explicit head_dim, a classifier
    head, sliding windows: the oracle, a head group per layer, and an exact reload."""
    model, x = _variant(name)
    result = check_oracle(model, x, tmp_path)
    assert result.report.params_after <= 0.6 * result.report.params_before
    assert len(_head_groups(result.plan, model)) == len(_attention_layers(model))
    assert result.report.reloadable is True
    result.model.save_pretrained(tmp_path / "hf")
    again = type(model).from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(result.model, x)), first_tensor(call(again, x)))


def _gemma(tied: bool) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    config = transformers.GemmaConfig(**_BASE, head_dim=16, tie_word_embeddings=tied)
    return transformers.GemmaForCausalLM(config).eval(), {"input_ids": torch.randint(1, 128, (2, 8))}


@pytest.mark.parametrize("tied", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["tied", "untied"])
def test_gemma_with_hidden_pruned_reloads_identically(tied: bool, tmp_path: Path) -> None:
    """Gemma scales embeddings by ``sqrt(hidden_size)``, a buffer ``from_pretrained`` recomputes:
    surgery sets the new width's scale and folds ``sqrt(old / new)`` into the embedding weights;
    the tied ``lm_head`` would then grow by that factor, so the final RMSNorm's ``1 + weight``
    is divided by it. Masked dense == pruned, and the reload is bitwise the pruned model."""
    model, x = _gemma(tied)
    result = check_oracle(model, x, tmp_path)
    small = result.model.eval()
    assert small.config.hidden_size == 32 and result.report.reloadable is True
    assert float(small.model.embed_tokens.embed_scale) == torch.tensor(32**0.5).item()
    assert (small.lm_head.weight is small.model.embed_tokens.weight) is tied
    small.save_pretrained(tmp_path / "hf")
    again = transformers.GemmaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(small(**x).logits, again(**x).logits)
    skg.save_pruned(result, tmp_path / "sk")
    rebuilt = skg.load_pruned(_gemma(tied)[0], tmp_path / "sk").eval()  # the buffer is not saved: surgery sets it
    with torch.no_grad():
        assert torch.equal(small(**x).logits, rebuilt(**x).logits)


def test_reloadable_is_never_claimed_when_the_config_cannot_say_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a compensation for its tied output, a scaled embedding keeps its old scale, which
    no config reproduces: ``reloadable`` is False (with hidden kept it is True)."""
    from sparsekit_graph.prune import embed_scale

    embed_scale._register_known()
    monkeypatch.delitem(embed_scale.TIED_OUTPUT_COMPENSATIONS, transformers.GemmaForCausalLM)
    model, x = _gemma(True)
    plan = skg.plan(model, x)
    result = skg.prune(model, plan, ratio=0.5)
    assert result.report.reloadable is False
    assert float(result.model.model.embed_tokens.embed_scale) == torch.tensor(64**0.5).item()
    hidden = next(g for g in plan.prunable if any(m.param == "model.embed_tokens.weight" for m in g.members))
    kept = plan.model_copy(update={"groups": [g.model_copy(update={"ratio": 0.0}) if g is hidden else g for g in plan.groups]})
    assert skg.prune(model, kept, ratio=0.5).report.reloadable is True


class SdpaGqa(torch.nn.Module):
    """GQA through ``F.scaled_dot_product_attention(..., enable_gqa=True)``: 6 query heads,
    2 key/value heads, sizes from attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = 6, 2, 4
        self.q, self.k, self.v = torch.nn.Linear(16, 24), torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
        self.o = torch.nn.Linear(24, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_sdpa_enable_gqa_groups_a_kv_head_with_its_query_heads(tmp_path: Path) -> None:
    result = check_oracle(SdpaGqa(), torch.randn(2, 5, 16), tmp_path, min_drop=0.0)
    g = next(g for g in result.plan.prunable if any(m.param == "k.weight" for m in g.members))
    blocks = {m.param: m.block for m in g.members if m.param.endswith("weight")}
    assert g.size == 2 and blocks == {"q.weight": 12, "k.weight": 4, "v.weight": 4, "o.weight": 12}
    assert {(r.attr, r.per_channel) for r in g.sizes} == {("num_heads", 3), ("num_kv_heads", 1)}
    assert (result.model.num_heads, result.model.num_kv_heads) == (3, 1)


class WidthFromInput(torch.nn.Module):
    """timm's spelling: heads merged back with the width read off the block's input,
    ``reshape(B, N, C)`` with ``B, N, C = x.shape``: the heads' width is the residual width."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.inp, self.qkv = torch.nn.Linear(8, dim), torch.nn.Linear(dim, 3 * dim)
        self.proj, self.fc = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, 10)

    def forward(self, x):
        x = self.inp(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.fc(x + self.proj(y.transpose(1, 2).reshape(b, n, c)))


def test_a_width_read_off_another_tensor_couples_the_two(tmp_path: Path) -> None:
    """Pruning heads alone would make ``reshape(b, n, c)`` fail: the read length ties the heads'
    width to the input's, so they are one group (a head with its slice of the residual)."""
    result = check_oracle(WidthFromInput(), torch.randn(2, 5, 8), tmp_path, min_drop=0.0)
    g = next(g for g in result.plan.prunable if any(m.param == "qkv.weight" for m in g.members))
    params = {m.param for m in g.members}
    assert {"inp.weight", "proj.weight", "fc.weight"} <= params and g.size == 4
    assert result.model.num_heads == 2


def test_inplace_prune_leaves_a_model_that_reloads(tmp_path: Path) -> None:
    model, x, plan = _plan("bert")
    target = copy.deepcopy(model)
    layer = target.bert.encoder.layer[0].attention.self
    result = skg.prune(target, plan, ratio=0.5, inplace=True)
    assert result.model is target and target.bert.encoder.layer[0].attention.self is layer
    assert result.report.reloadable and target.config.num_attention_heads == 2 and layer.num_attention_heads == 2
    target.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(target, x)), first_tensor(call(again, x)))


# -- found by attacking the transformer path as a stranger would ---------------------------


class LiteralHeads(torch.nn.Module):
    """``view(b, n, 4, -1)``: a literal head count beside an unused ``self.num_heads = 4``."""

    def __init__(self, divide: bool = False) -> None:
        super().__init__()
        self.num_heads, self.divide = 4, divide
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        if self.divide:  # the attribute also used as a number
            split = [f(x).view(b, n, self.num_heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)]
        else:
            split = [f(x).view(b, n, 4, -1).transpose(1, 2) for f in (self.q, self.k, self.v)]
        y = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, -1)
        return self.o(y / self.num_heads if self.divide else y)


def test_a_literal_that_only_equals_an_unread_attribute_pins(tmp_path: Path) -> None:
    """The forward never reads ``self.num_heads``: the literal 4 is a constant (``size_reads``
    records what torch.fx's forward read), so the heads pin and the oracle holds."""
    model, x = LiteralHeads(), torch.randn(2, 5, 32)
    heads = next(g for g in skg.plan(model, x).groups if any(m.param == "o.weight" and m.axis == 1 for m in g.members))
    assert not heads.prunable and "constant size" in (heads.reason or ""), heads
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


def test_a_size_attribute_used_as_a_number_is_not_zero_invariant(tmp_path: Path) -> None:
    result = check_oracle(LiteralHeads(divide=True), torch.randn(2, 5, 32), tmp_path, min_drop=0.0, require=False)
    heads = next(g for g in result.plan.prunable if any(m.param == "q.weight" for m in g.members))
    assert not heads.zero_invariant and [r.attr for r in heads.sizes] == ["num_heads"]


class _Cfg:
    n_embd, n_head = 32, 4


class SharedConfigBlock(torch.nn.Module):
    """nanoGPT's spelling: every block holds one config object and reads ``config.n_head``."""

    def __init__(self, config: _Cfg) -> None:
        super().__init__()
        self.config = config
        self.qkv, self.proj = torch.nn.Linear(32, 96), torch.nn.Linear(32, 32)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p.view(b, t, self.config.n_head, -1).transpose(1, 2) for p in self.qkv(x).chunk(3, dim=-1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, -1))


def test_a_config_object_shared_by_blocks_changes_only_where_they_agree(tmp_path: Path) -> None:
    config = _Cfg()
    model = torch.nn.Sequential(SharedConfigBlock(config), SharedConfigBlock(config)).eval()
    x = torch.randn(2, 8, 32)
    plan = skg.plan(model, x)
    heads = [g for g in plan.prunable if any(m.param.endswith("qkv.weight") and m.block == 8 for m in g.members)]
    assert len(heads) == 2 and {r.attr for g in heads for r in g.sizes} == {"n_head"}
    ragged = {heads[0].name: torch.tensor([True, False, False, False])}
    with pytest.raises(skg.SparseKitError, match="break the tie"):
        skg.prune(model, plan, masks=ragged)
    assert config.n_head == 4
    even = {g.name: torch.tensor([True, False, True, False]) for g in heads}
    small = skg.prune(model, plan, masks=even).model
    assert small[0].config.n_head == 2 and small[0].config is small[1].config
    dense = copy.deepcopy(model)
    couplings = skg.bind(plan, dense)
    for name, mask in even.items():
        couplings[name].apply_mask(mask)
    with torch.no_grad():
        assert_close_rel(dense(x), small(x))


class FxBreaks(torch.nn.Module):
    """A Python branch on the device: torch.fx fails, torch.export traces it (a branch on a
    shape is traced by torch.fx, which takes the branch the example's sizes take)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        if not x.is_cuda:
            x = x + 1
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + h.sum(-1, keepdim=True) / h.shape[-1]  # a mean written by hand


def test_under_export_a_length_used_as_a_number_costs_zero_invariance(tmp_path: Path) -> None:
    assert is_exported(trace_graph(FxBreaks(), torch.randn(2, 8, 32)))
    result = check_oracle(FxBreaks(), torch.randn(2, 8, 32), tmp_path, min_drop=0.0, require=False)
    fc1 = next(g for g in result.plan.groups if any(m.param == "fc1.weight" and m.axis == 0 for m in g.members))
    assert fc1.prunable and not fc1.zero_invariant and "used as a value" in _mix_reason(FxBreaks(), "fc1.weight")


def _mix_reason(model: torch.nn.Module, param: str) -> str:
    from sparsekit_graph.plan.planner import build_axis_graph

    graph = build_axis_graph(model, torch.randn(2, 8, 32))
    return " ".join(r for n, d in graph.g.nodes(data=True) for r in d["mixes"])


class RepeatInterleaveGqa(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = 4, 2, 8
        self.q, self.o = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        self.k, self.v = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (f(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2) for f in (self.k, self.v))
        rep = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_gqa_by_repeat_interleave(tmp_path: Path) -> None:
    result = check_oracle(RepeatInterleaveGqa(), torch.randn(2, 5, 32), tmp_path, min_drop=0.0)
    g = next(g for g in result.plan.prunable if any(m.param == "k.weight" for m in g.members))
    assert g.size == 2 and g.zero_invariant
    assert (result.model.num_heads, result.model.num_kv_heads) == (2, 1)


def test_falcon_prunes_or_says_why_and_meta_weights_need_masks() -> None:
    torch.manual_seed(0)
    config = transformers.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = transformers.FalconForCausalLM(config).eval()
    x = {"input_ids": torch.randint(0, 128, (2, 8))}
    result = skg.prune(model, skg.plan(model, x), ratio=0.5)  # read-only config properties are left alone
    assert result.report.params_after <= result.report.params_before
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(_build("llama")[0].config)
    plan = skg.plan(meta, {"input_ids": torch.zeros(2, 8, dtype=torch.long, device="meta")})
    with pytest.raises(skg.PlanError, match="needs real weights"):
        skg.prune(meta, plan, ratio=0.5)
