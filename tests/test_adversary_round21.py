"""Round 21 of the adversaries (issue 7): positions read as values, plain-value inputs, plan
attributes checked against the model."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle
from torch import Tensor, nn

import sparsekit_graph as skg

# -- positions along a channel axis (argmax, topk's indices, ...) --------------------------

PICKS: dict[str, Callable[[Tensor], Tensor]] = {
    "argmax": lambda h: h.argmax(1),
    "max.indices": lambda h: h.max(1).indices,
    "max[1]": lambda h: torch.max(h, dim=1)[1],
    "min(-h)[1]": lambda h: (-h).min(dim=1)[1],
    "topk(1).indices": lambda h: h.topk(1, 1).indices.squeeze(1),
    "topk(1)[1][:, 0]": lambda h: h.topk(1, 1)[1][:, 0],
    "sort.indices[:, 0]": lambda h: h.sort(1, descending=True).indices[:, 0],
    "argsort[:, -1]": lambda h: h.argsort(1)[:, -1],
}
LOOKUPS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "embedding": lambda m, i: m.e(i),
    "weight[i]": lambda m, i: m.e.weight[i],
    "F.embedding": lambda m, i: F.embedding(i, m.e.weight),
    "index_select": lambda m, i: m.e.weight.index_select(0, i.flatten()).view(*i.shape, -1),
    "one_hot @ weight": lambda m, i: F.one_hot(i, 8).float() @ m.e.weight,
    "i == 3": lambda m, i: (i == 3).float().unsqueeze(-1).expand(*i.shape, 4),
}


class Lookup(nn.Module):
    """A conv's channels pick rows of a table by their argmax (channel 0 can never win)."""

    def __init__(self, pick: Callable[[Tensor], Tensor], lookup: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.e, self.pick, self.lookup = nn.Conv2d(3, 8, 1), nn.Embedding(8, 4), pick, lookup
        with torch.no_grad():
            self.a.bias[0] = -1e4

    def forward(self, x: Tensor) -> Tensor:
        return self.lookup(self, self.pick(self.a(x))).permute(0, 3, 1, 2)


def _dead_channel_is_exact(model: nn.Module, x: Tensor, group_of: str) -> bool:
    """Plan; where the group of ``group_of`` is prunable, removing its never-chosen channel 0
    must leave the output as it was (a renumbered position would read another row)."""
    plan = skg.plan(model, x)
    group = next(g for g in plan.groups if any(m.param == group_of and m.axis == 0 for m in g.members))
    if not group.prunable:
        return False
    mask = torch.zeros(group.size, dtype=torch.bool)
    mask[0] = True
    pruned = skg.prune(model, plan, masks={group.name: mask}).model
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-5)
    return True


@pytest.mark.parametrize("lookup", list(LOOKUPS))
@pytest.mark.parametrize("pick", list(PICKS))
def test_positions_read_by_a_lookup_stay_theirs(pick: str, lookup: str) -> None:
    torch.manual_seed(0)
    model = Lookup(PICKS[pick], LOOKUPS[lookup]).eval()
    linked = _dead_channel_is_exact(model, torch.randn(2, 3, 5, 5), "a.weight")
    # a table indexed by the positions goes with the channels (whole rows); a comparison with a
    # literal, one_hot with a literal count or a sort pins them
    ordered = pick.startswith(("sort", "argsort"))
    assert linked == (not ordered and lookup in ("embedding", "weight[i]", "F.embedding", "index_select"))


