"""Round 23 of the adversaries (issue 7): lengths unpacked on a path the call's arguments
did not take, plans edited by hand, positions returned whole, options and saved files checked."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from helpers import assert_untouched, check_oracle, fingerprint
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import sparsekit_graph as skg


def _claims(model: nn.Module, x: object, **options: object) -> list[tuple[int, bool]]:
    return [(g.size, g.zero_invariant) for g in skg.plan(model.eval(), x, **options).prunable]


# -- a shape unpacked, then a return the call's arguments decide (HF ``repeat_kv``) ------------


def _repeat(t: Tensor, n_rep: int) -> Tensor:
    """Hugging Face's ``repeat_kv``: unpacks the shape, returns at once when ``n_rep == 1``."""
    batch, heads, length, dim = t.shape
    if n_rep == 1:
        return t
    return t[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


def _widen(t: Tensor, copies: int) -> Tensor:
    """Uses the unpacked width, where ``copies > 1``, as no traced graph holds it (a list's length)."""
    batch, width = t.shape
    if copies > 1:
        return t * len([0] * width)
    return t


class EagerAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 4) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.groups = heads // kv_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.ModuleList(nn.Linear(dim, kv_heads * self.head_dim) for _ in range(2))
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # a device check torch.fx cannot trace: torch.export plans it
            x = x.contiguous()
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (_repeat(p(x).view(b, t, -1, self.head_dim).transpose(1, 2), self.groups) for p in self.kv)
        a = torch.softmax(q @ k.transpose(2, 3) * self.head_dim**-0.5, -1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_shape_unpacked_before_an_early_return_keeps_heads(kv_heads: int, tmp_path: Path) -> None:
    """``b, h, s, d = t.shape; if n_rep == 1: return t`` (Hugging Face eager attention with as
    many key/value heads as query heads) pinned the heads: the lengths looked used on the path
    the call did not take. The walk now follows only the branch the call's own arguments
    decided (an argument its code never reassigns)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    model = EagerAttention(kv_heads=kv_heads)
    assert _claims(model, x) == [(kv_heads, True)]
    check_oracle(model, x, tmp_path)


@pytest.mark.parametrize("wide", [True, False])
def test_the_branch_taken_decides_whether_an_unpacked_length_is_used(wide: bool) -> None:
    """Soundness of the fold: where the argument sends the call down the path that uses the
    width, the width is a length Python used (the group pins, as before); where it does not,
    nothing reads it."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: Tensor) -> Tensor:
            if x.is_cuda:  # torch.export plans it
                x = x.contiguous()
            return self.b(_widen(torch.relu(self.a(x)), 2 if wide else 1))

    torch.manual_seed(0)
    claims = _claims(Net(), torch.randn(3, 8))
    assert claims == ([] if wide else [(16, True)])


def test_hugging_face_eager_attention_keeps_its_heads() -> None:
    """Llama with ``attn_implementation="eager"`` plans its heads as with SDPA."""
    transformers = pytest.importorskip("transformers")
    x = torch.randint(0, 64, (1, 6))
    plans = []
    for impl in ("sdpa", "eager"):
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, attn_implementation=impl,
        )  # fmt: skip
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans.append(_claims(transformers.LlamaForCausalLM(config), x))
    assert plans[0] == plans[1] and (4, True) in plans[1]


# -- ``squeeze()`` drops a channel axis pruned to one channel ----------------------------------

SQUEEZES = {
    "squeeze()": lambda p: p.squeeze(),
    "squeeze(1)": lambda p: p.squeeze(-1).squeeze(-1).squeeze(1).view(p.shape[0], -1),
    "squeeze((2, 3))": lambda p: p.squeeze((2, 3)),
    "flatten(1)": lambda p: p.flatten(1),
}


