"""Round 12 of stranger spellings: each pair is one computation, so one plan, and that plan is exact.

- Conjugation on a real tensor is the identity: ``W.mH``, ``W.H``, ``W.adjoint()``,
  ``W.conj().T``, ``resolve_conj`` / ``resolve_neg`` / ``conj_physical`` plan as ``W.mT`` /
  ``W.T`` / the tensor itself (``graph/same_as.py``); on a complex tensor they keep their op.
- Attention whose head count is no attribute the planner follows (``self.nh``): the
  head size carries the view's channels. Written with SDPA it pinned (``head_dim=False``) and
  written by hand it was prunable, and pruning rewrote ``self.head_dim``, the temperature of
  ``/ math.sqrt(self.head_dim)``. An axis a head_dim attribute sizes is a head size wherever
  it carries (``factors.unit_carrier``): both spellings pin it by default, and with
  ``head_dim=True`` both release it only where an attention proved its scale (SDPA).
- ``torch.split(qkv, [self.dim] * 3)`` follows ``self.dim`` as ``qkv.split(self.dim)`` does
  (it pinned); literal sizes (``[32, 32, 32]``) still pin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_masked_is_pruned, check_oracle
from test_spellings_reads import dump
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.graph.normalize import bind_call


class Pooled(nn.Module):
    """conv -> spatial mean -> ``read(self.W)`` as a matrix product -> a head."""

    def __init__(self, read: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.read = read
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.W = nn.Parameter(torch.randn(5, 8))
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.read(self, torch.relu(self.a(x)).mean((2, 3)))))


WEIGHT_READS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "mT": lambda s, h: h @ s.W.mT,
    "mH": lambda s, h: h @ s.W.mH,
    "H": lambda s, h: h @ s.W.H,
    "adjoint": lambda s, h: h @ s.W.adjoint(),
    "torch_adjoint": lambda s, h: h @ torch.adjoint(s.W),
    "conj_T": lambda s, h: h @ s.W.conj().T,
    "resolve_conj": lambda s, h: h @ torch.resolve_conj(s.W).T,
    "resolve_neg_mT": lambda s, h: h @ s.W.resolve_neg().mT,
    "conj_physical": lambda s, h: h @ torch.conj_physical(s.W).mT,
    "activation_mH": lambda s, h: (h.mH.mH @ s.W.T).conj(),
}
X = torch.randn(2, 3, 6, 6)


@pytest.mark.parametrize("name", sorted(WEIGHT_READS))
def test_conjugation_of_a_real_tensor_plans_as_its_transpose(name: str, tmp_path: Path) -> None:
    want = dump(skg.plan(Pooled(WEIGHT_READS["mT"]), X))
    plan = skg.plan(Pooled(WEIGHT_READS[name]), X)
    assert dump(plan) == want
    groups = {g.name: g for g in plan.groups}
    assert groups["a:out"].prunable and groups["a:out"].zero_invariant and groups["W:0"].prunable
    check_oracle(Pooled(WEIGHT_READS[name]), X, tmp_path, min_drop=0.0)


def test_conjugation_of_a_complex_tensor_keeps_its_op() -> None:
    z = torch.randn(3, 4, dtype=torch.complex64)
    assert bind_call(torch.adjoint, (z,), {}).op is torch.adjoint
    assert bind_call("conj", (z,), {}).op is torch.conj
    assert bind_call(torch.adjoint, (torch.randn(3, 4),), {}).op is torch.Tensor.mT
    assert bind_call("conj", (torch.randn(3, 4),), {}).op is torch.Tensor.contiguous


class LocalHeads(nn.Module):
    """Attention with its head count under a name no list holds."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.nh, self.head_dim = how, 4, 8
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.nh, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.how == "minus1":  # the head size inferred: as long as the layer's head_dim
            q, k, v = (p(x).view(B, N, self.nh, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.how == "split":  # the heads as parts of head_dim each, stacked
            q, k, v = (torch.stack(p(x).split(self.head_dim, -1), 1) for p in (self.q, self.k, self.v))
        if self.how == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        elif self.how == "sqrt":
            y = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1) @ v
        elif self.how == "pow":
            y = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1) @ v
        elif self.how == "size":
            y = (q @ k.mT / math.sqrt(q.size(-1))).softmax(-1) @ v
        else:
            y = (q @ k.mT / math.sqrt(self.head_dim)).softmax(-1) @ v
        return self.head(self.o(y.transpose(1, 2).reshape(B, N, -1)))