class Router(nn.Module):
    """Top-k routing over stacked experts, written as strangers do."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.router = spelling, nn.Linear(6, 4)
        self.w = nn.Parameter(torch.randn(4, 6, 6) * 0.2)
        self.experts = nn.ModuleList(nn.Linear(6, 6) for _ in range(4))
        with torch.no_grad():
            self.router.bias[0] = -1e4  # expert 0 is never chosen

    def forward(self, x: Tensor) -> Tensor:
        logits = self.router(x)
        if self.spelling == "loop ==":  # ``idx == e`` compares with literal positions: pinned
            idx = logits.topk(2, -1).indices
            return sum((idx == e).float().sum(-1, keepdim=True) * expert(x) for e, expert in enumerate(self.experts))
        if self.spelling == "w[topk[1]]":
            return torch.einsum("btd,btkde->bte", x, self.w[logits.topk(2, -1)[1]])
        if self.spelling == "w[argmax]":
            return torch.einsum("btd,btde->bte", x, self.w[logits.argmax(-1)])
        if self.spelling == "w.index_select":
            idx = logits.max(-1).indices
            return torch.einsum("btd,btde->bte", x, self.w.index_select(0, idx.flatten()).view(*idx.shape, 6, 6))
        return torch.einsum("btd,btde->bte", x, self.w[logits.argmax(-1)]), logits.argmax(-1)  # positions returned


@pytest.mark.parametrize("spelling", ["loop ==", "w[topk[1]]", "w[argmax]", "w.index_select", "returned"])
def test_router_positions(spelling: str) -> None:
    torch.manual_seed(0)
    model = Router(spelling).eval()
    x = torch.randn(2, 5, 6)
    if spelling == "returned":
        plan = skg.plan(model, x)
        router = next(g for g in plan.groups if any(m.param == "router.weight" and m.axis == 0 for m in g.members))
        assert not router.prunable, "the model returns positions along the router's axis"
        return
    linked = _dead_channel_is_exact(model, x, "router.weight")
    assert linked == (spelling != "loop ==")


def test_positions_under_torch_export() -> None:
    """The same rules on torch.export's graph (``isinstance`` sends the trace there)."""

    class Exported(Lookup):
        def forward(self, x: Tensor) -> Tensor:
            assert isinstance(x, torch.Tensor)
            return super().forward(x)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    assert _dead_channel_is_exact(Exported(PICKS["max[1]"], LOOKUPS["weight[i]"]).eval(), x, "a.weight")
    assert not _dead_channel_is_exact(Exported(PICKS["argmax"], LOOKUPS["i == 3"]).eval(), x, "a.weight")


def test_flattened_positions_pin_every_axis() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.table = nn.Linear(4, 6), nn.Parameter(torch.randn(12, 3))

        def forward(self, x: Tensor) -> Tensor:
            return self.table[self.a(x).argmax().view(1)]

    plan = skg.plan(Flat().eval(), torch.randn(2, 4))
    assert not plan.group("a:out").prunable


# -- plain-value inputs --------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor, use_b: bool = True, y: Tensor | None = None, s: float = 1.0, mode: str = "a") -> Tensor:
        h = torch.relu(self.a(x))
        if use_b:
            h = torch.relu(self.b(h))
        if y is not None:
            h = h + y.sum() * s
        return self.c(h) * (2 if mode == "lite" else 1)


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": torch.randn(4, 6), "use_b": False},
        (torch.randn(4, 6), False, torch.randn(3), 0.5, "lite"),
        (torch.randn(4, 6), True, None, 2),
    ],
    ids=["keyword flag", "values between tensors", "None and int"],
)
def test_plain_inputs_are_part_of_the_plan(inputs: object) -> None:
    """``prune`` runs the forward the plan saw: a flag or number the plan was made with is
    recorded (before, it was dropped: the default branch ran, or later inputs moved left)."""
    torch.manual_seed(0)
    model = Branchy().eval()
    plan = skg.Plan.from_json(skg.plan(model, inputs).model_dump_json())
    assert [i.value for i in plan.inputs if not i.tensor] == [v for v in _values(inputs) if not isinstance(v, Tensor)]
    pruned = skg.prune(model, plan, masks={"a:out": torch.arange(16) % 4 == 1}).model
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.no_grad():
        assert pruned(*args, **kwargs).shape == model(*args, **kwargs).shape


def _values(inputs: object) -> list[object]:
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)  # type: ignore[union-attr]


def test_inputs_a_plan_cannot_record_are_refused() -> None:
    with pytest.raises(skg.PlanError, match="input4 is a list"):
        skg.plan(Branchy().eval(), (torch.randn(4, 6), True, None, 1, [1, 2]))


# -- a plan's attributes exist in the model --------------------------------------------------