class SqueezeExcite(nn.Module):
    def __init__(self, spelling: str, width: int = 6) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv, self.fc, self.out = nn.Conv2d(3, width, 3, padding=1), nn.Linear(width, width), nn.Conv2d(width, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        w = torch.sigmoid(self.fc(SQUEEZES[self.spelling](nn.functional.adaptive_avg_pool2d(h, 1))))
        return self.out(h * w[:, :, None, None])


@pytest.mark.parametrize("spelling", list(SQUEEZES))
def test_squeeze_keeps_two_channels_of_an_axis_it_may_drop(spelling: str, tmp_path: Path) -> None:
    """``squeeze()`` (or ``squeeze(1)`` on the channel axis) is a no-op at 6 channels and drops
    the axis at 1: pruned to one channel, the squeeze-excite MLP got a (B,) tensor (a failing
    prune) and a ``normalize(dim=-1)`` ran over the batch (30% off). The axis keeps two."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    plan = skg.plan(SqueezeExcite(spelling).eval(), x)
    (group,) = plan.prunable
    assert (group.size, group.zero_invariant) == (6, True)
    assert group.min_keep == (None if spelling in ("squeeze((2, 3))", "flatten(1)") else 2)
    if group.min_keep:
        with pytest.raises(skg.PlanError, match="min_keep"):
            skg.prune(SqueezeExcite(spelling), plan, masks={group.name: torch.arange(6) > 0})
    check_oracle(SqueezeExcite(spelling), x, tmp_path)


# -- a plan edited by hand: the attention scale and the followed axes are structure ------------


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("edit", ["no scales", "another head_dim", "a made-up follow"])
def test_an_edited_attention_scale_is_refused(edit: str) -> None:
    """A plan file whose head_dim group lost its attention scale (or had it changed, or gained
    a followed axis) was accepted: the pruned model then differed from the masked one by 5%,
    on a group claimed zero-invariant. ``scales`` and ``follows`` are structure: refused."""
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x, head_dim=True)
    data = json.loads(plan.model_dump_json())
    group = next(g for g in data["groups"] if g["name"] == "q:out:head_dim")
    assert group["scales"], "the head_dim group compensates the attention scale"
    if edit == "no scales":
        group["scales"] = []
    elif edit == "another head_dim":
        group["scales"][0]["head_dim"] = 4
    else:
        group["follows"].append({"use": "abc:1"})
    edited = skg.Plan.from_json(json.dumps(data))
    with pytest.raises(skg.PlanError, match="field (scales|follows)"):
        skg.prune(model, edited, masks={"q:out:head_dim": torch.arange(8) % 3 == 1})


# -- positions returned whole (``logits.max(1)``) ----------------------------------------------

RETURNS = {
    "max(1)": lambda logits: logits.max(1),
    "topk(2, 1)": lambda logits: logits.topk(2, 1),
    "[min(1)]": lambda logits: [logits.min(1)],
    "v, i = max(1)": lambda logits: tuple(logits.max(1)),
}


class Classifier(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x: Tensor) -> object:
        return RETURNS[self.spelling](self.fc(torch.relu(self.conv(x)).mean((2, 3))))


@pytest.mark.parametrize("spelling", list(RETURNS))
def test_positions_returned_whole_pin_their_axis(spelling: str) -> None:
    """``return logits.max(1)`` (a ``torch.return_types`` tuple, indices included) left the
    class axis prunable: the pruned model's predicted ids were renumbered. Every spelling
    pins it now, as unpacking it first did."""
    torch.manual_seed(0)
    plan = skg.plan(Classifier(spelling).eval(), torch.randn(2, 3, 8, 8))
    assert not plan.group("fc:out").prunable
    assert "positions along it" in (plan.group("fc:out").reason or "")
    assert [(g.name, g.size) for g in plan.prunable] == [("conv:out", 8)]


# -- plan()'s options and load_pruned()'s files, checked ------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ignore": [0]}, "0 is not a module or parameter name"),
        ({"ignore": [None]}, "None is not a module or parameter name"),
        ({"ignore": 5}, "ignore=5"),
        ({"train_graph": None}, "train_graph=None"),
        ({"train_graph": "no"}, "train_graph='no'"),
    ],
)
def test_bad_plan_options_are_named(options: dict[str, object], message: str) -> None:
    """``ignore`` and ``train_graph`` of the wrong kind raised pydantic's ValidationError or a
    TypeError (``train_graph="no"`` traced as true, recorded as false)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with pytest.raises(skg.PlanError, match=re.escape(message)):
        skg.plan(model, torch.randn(1, 3, 8, 8), **options)


def test_one_ignored_name_may_be_given_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    assert skg.plan(model, x, ignore="0") == skg.plan(model, x, ignore=["0"])
    assert skg.plan(model, x, ignore=None) == skg.plan(model, x)


DAMAGE = {
    "removed is a list": ("masks.json", '{"removed": [1, 2]}'),
    "removed is null": ("masks.json", '{"removed": null}'),
    "a list at the top": ("masks.json", "[1]"),
    "indices are a number": ("masks.json", '{"removed": {"0:out": 5}}'),
    "an index is a bool": ("masks.json", '{"removed": {"0:out": [true]}}'),
    "a pinned group": ("masks.json", '{"removed": {"2:out": [1]}}'),
    "another mask": ("masks.json", '{"removed": {"0:out": [1]}}'),
    "weights not safetensors": ("model.safetensors", "garbage"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_load_pruned_refuses_damaged_files_and_leaves_the_model(damage: str, tmp_path: Path) -> None:
    """A damaged ``masks.json`` or weights file raised AttributeError, TypeError, IndexError
    or safetensors' own error, some after the fresh model was cut: a ``PlanError`` now,
    the model as it was."""

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()

    model = fresh()
    plan = skg.plan(model, torch.randn(1, 3, 8, 8))
    skg.save_pruned(skg.prune(model, plan, masks={"0:out": torch.arange(8) >= 6}), tmp_path)
    name, text = DAMAGE[damage]
    (tmp_path / name).write_text(text)
    target = fresh()
    before = fingerprint(target)
    with pytest.raises(skg.PlanError):
        skg.load_pruned(target, tmp_path)
    assert_untouched(target, before, "load_pruned")


@pytest.mark.parametrize("damage", ["a tensor more", "a tensor less", "a tensor of another shape"])
def test_load_pruned_writes_no_weight_before_they_all_fit(damage: str, tmp_path: Path) -> None:
    """``load_state_dict`` copies every matching tensor before it raises on a missing or extra
    key: the layers surgery had not cut held the saved weights after the refusal. Keys and
    shapes are checked first."""

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()

    model = fresh()
    plan = skg.plan(model, torch.randn(1, 3, 8, 8))
    for p in model.parameters():
        p.data.normal_()  # trained: the saved weights differ from a fresh model's
    skg.save_pruned(skg.prune(model, plan, masks={"0:out": torch.arange(8) >= 6}), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    if damage == "a tensor more":
        state["junk"] = torch.zeros(1)
    elif damage == "a tensor less":
        del state["4.bias"]
    else:
        state["0.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "model.safetensors"))
    target = fresh()
    before = fingerprint(target)
    with pytest.raises(skg.PlanError, match="do not fit the pruned model"):
        skg.load_pruned(target, tmp_path)
    assert_untouched(target, before, "load_pruned")


def test_load_pruned_refuses_an_edited_attention_scale(tmp_path: Path) -> None:
    """``prune`` refused a plan file whose head_dim group lost its attention scale, but
    ``load_pruned`` rebuilt the model from it (its attention temperature off by 15%): the
    loaded plan is checked against the planner's as ``prune`` checks it."""
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 5, 32)
    plan = skg.plan(model, x, head_dim=True)
    skg.save_pruned(skg.prune(model, plan, masks={"q:out:head_dim": torch.arange(8) % 3 == 1}), tmp_path)
    data = json.loads((tmp_path / "plan.json").read_text())
    next(g for g in data["groups"] if g["name"] == "q:out:head_dim")["scales"] = []
    (tmp_path / "plan.json").write_text(json.dumps(data))
    torch.manual_seed(0)
    with pytest.raises(skg.PlanError, match="field scales"):
        skg.load_pruned(Attention().eval(), tmp_path)


# -- the export probe traces the pruned copies with the model's tracer ----------------------


class BufferDevice(nn.Module):
    """torch.fx folds ``self.t * ones(device=self.t.device)`` into a constant (buffers are not
    proxied): its graph is not the forward's, and torch.export plans it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("t", torch.tensor([0.1, 0.2]))
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x))
        _, c, _, _ = h.shape
        e = self.t * torch.ones(1, device=self.t.device)
        return self.c2(h * c**-0.5) + e[:, None, None, None]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_probe_retraces_with_the_models_tracer(device: str) -> None:
    """On meta weights, the model went to torch.export (torch.fx's graph was not the
    forward's) but the probe traced its pruned copies with torch.fx, where ``c ** -0.5`` is
    a node, not a number: the changed scale went unseen and ``c1:out`` was claimed
    zero-invariant (7% off)."""
    torch.manual_seed(0)
    model = BufferDevice().to(device).eval()
    assert _claims(model, torch.randn(2, 3, 6, 6, device=device)) == [(16, False)]


# -- spellings: literal index lists, take_along_dim, similarity functions --------------------

FIELDS = {
    "list": lambda v, r, c: v[:, r] * v[:, c],
    "tensor": lambda v, r, c: v[:, torch.tensor(r)] * v[:, torch.tensor(c)],
    "tuple": lambda v, r, c: v[:, tuple(r), :] * v[:, tuple(c), :],
    "index_select": lambda v, r, c: v.index_select(1, torch.tensor(r)) * v.index_select(1, torch.tensor(c)),
}


class FieldPairs(nn.Module):
    """pytorch-fm's inner-product network: embeddings of field pairs, by index lists."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.row, self.col = spelling, [0, 0, 1], [1, 2, 2]
        self.emb, self.fc = nn.Embedding(10, 8), nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(FIELDS[self.spelling](self.emb(x), self.row, self.col).sum(1))


@pytest.mark.parametrize("spelling", list(FIELDS))
def test_a_list_of_positions_indexes_one_axis(spelling: str, tmp_path: Path) -> None:
    """``v[:, [0, 0, 1]]`` pinned every axis (the embedding width too); an index tensor did
    not. A list of ints indexes its axis as the tensor would: that axis pins, the rest pass."""
    x = torch.randint(0, 10, (4, 3))
    torch.manual_seed(0)
    assert _claims(FieldPairs(spelling), x) == [(8, True)]
    check_oracle(FieldPairs(spelling), x, tmp_path)


PEAKS = {
    "gather": lambda f, i: torch.gather(f, 2, i),
    "take_along_dim": lambda f, i: torch.take_along_dim(f, i, 2),
    "Tensor.take_along_dim": lambda f, i: f.take_along_dim(i, dim=-1),
}


class Peak(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x))
        f = h.flatten(2)
        return self.c2(h * PEAKS[self.spelling](f, f.argmax(-1, keepdim=True))[..., None])


@pytest.mark.parametrize("spelling", list(PEAKS))
def test_take_along_dim_plans_as_gather(spelling: str, tmp_path: Path) -> None:
    """``torch.take_along_dim`` had no rule (pinned); with an index as long as the input off
    ``dim`` it is ``gather``."""
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    assert _claims(Peak(spelling), x) == [(8, True)]
    check_oracle(Peak(spelling), x, tmp_path)


SIMILARITIES = {
    "normalize, sum": lambda s, a, b: (nn.functional.normalize(a, dim=1) * nn.functional.normalize(b, dim=1)).sum(1),
    "F.cosine_similarity": lambda s, a, b: nn.functional.cosine_similarity(a, b, dim=1),
    "keywords": lambda s, a, b: torch.cosine_similarity(x1=a, x2=b),
    "nn.CosineSimilarity": lambda s, a, b: s.cos(a, b),
    "all pairs": lambda s, a, b: nn.functional.cosine_similarity(a[:, None], b[None], dim=-1),
}


class Siamese(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling, self.cos, self.dist = spelling, nn.CosineSimilarity(), nn.PairwiseDistance()
        self.enc = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.enc(x[:, :10]), self.enc(x[:, 10:])
        if self.spelling == "nn.PairwiseDistance":
            return self.dist(a, b)
        if self.spelling == "F.pairwise_distance":
            return nn.functional.pairwise_distance(a, b)
        return SIMILARITIES[self.spelling](self, a, b)


@pytest.mark.parametrize("spelling", [*SIMILARITIES, "F.pairwise_distance", "nn.PairwiseDistance"])
def test_similarity_functions_plan_as_written_by_hand(spelling: str, tmp_path: Path) -> None:
    """``F.cosine_similarity`` (and its module, and its keywords) had no rule: the encoder's
    output pinned, where the hand-written normalize-and-sum prunes exactly. A pairwise
    distance adds ``eps`` to every channel's difference: prunable, not zero-invariant."""
    x = torch.randn(4, 20)
    torch.manual_seed(0)
    claims = _claims(Siamese(spelling), x)
    assert claims == [(32, True), (16, "distance" not in spelling.lower())]
    check_oracle(Siamese(spelling), x, tmp_path)


# -- recurrent layers under torch.export; Mamba's names; a fan-in read off one row --------------


class Recurrent(nn.Module):
    """``hn = hn[0] if isinstance(hn, tuple) else hn`` (code serving LSTM and GRU alike) sends
    planning to torch.export, where the layer is ``aten.gru`` / ``aten.lstm`` / ``aten.rnn_tanh``."""

    def __init__(self, kind: type[nn.RNNBase], bidirectional: bool) -> None:
        super().__init__()
        self.pre = nn.Linear(16, 24)
        self.rnn = kind(24, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(12 * (1 + bidirectional), 5)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it
            x = x.contiguous()
        out, hn = self.rnn(self.pre(x))
        hn = hn[0] if isinstance(hn, tuple) else hn
        return self.head(out[:, -1]) + hn[-1].sum() * 0


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM, nn.RNN])
def test_recurrent_layers_under_export_read_their_features(kind: type[nn.RNNBase], bidirectional: bool, tmp_path: Path) -> None:
    """``aten.gru`` had no rule: every axis pinned ("unknown op gru"), the features a Linear
    feeds the layer included; as ``nn.GRU`` under torch.fx they are its input weights' columns."""
    x = torch.randn(2, 7, 16)
    torch.manual_seed(0)
    assert _claims(Recurrent(kind, bidirectional), x) == [(24, True)]
    check_oracle(Recurrent(kind, bidirectional), x, tmp_path)


class ScanState(nn.Module):
    """A selective scan's state, ``torch.zeros(b, self.<count>, self.d_state)``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.d_state = name, 4
        setattr(self, name, 24)
        self.in_proj, self.b_proj, self.out_proj = nn.Linear(16, 24), nn.Linear(16, 4), nn.Linear(24, 5)
        self.A_log = nn.Parameter(torch.rand(24, 4))

    def forward(self, x: Tensor) -> Tensor:
        u, b = self.in_proj(x), self.b_proj(x)
        h = torch.zeros(x.shape[0], getattr(self, self.name), self.d_state)
        ys = []
        for t in range(x.shape[1]):
            h = torch.exp(-self.A_log.exp()) * h + u[:, t, :, None] * b[:, t, None, :]
            ys.append(h.sum(-1))
        return self.out_proj(torch.stack(ys, 1))


def test_mamba_names_are_size_attributes() -> None:
    """``self.d_inner`` (Mamba's reference code) pinned where ``self.intermediate_size``
    pruned; so did Mamba-2's ``nheads`` / ``headdim``."""
    x = torch.randn(2, 5, 16)
    torch.manual_seed(0)
    assert _claims(ScanState("d_inner"), x) == _claims(ScanState("intermediate_size"), x) == [(24, True)]


FAN_IN = {
    "w[0].numel()": lambda w: w[0].numel(),
    "w.size(1) * w[0][0].numel()": lambda w: w.size(1) * w[0][0].numel(),
    "w.numel() // w.size(0)": lambda w: w.numel() // w.size(0),
}


class EqualConv(nn.Module):
    """StyleGAN's equalized learning rate, the fan-in read at run time."""

    def __init__(self, cin: int, cout: int, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.weight, self.bias = nn.Parameter(torch.randn(cout, cin, 3, 3)), nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        return nn.functional.conv2d(x, w * (2 / FAN_IN[self.spelling](w)) ** 0.5, self.bias, padding=1)


@pytest.mark.parametrize("spelling", list(FAN_IN))
def test_a_fan_in_read_off_one_row_plans_as_the_quotient(spelling: str) -> None:
    """``w[0].numel()`` pinned the output channels ("indexing at getitem"): only the shape of
    the row is read. Every spelling plans as ``w.numel() // w.size(0)``."""

    def net() -> nn.Module:
        return nn.Sequential(EqualConv(3, 16, spelling), nn.LeakyReLU(0.2), EqualConv(16, 3, spelling))

    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    assert _claims(net(), x) == [(16, False)]


class ProbeAttention(nn.Module):
    """SigLIP's pooling head: ``nn.MultiheadAttention(probe, h, h)`` under torch.export, whose
    packed input projection splits ``[E, 2E]`` (by the layer's ``embed_dim``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn = nn.Linear(8, 32), nn.MultiheadAttention(32, 4, batch_first=True)
        self.probe = nn.Parameter(torch.randn(1, 1, 32))

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it
            x = x.contiguous()
        h = self.inp(x)
        return self.attn(self.probe.repeat(x.shape[0], 1, 1), h, h)[0]


def test_a_split_into_unequal_attribute_sizes_pins_only_its_axis() -> None:
    """The split rule tied parts of unequal sizes and failed ("rule split failed": every axis
    the split touches pinned, the embedding's channels of SigLIP's vision tower included). The
    split axis pins; the others link as for any split."""
    torch.manual_seed(0)
    plan = skg.plan(ProbeAttention().eval(), torch.randn(2, 5, 8))
    reasons = [g.reason or "" for g in plan.groups]
    assert not any("failed" in r for r in reasons), reasons
    assert any(r.startswith("split with fixed sizes") for r in reasons)


PARTS = {
    "slices": lambda s, h: (h[:, : s.n_d], h[:, s.n_d :]),
    "split([n, shape - n])": lambda s, h: torch.split(h, [s.n_d, h.shape[1] - s.n_d], dim=1),
    "split([n, size(-1) - n])": lambda s, h: h.split([s.n_d, h.size(-1) - s.n_d], -1),
}


class DecisionAttention(nn.Module):
    """TabNet's split of a layer's output into its decision and attention parts."""

    def __init__(self, spelling: str, n_d: int) -> None:
        super().__init__()
        self.spelling, self.n_d = spelling, n_d
        self.fc, self.decide, self.attend = nn.Linear(10, 16), nn.Linear(n_d, 2), nn.Linear(16 - n_d, 2)

    def forward(self, x: Tensor) -> Tensor:
        d, a = PARTS[self.spelling](self, self.fc(x))
        return self.decide(torch.relu(d)) + self.attend(a)


@pytest.mark.parametrize("n_d", [6, 8])
@pytest.mark.parametrize("spelling", list(PARTS))
def test_a_split_into_a_counted_part_and_the_rest_plans_as_slices(spelling: str, n_d: int, tmp_path: Path) -> None:
    """``torch.split(h, [self.n_d, h.shape[1] - self.n_d])`` pinned ("fixed sizes [8, sub]")
    where ``h[:, :self.n_d], h[:, self.n_d:]`` prune: the first size counts its part, the
    second is the rest of the axis and moves with it (tied halves where ``n_d`` is half)."""
    x = torch.randn(4, 10)
    torch.manual_seed(0)
    claims = _claims(DecisionAttention(spelling, n_d), x)
    assert claims == _claims(DecisionAttention("slices", n_d), x)
    assert claims == ([(8, True)] if n_d == 8 else [(6, True), (10, True)])
    check_oracle(DecisionAttention(spelling, n_d), x, tmp_path)


class MaskedConv(nn.Conv2d):
    """PixelCNN's masked convolution: ``F.conv2d(x, self.weight * self.mask)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        mask = torch.ones_like(self.weight)
        mask[:, :, 2], mask[:, :, 1, 2:] = 0, 0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=1)


def test_weights_multiplied_by_a_finite_buffer_keep_their_zeros(tmp_path: Path) -> None:
    """Two masked layers back to back lost the claim between them: ``weight * mask`` was not
    known to keep the weight's zeros. A product with a buffer whose values are all finite does
    (on meta weights the values are unknown: the claim is not made)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)

    def net() -> nn.Module:
        return nn.Sequential(MaskedConv(3, 8), nn.ReLU(), MaskedConv(8, 8), nn.ReLU(), MaskedConv(8, 4))

    assert _claims(net(), x) == [(8, True), (8, True)]
    assert _claims(net().to("meta"), x.to("meta")) == [(8, False), (8, False)]
    check_oracle(net(), x, tmp_path)


# -- the adversary of this round's own changes ------------------------------------------------


def _pool_groups(t: Tensor, training: bool) -> Tensor:
    """A helper handed the mode: in training it reads the width it unpacked."""
    b, c = t.shape
    if training:
        return t.view(b, c // 4, 4).mean(-1).repeat(1, 4)
    return t


class ModeArgument(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it (the eval forward only)
            x = x.contiguous()
        return self.b(_pool_groups(torch.relu(self.a(x)), self.training))


def test_a_flag_argument_is_not_folded() -> None:
    """A first version folded ``if training:`` on the argument ``self.training``: the width the
    train branch reads counted as unused, the group pruned, and the pruned model failed in
    ``train()``. Only ints and None are folded (a flag, a rate or a string differs by mode)."""
    torch.manual_seed(0)
    assert _claims(ModeArgument(), torch.randn(3, 8)) == []


@pytest.mark.parametrize("layer", ["F.pairwise_distance", "nn.PairwiseDistance"])
def test_a_distance_keeping_its_axis_links_the_rest(layer: str) -> None:
    """``pairwise_distance(..., keepdim=True)`` put the axes one place off: the rule left an
    output axis unlinked and everything pinned."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.dist = nn.Linear(4, 8), nn.Linear(4, 8), nn.PairwiseDistance(keepdim=True)

        def forward(self, x: Tensor) -> Tensor:
            u, v = torch.relu(self.a(x)), self.b(x)
            d = nn.functional.pairwise_distance(u, v, keepdim=True) if layer.startswith("F.") else self.dist(u, v)
            return d.view(-1)

    torch.manual_seed(0)
    assert _claims(Net(), torch.randn(3, 4)) == [(8, False)]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_projected_lstm_under_export_reads_its_features(bidirectional: bool, tmp_path: Path) -> None:
    """An LSTM with ``proj_size`` has five weights per direction (``w_hr`` last): the rule took
    the reverse direction's input weight from the wrong place and failed (every axis pinned)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(16, 24)
            self.rnn = nn.LSTM(24, 12, num_layers=2, batch_first=True, bidirectional=bidirectional, proj_size=6)
            self.head = nn.Linear(6 * (1 + bidirectional), 5)

        def forward(self, x: Tensor) -> Tensor:
            if x.is_cuda:  # torch.export plans it
                x = x.contiguous()
            return self.head(self.rnn(self.pre(x))[0][:, -1])

    x = torch.randn(2, 7, 16)
    torch.manual_seed(0)
    assert _claims(Net(), x) == [(24, True)]
    check_oracle(Net(), x, tmp_path)


class SharedQuery(nn.Module):
    """Two attention layers; ``tie`` shares a query weight across them or with the keys."""

    def __init__(self, tie: str) -> None:
        super().__init__()
        self.inp, self.b1, self.b2, self.out = nn.Linear(16, 32), Attention(), Attention(), nn.Linear(32, 10)
        if tie == "layers":
            self.b2.q.weight = self.b1.q.weight
        elif tie == "keys":
            self.b1.k.weight = self.b1.q.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.b2(self.b1(self.inp(x))))


@pytest.mark.parametrize("tie", ["layers", "keys"])
def test_a_tied_query_weight_keeps_its_head_size(tie: str) -> None:
    """With ``head_dim=True`` a query weight shared by two layers made every prune fail (the
    scale named a tensor under its second name); one tied to the keys was untied by the
    compensation (the pruned model grew). Scaling a tied tensor scales the other: that
    attention's head size pins (no head_dim group), and every prune shrinks the model."""
    torch.manual_seed(0)
    model, x = SharedQuery(tie).eval(), torch.randn(2, 5, 16)
    plan = skg.plan(model, x, head_dim=True)
    head_sizes = [g.name for g in plan.prunable if g.name.endswith(":head_dim")]
    assert head_sizes == ([] if tie == "layers" else ["b2.q:out:head_dim"])
    for g in plan.prunable:
        result = skg.prune(model, plan, masks={g.name: torch.arange(g.size) == 1})
        assert result.report.params_after < result.report.params_before, g.name


ROTATIONS = {
    "x[..., ::2], x[..., 1::2]": lambda h: (h[..., ::2], h[..., 1::2]),
    "x[..., 0::2], x[..., 1:16:2]": lambda h: (h[..., 0::2], h[..., 1:16:2]),
    "unflatten(-1, (-1, 2)).unbind(-1)": lambda h: h.unflatten(-1, (-1, 2)).unbind(-1),
}


class RotateEveryTwo(nn.Module):
    """GPT-J's ``rotate_every_two`` on a layer's channels."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x)
        x1, x2 = ROTATIONS[self.spelling](h)
        return self.l2(h * 0.5 + torch.stack((-x2, x1), dim=-1).flatten(-2))


@pytest.mark.parametrize("spelling", list(ROTATIONS))
def test_strided_slices_prune_in_blocks(spelling: str, tmp_path: Path) -> None:
    """``h[..., ::2]`` and ``h[..., 1::2]`` pinned ("slicing at getitem") where the
    ``unflatten`` spelling pruned channel pairs: a slice taking one index in every ``step`` of
    the whole axis prunes it in blocks of ``step``, as ``view(..., -1, step)[..., start]``."""
    x = torch.randn(2, 5, 6)
    torch.manual_seed(0)
    assert _claims(RotateEveryTwo(spelling), x) == [(8, True)]
    check_oracle(RotateEveryTwo(spelling), x, tmp_path)


@pytest.mark.parametrize(("index", "claims"), [("::3", [(4, True)]), ("1::3", [(4, True)]), ("1:10:3", []), ("2::2", [])])
def test_only_a_slice_of_the_whole_axis_in_steps_prunes_in_blocks(index: str, claims: list, tmp_path: Path) -> None:
    """``h[:, 1::3]`` of 12 channels is one of each block of 3; ``h[:, 2::2]`` skips the first
    block and ``h[:, 1:10:3]`` stops short (their bounds would not follow): those pin."""
    start, stop, step = (int(v) if v else None for v in index.split(":"))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width = len(range(12)[start:stop:step])
            self.c1, self.c2 = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(width, 5, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.c2(torch.relu(self.c1(x))[:, start:stop:step])

    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    assert _claims(Net(), x) == claims
    if claims:
        check_oracle(Net(), x, tmp_path)


class TrainOnlyCode(ModeArgument):
    """Code only the train forward runs, reading the width it unpacks there."""

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it (the eval forward only)
            x = x.contiguous()
        h = torch.relu(self.a(x))
        if self.training:
            b, c = h.shape
            h = h.view(b, c // 4, 4).mean(-1).repeat(1, 4)
        return self.b(h)


def test_code_only_training_runs_is_tried_under_export() -> None:
    """torch.export traces the eval forward only: ``if self.training: h.view(b, c // 4, 4)``
    was never planned, the group pruned, and the pruned model failed in ``train()``. The export
    probe runs the pruned copies' train forwards (on meta copies) and pins where only they
    fail; ``prune`` checks the same before it returns."""
    torch.manual_seed(0)
    plan = skg.plan(TrainOnlyCode().eval(), torch.randn(3, 8))
    assert plan.prunable == []
    assert "train forward fails" in (plan.group("a:out").reason or "")