def _head_size_groups(plan: skg.Plan) -> dict[str, bool]:
    return {g.name: g.prunable for g in plan.groups if g.name in ("q:out", "v:out", "k:out")}


@pytest.mark.parametrize("how", ["sqrt", "pow", "size", "split", "minus1"])
def test_unlisted_head_count_hand_written_attention_plans_as_sdpa(how: str, tmp_path: Path) -> None:
    x = torch.randn(2, 5, 32)
    sdpa = _head_size_groups(skg.plan(LocalHeads("sdpa"), x))
    eager = _head_size_groups(skg.plan(LocalHeads(how), x))
    assert not any(eager.values()) and not any(sdpa.values())
    assert eager.keys() == sdpa.keys()
    check_oracle(LocalHeads(how), x, tmp_path, min_drop=0.0)


@pytest.mark.parametrize("how", ["sdpa", "sqrt"])
def test_unlisted_head_count_head_dim_true_releases_only_a_proved_scale(how: str, tmp_path: Path) -> None:
    x = torch.randn(2, 5, 32)
    plan = skg.plan(LocalHeads(how), x, head_dim=True)
    groups = {g.name: g for g in plan.groups}
    if how == "sdpa":  # the scale 1/sqrt(E) is compensated: q/k/v's head size is one exact group
        assert groups["q:out"].prunable and groups["q:out"].zero_invariant
        torch.manual_seed(0)
        mask = torch.ones(8, dtype=torch.bool)
        mask[[1, 5]] = False
        assert_masked_is_pruned(LocalHeads(how).eval(), plan, {"q:out": mask}, x)
    else:  # no attention rule saw the hand-written scale
        assert not groups["q:out"].prunable and "no attention proved its scale" in (groups["q:out"].reason or "")