class Attn(nn.Module):
    def __init__(self, d: int = 16, h: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = h, d // h
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("owner, attr", [("attn", "num_heads"), ("", "heads"), ("qkv", "weight")])
def test_size_attributes_the_model_lacks_are_refused(owner: str, attr: str) -> None:
    model = Attn().eval()
    data = json.loads(skg.plan(model, torch.randn(2, 5, 16)).model_dump_json())
    group = next(g for g in data["groups"] if g["sizes"])
    group["sizes"][0].update(owner=owner, attr=attr)
    edited = skg.Plan.from_json(json.dumps(data))
    with pytest.raises(skg.PlanError, match=f"size {owner or 'model'}.{attr}: the model has no such count"):
        skg.prune(model, edited, masks={group["name"]: torch.arange(group["size"]) == 1})


# -- two spellings, one plan (round 21's CNN and attention reference code) -----------------


def _claims(model: nn.Module, x: Tensor, **options: object) -> list[tuple[int, bool]]:
    """(size, zero-invariant) of each prunable group."""
    return [(g.size, g.zero_invariant) for g in skg.plan(model, x, **options).prunable]


class UNetUp(nn.Module):
    def __init__(self, whole_size: bool) -> None:
        super().__init__()
        self.whole_size = whole_size
        self.e1, self.e2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, 2, 1)
        self.up, self.d = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1), nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = F.relu(self.e1(x))
        size = e1.size() if self.whole_size else e1.shape[-2:]  # torch reads only the spatial sizes
        return self.d(torch.cat([self.up(F.relu(self.e2(e1)), output_size=size), e1], 1))


class EqualConv(nn.Module):
    """StyleGAN's equalized learning rate: the weight scaled in forward."""

    def __init__(self, ci: int, co: int, spelling: str) -> None:
        super().__init__()
        self.spelling, self.scale = spelling, 1 / (ci * 9) ** 0.5
        self.weight, self.bias = nn.Parameter(torch.randn(co, ci, 3, 3)), nn.Parameter(torch.zeros(co))

    def forward(self, x: Tensor) -> Tensor:
        if self.spelling == "weight * scale":
            return F.conv2d(x, self.weight * self.scale, self.bias, padding=1)
        if self.spelling == "scale * weight / 2":
            return F.conv2d(x, self.scale * self.weight / 2, self.bias, padding=1)
        return F.conv2d(x * self.scale, self.weight, self.bias, padding=1)


class EqualNet(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.c1, self.c2, self.out = EqualConv(3, 8, spelling), EqualConv(8, 8, spelling), nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.leaky_relu(self.c2(F.leaky_relu(self.c1(x), 0.2)), 0.2))


class BlurPool(nn.Module):
    """antialiased-cnns: a fixed depthwise filter (a buffer), padded inside or before the conv."""

    def __init__(self, pad: str) -> None:
        super().__init__()
        self.pad = pad
        self.register_buffer("filt", torch.full((8, 1, 3, 3), 1 / 9.0))
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c1(x))
        if self.pad == "conv":
            h = F.conv2d(h, self.filt, stride=2, padding=1, groups=h.shape[1])
        else:
            h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode=self.pad), self.filt, stride=2, groups=h.shape[1])
        return self.c2(h)