class FusedQKV(nn.Module):
    """A fused projection split three ways; ``how`` spells the split."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.dim, self.num_heads, self.head_dim = how, 32, 4, 8
        self.inp, self.qkv, self.o, self.head = nn.Linear(16, 32), nn.Linear(32, 96), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        B, N, _ = x.shape
        t = self.qkv(x)
        parts = {
            "int": lambda: t.split(self.dim, dim=-1),
            "list": lambda: torch.split(t, [self.dim] * 3, dim=-1),
            "listed": lambda: torch.split(t, split_size_or_sections=[self.dim, self.dim, self.dim], dim=-1),
            "chunk": lambda: t.chunk(3, dim=-1),
            "literal": lambda: torch.split(t, [32, 32, 32], -1),
        }[self.how]()
        q, k, v = (u.view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for u in parts)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.head(x + self.o(y.transpose(1, 2).reshape(B, N, -1)))


@pytest.mark.parametrize("how", ["list", "listed"])
def test_split_by_a_list_of_size_attributes_plans_as_by_one(how: str, tmp_path: Path) -> None:
    x = torch.randn(2, 5, 16)
    assert dump(skg.plan(FusedQKV(how), x)) == dump(skg.plan(FusedQKV("int"), x))
    assert {g.name: g.prunable for g in skg.plan(FusedQKV(how), x).groups}["qkv:out"]
    check_oracle(FusedQKV(how), x, tmp_path, min_drop=0.0)


def test_split_by_literal_sizes_still_pins(tmp_path: Path) -> None:
    plan = skg.plan(FusedQKV("literal"), torch.randn(2, 5, 16))
    qkv = {g.name: g for g in plan.groups}["qkv:out"]
    assert not qkv.prunable and "split with fixed sizes" in (qkv.reason or "")


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    bs, slen, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(bs, slen, n_kv_heads * n_rep, head_dim)


class LlamaReference(nn.Module):
    """The attention of LLaMA's reference code (``n_local_heads``, ``n_local_kv_heads``,
    ``repeat_kv``), without caches and RoPE."""

    def __init__(self, dim: int = 32, n_heads: int = 4, n_kv_heads: int = 2) -> None:
        super().__init__()
        self.n_kv_heads, self.n_local_heads, self.n_local_kv_heads = n_kv_heads, n_heads, n_kv_heads
        self.n_rep, self.head_dim = n_heads // n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo, self.head = nn.Linear(n_heads * self.head_dim, dim, bias=False), nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        keys, values = _repeat_kv(xk, self.n_rep), _repeat_kv(xv, self.n_rep)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scores = F.softmax((torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)).float(), dim=-1)
        out = torch.matmul(scores.type_as(xq), values).transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.head(x + self.wo(out))


class LucidAttention(nn.Module):
    """lucidrains' ``vit-pytorch`` attention (``self.heads``, ``reshape(b, n, self.heads, -1)``)."""

    def __init__(self, dim: int = 32, heads: int = 4, dim_head: int = 8) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm, self.to_qkv = nn.LayerNorm(dim), nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out, self.head = nn.Linear(heads * dim_head, dim), nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        b, n, _ = h.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(h).chunk(3, dim=-1))
        attn = (torch.matmul(q, k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        return self.head(x + self.to_out(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1)))


@pytest.mark.parametrize(("make", "group", "channels"), [(LlamaReference, "wq:out", 2), (LucidAttention, "to_qkv:out", 4)])
def test_reference_code_head_counts_prune_heads(make: Callable[[], nn.Module], group: str, channels: int, tmp_path: Path) -> None:
    """``heads``, ``n_local_heads`` and ``n_local_kv_heads`` are head counts (``sizes.COUNT_ATTRIBUTES``):
    LLaMA's KV groups and lucidrains' heads prune exactly (both pinned their heads before)."""
    x = torch.randn(2, 5, 32)
    found = {g.name: g for g in skg.plan(make(), x).groups}[group]
    assert found.prunable and found.zero_invariant and found.size == channels
    result = check_oracle(make(), x, tmp_path, min_drop=0.0)
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in make().parameters())


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, 8
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))


class SharedScale(nn.Module):
    """Two attentions pass one scale attribute of the model (read once, in a loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 8**-0.5
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        for b in self.blocks:
            q, k, v = (p(x).view(B, N, b.num_heads, b.head_dim).transpose(1, 2) for p in (b.q, b.k, b.v))
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            x = torch.relu(b.o(y.transpose(1, 2).reshape(B, N, -1)))
        return self.head(x)


def test_one_scale_attribute_set_by_two_attentions_ties_their_head_dims() -> None:
    """``plan(head_dim=True)`` released each block's head size as its own group; ``prune``
    set ``model.scale`` once, so blocks pruned by different amounts got one block's scale
    (2% off the masked model). The groups that set one scale attribute are tied now."""
    torch.manual_seed(0)
    model, x = SharedScale().eval(), torch.randn(2, 5, 16) * 3
    plan = skg.plan(model, x, head_dim=True)
    names = sorted(g.name for g in plan.groups if g.scales)
    assert names == ["blocks.0.q:out:head_dim", "blocks.1.q:out:head_dim"]
    assert any(sorted(p.group for p in t.parts) == names for t in plan.ties)
    unequal = {n: torch.arange(8) >= k for n, k in zip(names, (2, 6))}
    with pytest.raises(skg.SparseKitError, match="model.scale"):
        skg.prune(model, plan, masks=unequal)
    pruned = assert_masked_is_pruned(model, plan, {n: torch.arange(8) % 4 == 1 for n in names}, x)
    assert pruned.scale == pytest.approx(6**-0.5)


class ExportedConj(nn.Module):
    """A data read (``.item()``) sends planning to torch.export, whose graph spells
    conjugation as ``aten.conj_physical`` / ``aten.resolve_neg``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.lin, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = h * (h.amax().item() * 0.0 + 1.0)
        p = h.mean((2, 3))
        p = torch.conj_physical(p) if self.how == "conj_physical" else torch.resolve_neg(p)
        return self.head(self.lin(p))


@pytest.mark.parametrize("how", ["conj_physical", "resolve_neg"])
def test_exported_conjugation_of_a_real_tensor_is_the_identity(how: str) -> None:
    plan = skg.plan(ExportedConj(how).eval(), X)
    assert {g.name: g for g in plan.groups}["a:out"].prunable


class Rearranged(nn.Module):
    """SDPA whose query goes through rearrangements first (degree one in the query)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.num_heads, self.head_dim = how, 4, 8
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.head, self.q_norm = nn.Linear(32, 3), nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        q = {
            "mH": lambda: q.mH.mH,
            "mT": lambda: q.mT.mT,
            "movedim": lambda: q.movedim(-1, -2).movedim(-2, -1),
            "flatten": lambda: q.flatten(0, 1).unflatten(0, (B, self.num_heads)),
            "identity": lambda: self.q_norm(q),  # timm's slot for a qk-norm, off
        }[self.how]()
        y = F.scaled_dot_product_attention(q, k, v)
        return self.head(self.o(y.transpose(1, 2).reshape(B, N, -1)))


@pytest.mark.parametrize("how", ["mH", "mT", "movedim", "flatten", "identity"])
def test_head_dim_true_releases_through_query_rearrangements(how: str) -> None:
    torch.manual_seed(0)
    model, x = Rearranged(how).eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x, head_dim=True)
    group = {g.name: g for g in plan.groups}["q:out:head_dim"]
    assert group.prunable and group.zero_invariant
    mask = torch.zeros(group.size, dtype=torch.bool)
    mask[[1, 5]] = True
    assert_masked_is_pruned(model, plan, {group.name: mask}, x)


class _ScaledAttn(nn.Module):
    """SDPA with the scale its caller passes; ``qnorm``: a LayerNorm on the query."""

    def __init__(self, heads: int = 4, head_dim: int = 8, qnorm: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(32, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, 32)
        self.qn = nn.LayerNorm(head_dim) if qnorm else None

    def forward(self, x: Tensor, scale: float) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.qn is not None:
            q = self.qn(q)
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return self.o(o.transpose(1, 2).reshape(B, N, -1))


class _Config:
    scale = 8**-0.5


class ScalePassedDown(nn.Module):
    """Blocks called with a scale of the model: ``self.scale``, or ``self.config.scale`` beside
    an unread ``self.scale`` of the same value (``decoy``)."""

    def __init__(self, second: nn.Module, from_config: bool = False) -> None:
        super().__init__()
        self.emb, self.out = nn.Linear(8, 32), nn.Linear(32, 3)
        self.blocks = nn.ModuleList([_ScaledAttn(), second])
        self.scale, self.from_config, self.config = 8**-0.5, from_config, _Config()

    def forward(self, x: Tensor) -> Tensor:
        h = self.emb(x)
        for b in self.blocks:
            h = h + b(h, self.config.scale if self.from_config else self.scale)
        return self.out(h)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: ScalePassedDown(_ScaledAttn(heads=8, head_dim=4)), id="other-head-dim"),
        pytest.param(lambda: ScalePassedDown(_ScaledAttn(qnorm=True)), id="query-norm"),
        pytest.param(lambda: ScalePassedDown(_ScaledAttn(), from_config=True), id="config-beside-decoy"),
    ],
)
def test_a_scale_attribute_is_rewritten_only_where_every_use_is_proved(model: Callable[[], nn.Module]) -> None:
    """The first block's head size was released alone and ``prune`` rewrote ``model.scale``,
    which the second block (whose head size could not be released) reads too: 0.9-3% off. And a
    scale read as ``self.config.scale`` was matched by value to an unread ``self.scale``."""
    plan = skg.plan(model().eval(), torch.randn(2, 5, 8), head_dim=True)
    assert not [g.name for g in plan.prunable if g.scales]