class NonLocal(nn.Module):
    """The non-local block as its reference code writes it: views by ``self.inter_channels``."""

    def __init__(self, by_attribute: bool, c: int = 8) -> None:
        super().__init__()
        self.by_attribute, self.inter_channels = by_attribute, c // 2
        self.stem, self.W = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c // 2, c, 1)
        self.g, self.theta, self.phi = (nn.Conv2d(c, c // 2, 1) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, n = x.size(0), self.inter_channels

        def rows(h: Tensor) -> Tensor:
            return h.view(b, n, -1) if self.by_attribute else h.flatten(2)

        g, theta, phi = rows(self.g(x)).permute(0, 2, 1), rows(self.theta(x)).permute(0, 2, 1), rows(self.phi(x))
        y = torch.matmul(F.softmax(torch.matmul(theta, phi), -1), g).permute(0, 2, 1).contiguous()
        return self.W(y.view(b, n if self.by_attribute else -1, *x.size()[2:])) + x


class Octave(nn.Module):
    """Octave convolution's high/low split, counted from either end."""

    def __init__(self, from_end: bool) -> None:
        super().__init__()
        self.from_end, self.lo_ch, self.hi_ch = from_end, 4, 12
        self.stem, self.hh, self.ll = (
            nn.Conv2d(3, 16, 3, padding=1),
            nn.Conv2d(12, 8, 3, padding=1),
            nn.Conv2d(4, 8, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        if self.from_end:
            high, low = x[:, : -self.lo_ch], x[:, -self.lo_ch :]
        else:
            high, low = x[:, : self.hi_ch], x[:, self.hi_ch :]
        return self.hh(high) + F.interpolate(self.ll(F.avg_pool2d(low, 2)), scale_factor=2)


class LayerScale(nn.Module):
    """timm's metaformer ``LayerScale2d``: the scale viewed by a tuple attribute ``(dim, 1, 1)``."""

    def __init__(self, by_attribute: bool) -> None:
        super().__init__()
        self.by_attribute, self.shape = by_attribute, (8, 1, 1)
        self.conv, self.scale, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Parameter(torch.rand(8) + 0.5), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return self.out(h * (self.scale.view(self.shape) if self.by_attribute else self.scale[:, None, None]))


SPELLING_PAIRS: dict[str, tuple[Callable[[bool], nn.Module], Tensor]] = {
    "scale.view(self.shape)": (lambda a: LayerScale(a), torch.randn(2, 3, 6, 6)),
    "ConvTranspose2d output_size=e1.size()": (lambda a: UNetUp(a), torch.randn(2, 3, 8, 8)),
    "F.conv2d(x, weight * scale)": (lambda a: EqualNet("weight * scale" if a else "x * scale"), torch.randn(2, 3, 8, 8)),
    "F.conv2d(x, scale * weight / 2)": (lambda a: EqualNet("scale * weight / 2" if a else "x * scale"), torch.randn(2, 3, 8, 8)),
    "F.pad before a buffer's depthwise conv": (lambda a: BlurPool("constant" if a else "conv"), torch.randn(2, 3, 8, 8)),
    "reflect pad before it": (lambda a: BlurPool("reflect" if a else "conv"), torch.randn(2, 3, 8, 8)),
    "view(b, self.inter_channels, -1)": (lambda a: NonLocal(a), torch.randn(2, 3, 6, 6)),
    "x[:, :-self.lo_ch], x[:, -self.lo_ch:]": (lambda a: Octave(a), torch.randn(2, 3, 8, 8)),
}


@pytest.mark.parametrize("name", list(SPELLING_PAIRS))
def test_two_spellings_one_plan(name: str, tmp_path) -> None:
    make, x = SPELLING_PAIRS[name]
    torch.manual_seed(0)
    model = make(True).eval()
    assert _claims(model, x) == _claims(make(False).eval(), x)
    check_oracle(model, x, tmp_path, min_drop=0.0)


def test_an_attribute_a_view_splits_by_stays_a_constant() -> None:
    """``view(b, self.num_paths, -1)`` splits the channels into paths: the count of paths does
    not follow pruning, and the attribute that only keeps an axis whole (above) is not this."""

    class Paths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_paths, self.a, self.b = 2, nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.b(h.view(h.shape[0], self.num_paths, -1, *h.shape[2:]).sum(1))

    plan = skg.plan(Paths().eval(), torch.randn(2, 3, 5, 5))
    assert [(g.name, g.size) for g in plan.prunable] == [("a:out", 4)]  # within a path, not the paths
    assert not plan.group("a:out").sizes


def test_gqa_repeat_count_of_attributes_no_view_reads() -> None:
    """``repeat_interleave(self.num_heads // self.num_key_value_heads)`` with heads viewed by
    ``-1``: surgery rewrites neither count, and pruning whole KV groups keeps their ratio."""

    class Attn(nn.Module):
        def __init__(self, ratio: bool) -> None:
            super().__init__()
            self.ratio, self.num_heads, self.num_key_value_heads, self.head_dim = ratio, 4, 2, 8
            self.num_key_value_groups = 2
            self.q, self.k, self.v, self.o = nn.Linear(32, 32), nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 32)

        def forward(self, x: Tensor) -> Tensor:
            b, t, _ = x.shape
            q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
            r = self.num_heads // self.num_key_value_heads if self.ratio else self.num_key_value_groups
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
            return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1))

    x = torch.randn(2, 5, 32)
    torch.manual_seed(0)
    model = Attn(True).eval()
    assert _claims(model, x) == _claims(Attn(False).eval(), x) == [(2, True)]
    assert not skg.plan(model, x, gqa="query_heads").group("q:out").prunable  # the ratio there would move
    pruned = skg.prune(model, skg.plan(model, x), masks={"q:out": torch.tensor([True, False])}).model
    assert (pruned.num_heads, pruned.num_key_value_heads) == (4, 2)  # neither rewritten: the ratio stays
    assert pruned(x).shape == x.shape


class StatsPool(nn.Module):
    """ECAPA-TDNN's attentive statistics pooling: the mean over time repeated back along it."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.c, self.att, self.out = nn.Conv1d(20, 16, 1), nn.Conv1d(32, 16, 1), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c(x))
        m = h.mean(dim=2, keepdim=True)
        if self.spelling == "repeat":
            m = m.repeat(1, 1, h.size(-1))
        elif self.spelling == "tile":
            m = m.tile((1, 1, h.shape[2]))
        else:
            m = m.expand(-1, -1, h.size(-1))
        w = torch.softmax(self.att(torch.cat([h, m], 1)), dim=2)
        return self.out((h * w).sum(2))


class GraphReadout(nn.Module):
    """Nodes of each graph picked by a boolean mask of a batch vector, or by their indices."""

    def __init__(self, by_mask: bool) -> None:
        super().__init__()
        self.by_mask, self.a, self.b = by_mask, nn.Linear(7, 16), nn.Linear(16, 3)
        self.register_buffer("batch", torch.tensor([0] * 5 + [1] * 5))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))
        if self.by_mask:
            return self.b(torch.stack([h[self.batch == g].mean(0) for g in range(2)]))
        return self.b(torch.stack([h[(self.batch == g).nonzero(as_tuple=True)[0]].mean(0) for g in range(2)]))


class GatedSlices(nn.Module):
    """TabNet's GLU by slicing at an attribute, with or without an Ellipsis."""

    def __init__(self, ellipsis: bool) -> None:
        super().__init__()
        self.ellipsis, self.o, self.fc, self.out = ellipsis, 8, nn.Linear(6, 16), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.ellipsis:
            return self.out(h[..., : self.o] * torch.sigmoid(h[..., self.o :]))
        return self.out(h[:, : self.o] * torch.sigmoid(h[:, self.o :]))


class Bags(nn.Module):
    def __init__(self, bag: bool) -> None:
        super().__init__()
        self.bag = bag
        self.e = nn.EmbeddingBag(10, 8, mode="sum") if bag else nn.Embedding(10, 8)
        self.proj, self.fc = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, c: Tensor) -> Tensor:
        e = self.e(c[:, None]) if self.bag else self.e(c)
        return self.fc(e + self.proj(torch.ones(c.shape[0], 4)))


class Recurrent(nn.Module):
    def __init__(self, cell: bool) -> None:
        super().__init__()
        self.cell, self.inp, self.fc = cell, nn.Linear(10, 16), nn.Linear(24, 5)
        self.rnn = nn.LSTMCell(16, 24) if cell else nn.LSTM(16, 24, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        xs = F.relu(self.inp(x))
        if not self.cell:
            return self.fc(self.rnn(xs)[0][:, -1])
        h = c = torch.zeros(x.size(0), 24)
        for t in range(x.size(1)):
            h, c = self.rnn(xs[:, t], (h, c))
        return self.fc(h)


class Neighbours(nn.Module):
    """PointNet++ / DGCNN: features of each point's k nearest neighbours."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.a, self.b = spelling, nn.Linear(3, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))
        b, n, c = h.shape
        idx = torch.cdist(x, x).topk(4, dim=-1, largest=False)[1]
        if self.spelling == "h[batch_ids, idx]":
            g = h[torch.arange(b)[:, None, None], idx]
        elif self.spelling == "gather":
            g = torch.gather(h, 1, idx.reshape(b, -1, 1).expand(-1, -1, c)).view(b, n, 4, c)
        else:
            g = h.reshape(b * n, -1)[(idx + torch.arange(b).view(-1, 1, 1) * n).view(-1)].view(b, n, 4, -1)
        return self.b(g.max(dim=2)[0])


MORE_PAIRS: dict[str, tuple[Callable[[bool], nn.Module], Tensor]] = {
    "points[batch_ids, idx]": (lambda a: Neighbours("h[batch_ids, idx]" if a else "flat"), torch.randn(2, 12, 3)),
    "torch.gather(h, 1, idx.expand(-1, -1, C))": (lambda a: Neighbours("gather" if a else "flat"), torch.randn(2, 12, 3)),
    "m.repeat(1, 1, h.size(-1))": (lambda a: StatsPool("repeat" if a else "expand"), torch.randn(4, 20, 12)),
    "m.tile((1, 1, h.shape[2]))": (lambda a: StatsPool("tile" if a else "expand"), torch.randn(4, 20, 12)),
    "h[batch == g]": (lambda a: GraphReadout(a), torch.randn(10, 7)),
    "h[..., :self.o]": (lambda a: GatedSlices(a), torch.randn(5, 6)),
    "nn.EmbeddingBag": (lambda a: Bags(a), torch.randint(0, 10, (6,))),
    "nn.LSTMCell in a loop": (lambda a: Recurrent(a), torch.randn(3, 5, 10)),
}


@pytest.mark.parametrize("name", list(MORE_PAIRS))
def test_two_spellings_one_plan_beyond_images(name: str, tmp_path) -> None:
    make, x = MORE_PAIRS[name]
    torch.manual_seed(0)
    model = make(True).eval()
    assert _claims(model, x) == _claims(make(False).eval(), x)
    with torch.device("meta"):
        on_meta = make(True).eval()
    assert _claims(on_meta, x.to("meta")) == _claims(model, x)
    check_oracle(model, x, tmp_path, min_drop=0.0)


# -- a plan is the planner's for this model, as it is ----------------------------------------


class Flagged(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.norm, self.f1, self.f2 = norm, nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        h = self.f1(x)
        return self.f2(h.softmax(-1) if self.norm else torch.relu(h))


def test_a_plan_of_another_flag_is_planned_again() -> None:
    """Same modules and shapes, a flag that changes forward: the plan of one is checked on the other."""
    x, mask = torch.randn(4, 8), {"f1:out": torch.arange(16) % 5 == 1}
    plan = skg.plan(Flagged(False).eval(), x)
    with pytest.raises(skg.PlanError, match="field zero_invariant: differs from the planner's"):
        skg.prune(Flagged(True).eval(), plan, masks=mask)
    model = Flagged(False).eval()
    plan = skg.plan(model, x)
    model.norm = True  # flipped after planning
    with pytest.raises(skg.PlanError, match="as it is now"):
        skg.prune(model, plan, masks=mask)


def test_a_plan_edited_in_place_is_planned_again() -> None:
    x = torch.randn(4, 8)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    plan = skg.plan(model, x)
    i = [g.name for g in plan.groups].index("0:out")
    group = plan.groups[i]
    plan.groups[i] = group.model_copy(update={"members": [m for m in group.members if m.param != "0.bias"] + [group.members[1]]})
    with pytest.raises(skg.PlanError, match="field members"):
        skg.prune(model, plan, masks={"0:out": torch.arange(16) % 4 == 1})


def test_a_plan_made_before_the_forward_changed_is_refused() -> None:
    """However the forward changes after planning (a dict of options, a class attribute, a
    global), ``prune`` plans the model as it is now and compares."""

    class Shuffled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.opts = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), {"shuffle": False}

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.c1(x))
            if self.opts["shuffle"]:  # ShuffleNet's channel shuffle
                b, c, height, width = h.shape
                h = h.view(b, 2, -1, height, width).transpose(1, 2).reshape(b, -1, height, width)
            return self.c2(h)

    x, model = torch.randn(2, 3, 8, 8), Shuffled().eval()
    plan = skg.plan(model, x)
    model.opts["shuffle"] = True
    with pytest.raises(skg.PlanError, match="c1:out.*not the planner's plan of this model as it is now"):
        skg.prune(model, plan, masks={"c1:out": torch.arange(16) % 4 == 1})


def test_infinite_plain_inputs_survive_json() -> None:
    class Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f1, self.f2 = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x: Tensor, top: float = 1.0) -> Tensor:
            return self.f2(torch.relu(self.f1(x)).clamp(max=top))

    model = Clamped().eval()
    loaded = skg.Plan.from_json(skg.plan(model, (torch.randn(4, 8), float("inf"))).model_dump_json())
    assert loaded.inputs[1].value == float("inf")
    assert skg.prune(model, loaded, masks={"f1:out": torch.arange(16) % 4 == 1}).model.f1.out_features == 12


@pytest.mark.parametrize("cast", ["long", "int", "detach", "to(int64)"])
@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_positions_through_casts(cast: str, export: bool) -> None:
    class Cast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.e = nn.Linear(6, 8), nn.Embedding(8, 4)
            with torch.no_grad():
                self.a.bias[0] = -1e4

        def forward(self, x: Tensor) -> Tensor:
            if export:
                assert isinstance(x, torch.Tensor)  # sends tracing to torch.export
            i = self.a(x).argmax(1)
            i = {"long": i.long, "int": i.int, "detach": i.detach, "to(int64)": lambda: i.to(torch.int64)}[cast]()
            return self.e(i)

    torch.manual_seed(0)
    assert _dead_channel_is_exact(Cast().eval(), torch.randn(5, 6), "a.weight")


def test_a_number_computed_and_never_used_sizes_nothing() -> None:
    """``head_dim = k.shape[-1] // self.heads`` left unused pinned the heads ("a number computed
    from it"); a quotient the forward uses in a loop still pins."""

    class Attn(nn.Module):
        def __init__(self, loop: bool) -> None:
            super().__init__()
            self.loop, self.heads = loop, 2
            self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x: Tensor) -> Tensor:
            b, n, _ = x.shape
            q, k, v = self.q(x), self.k(x), self.v(x)
            head_dim = k.shape[-1] // self.heads
            for _ in range(head_dim if self.loop else 0):
                pass
            q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)) + x

    x = torch.randn(2, 5, 8)
    assert skg.plan(Attn(False).eval(), x).group("q:out").prunable
    assert not skg.plan(Attn(True).eval(), x).group("q:out").prunable


@pytest.mark.parametrize("spelling", ["h[:, idx]", "h[batch_ids, idx]"])
def test_integer_indexing_alike_on_both_tracers(spelling: str) -> None:
    class Indexed(nn.Module):
        def __init__(self, export: bool) -> None:
            super().__init__()
            self.export, self.a, self.b = export, nn.Linear(3, 16), nn.Linear(16, 4)
            self.register_buffer("jj", torch.tensor([3, 5, 7, 11]))

        def forward(self, x: Tensor) -> Tensor:
            if self.export:
                assert isinstance(x, torch.Tensor)  # sends tracing to torch.export
            h = F.relu(self.a(x))
            if spelling == "h[:, idx]":
                return self.b(h[:, self.jj])
            idx = torch.cdist(x, x).topk(4, dim=-1, largest=False)[1]
            return self.b(h[torch.arange(2)[:, None, None], idx].max(2)[0])

    x = torch.randn(2, 12, 3)
    assert _claims(Indexed(False).eval(), x) == _claims(Indexed(True).eval(), x) == [(16, True)]


def test_a_head_width_read_off_another_tensor_pins_the_heads() -> None:
    """``hd = x.shape[-1] // self.heads`` with ``x`` the residual stream: pruning heads leaves the
    residual's width, so the pruned code would compute another width (a view by ``32 // 3``):
    the heads pin (as diffusers' ``k.shape[-1] // attn.heads`` does, which would be exact)."""

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = 4
            self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

        def forward(self, x: Tensor) -> Tensor:
            b, t, _ = x.shape
            hd = x.shape[-1] // self.heads
            q, k, v = (p(x).view(b, -1, self.heads, hd).transpose(1, 2) for p in (self.q, self.k, self.v))
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)) + x

    assert not skg.plan(Other().eval(), torch.randn(2, 5, 32)).group("q:out").prunable


def test_a_forward_run_many_times_plans_as_a_fresh_one() -> None:
    """Python 3.11 specialises a call after a few runs and then runs it inside its ``PRECALL``:
    ``print(self.conv.out_channels)`` read as a conversion at an unknown instruction pinned
    (found when ``prune`` planned a model again after its eager runs)."""

    class Shown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.conv(torch.relu(self.a(x))))
            print(self.conv.out_channels)
            return self.head(h)

    x, model = torch.randn(2, 3, 6, 6), Shown().eval()
    fresh = skg.plan(model, x).group("conv:out")
    with torch.no_grad():
        for _ in range(30):
            model(x)
    assert skg.plan(model, x).group("conv:out") == fresh and fresh.prunable and fresh.zero_invariant
