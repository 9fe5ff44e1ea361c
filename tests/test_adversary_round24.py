"""Round 24 of the adversaries (issue 7)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_untouched, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg


class TrainOnlyOnCpu(nn.Module):
    """Code only training runs, which also makes a tensor on the CPU (no meta copy runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # torch.export plans it (the eval forward only)
            x = x.contiguous()
        h = torch.relu(self.a(x))
        if self.training:
            b, c = h.shape
            h = h.view(b, c // 4, 4).mean(-1).repeat(1, 4) + torch.arange(c) * 0.0
        return self.b(h)


def test_train_only_code_is_tried_with_weights_where_meta_cannot_run_it() -> None:
    """The model's own train forward fails on a meta copy (``torch.arange(c)`` is made on the
    CPU): the pruned copies' train forwards were not tried, and the pruned model failed in
    ``train()``. They run on copies with their weights and the real inputs now."""
    torch.manual_seed(0)
    model = TrainOnlyOnCpu().eval()
    plan = skg.plan(model, torch.randn(3, 8))
    assert plan.prunable == []
    assert "train forward fails" in (plan.group("a:out").reason or "")


class TrainOnlyThirds(TrainOnlyOnCpu):
    """Training views the width as three parts: the probe's count (3 of 18) runs, 11 does not."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 18), nn.Linear(18, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            x = x.contiguous()
        h = torch.relu(self.a(x))
        if self.training:
            b, c = h.shape
            h = h.view(b, 3, -1).flatten(1) + torch.arange(c) * 0.0
        return self.b(h)


def test_prune_tries_train_only_code_with_weights() -> None:
    """``prune`` checks the pruned model's train forward with its weights where a meta copy of
    the model cannot run it, and refuses a count the training code cannot take."""
    torch.manual_seed(0)
    model = TrainOnlyThirds().eval()
    plan = skg.plan(model, torch.randn(3, 8))
    assert [g.name for g in plan.prunable] == ["a:out"]
    with pytest.raises(skg.SparseKitError, match="train forward fails"):
        skg.prune(model, plan, masks={"a:out": torch.arange(18) < 7})
    small = skg.prune(model, plan, masks={"a:out": torch.arange(18) < 9}).model.train()  # keeps 9
    assert small(torch.randn(3, 8)).shape == (3, 4)


# -- a momentum encoder updated past the graph --------------------------------------------------


class MomentumEncoder(nn.Module):
    """MoCo/BYOL: the key encoder follows the query encoder's weights, written in forward."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.q = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16))
        self.k = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        with torch.no_grad():
            pairs = list(zip(self.k.parameters(), self.q.parameters()))
            if self.spelling == "add":
                for pk, pq in pairs:
                    pk.mul_(0.99).add_(pq, alpha=0.01)
            elif self.spelling == "lerp":
                for pk, pq in pairs:
                    pk.lerp_(pq, 0.01)
            elif self.spelling == "foreach":
                ks, qs = [p for p, _ in pairs], [p for _, p in pairs]
                torch._foreach_mul_(ks, 0.99)
                torch._foreach_add_(ks, qs, alpha=0.01)
            elif self.spelling == "data":
                for pk, pq in pairs:
                    pk.data = pk.data * 0.99 + pq.data * 0.01
            else:  # "transposed": a value computed from the other on the way
                for pk, pq in pairs:
                    pk.add_(pq.flip(0) * 0.01)
            k = F.normalize(self.k(b), dim=1)
        return F.normalize(self.q(a), dim=1) @ k.T / 0.07


@pytest.mark.parametrize("spelling", ["add", "lerp", "foreach", "data", "transposed"])
def test_a_write_from_another_parameter_links_or_pins_them(spelling: str) -> None:
    """``for pk, pq in zip(k.parameters(), q.parameters()): pk.mul_(m).add_(pq, ...)`` carried
    ``q``'s weights into ``k``'s past the graph: ``q``'s hidden group was prunable (and
    zero-invariant) without ``k``'s, and a prune kept ``k`` whole, the pruned ``q`` broadcast
    into it (15% off its masked model) or failed. Read as they are, the two move together;
    computed on the way (or swapped in through ``.data``), both pin."""
    torch.manual_seed(0)
    model, x = MomentumEncoder(spelling).eval(), (torch.randn(4, 10), torch.randn(4, 10))
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    linked = spelling in ("add", "lerp", "foreach")
    groups = {g.name: g for g in plan.groups}
    assert groups["q.0:out"].prunable == linked
    assert not any(m.param.startswith("k.") for g in plan.prunable for m in g.members) or linked
    if linked:
        assert {m.param for m in groups["q.0:out"].members} >= {"q.0.weight", "k.0.weight"}
        for keep in (16, 1):
            mask = torch.arange(32) >= keep
            dense = copy.deepcopy(model)
            skg.bind(plan, dense)["q.0:out"].apply_mask(mask)
            small = skg.prune(model, plan, masks={"q.0:out": mask}).model
            assert small.k[0].weight.shape == small.q[0].weight.shape == (keep, 10)
            with torch.no_grad():
                assert torch.allclose(dense(*x), small(*x), atol=1e-5)


# -- a parameter's size as a float --------------------------------------------------------------


@pytest.mark.parametrize("number", ["n / 1000", "n * 0.001", "1 / n"])
@pytest.mark.parametrize("route", ["parameters", "sum"])
def test_a_parameter_size_made_a_float_costs_the_claim(route: str, number: str) -> None:
    """``sum(p.numel() for p in self.parameters())`` then ``out * (n / 1000)``: the float an op
    took was followed only for a layer's attributes, and the group was claimed zero-invariant
    (masked and pruned 50% apart)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Linear(10, 32), nn.Linear(32, 5)

        def forward(self, x: Tensor) -> Tensor:
            n = sum(p.numel() for p in self.parameters()) if route == "sum" else next(self.a.parameters()).shape[0]
            scale = {"n / 1000": lambda: n / 1000.0, "n * 0.001": lambda: n * 0.001, "1 / n": lambda: 1.0 / n}[number]()
            return self.o(F.relu(self.a(x))) * scale

    plan = skg.plan(Net().eval(), torch.randn(4, 10))
    assert not plan.group("a:out").zero_invariant


# -- the model's own __call__ -------------------------------------------------------------------


class CentredByCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor, center: bool = False) -> Tensor:
        h = torch.relu(self.a(x))
        return self.b(h - h.mean(-1, keepdim=True) if center else h)

    def __call__(self, x: Tensor) -> Tensor:
        return super().__call__(x, center=True)


class CentredByPartial(CentredByCall):
    __call__ = functools.partialmethod(nn.Module.__call__, center=True)  # type: ignore[assignment]


@pytest.mark.parametrize("model", [CentredByCall, CentredByPartial])
def test_the_models_own_call_pins(model: type[nn.Module]) -> None:
    """The tracers trace ``forward``; an override of the model's ``__call__`` passing
    ``center=True`` ran a centring no plan saw (a zero-invariance claim 25% off). Every axis
    pins, naming it; the same class as a submodule is traced through its ``__call__``."""
    plan = skg.plan(model().eval(), torch.randn(3, 8))
    assert plan.prunable == []
    assert "__call__" in (plan.group("a:out").reason or "")
    inner = nn.Sequential(model(), nn.Linear(4, 4)).eval()
    check = skg.plan(inner, torch.randn(3, 8))
    assert check.group("0.a:out").prunable and not check.group("0.a:out").zero_invariant


# -- layers and tensors held past the module tree ------------------------------------------------


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.g = nn.Parameter(torch.rand(16) + 0.5)
        self.act: Callable[[Tensor], Tensor] = torch.relu

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.act(torch.relu(self.a(x))))


def _scaled(kind: str) -> nn.Module:
    m = Scaled()
    g = m.g
    if kind == "closure_self":
        m.act = lambda t: t * m.g
    elif kind == "closure_param":
        m.act = lambda t: t * g
    elif kind == "partial":
        m.act = functools.partial(torch.mul, other=g)
    elif kind == "default":
        m.act = lambda t, w=g: t * w
    elif kind == "dict":
        m.extra = {"g": m.g}
        m.act = lambda t: t * m.extra["g"]
    elif kind == "list":
        m.extra = [m.g]
        m.act = lambda t: t * m.extra[0]
    else:  # "instance_forward"
        m.forward = lambda x: m.b(torch.tanh(m.a(x)) * m.g)
    return m


CLOSURES = ["closure_self", "closure_param", "partial", "default", "dict", "list", "instance_forward"]


@pytest.mark.parametrize("kind", CLOSURES)
def test_layers_held_in_closures_and_containers_follow_the_copy(kind: str) -> None:
    """``m.forward = lambda x: m.b(m.a(x))`` and ``self.act = lambda t: t * self.g``: deepcopy
    copies functions as themselves, so the pruned model ran the user's dense layers (its
    outputs equal to the unpruned model's, whatever its own weights), or held the old ``g``
    and failed. Functions, partials and containers holding the model's layers and tensors
    follow the copy, and surgery's new tensors."""
    torch.manual_seed(0)
    model, x = _scaled(kind).eval(), torch.randn(3, 8)
    plan = skg.plan(model, x)
    assert [g.name for g in plan.prunable] == ["a:out"]
    mask = torch.arange(16) % 3 == 0
    torch.manual_seed(0)
    dense = _scaled(kind).eval()  # a deep copy's lambda would run ``model``
    skg.bind(plan, dense)["a:out"].apply_mask(mask)
    small = skg.prune(model, plan, masks={"a:out": mask}).model
    with torch.no_grad():
        assert torch.allclose(dense(x), small(x), atol=1e-6)
        for p in small.parameters():
            p.zero_()
        assert small(x).abs().max() == 0  # the small model computes with its own weights
        assert model(x).abs().max() > 0


def test_a_layer_with_a_forward_of_its_own_instance_pins() -> None:
    """``lin.forward = lambda x: F.linear(x.flip(-1), ...)``: ``lin(x)`` runs it, not its
    class's forward, which a leaf's rule models: what it touches pins (or is traced)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    lin = model[2]
    lin.forward = lambda x: F.linear(x.flip(-1), lin.weight, lin.bias)
    plan = skg.plan(model, torch.randn(3, 8))
    assert plan.prunable == []


# -- the model as it was: its own train(), plain objects it holds --------------------------------


class Options:
    def __init__(self) -> None:
        self.deploy = False
        self.seen: dict[object, int] = {}


class FoldsOnEval(nn.Module):
    """A ``train()`` that folds a scale into the conv on the first ``eval()``, and a plain
    object whose dict the forward fills."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("scale", torch.full((8,), 2.0))
        self.opts, self.folded = Options(), False

    def train(self, mode: bool = True) -> FoldsOnEval:
        super().train(mode)
        if not mode and not self.folded:
            with torch.no_grad():
                self.conv.weight.mul_(self.scale.view(-1, 1, 1, 1))
                self.conv.bias.mul_(self.scale)
            self.folded = self.opts.deploy = True
        return self

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        self.opts.seen[h.shape[1]] = 1
        if not self.folded:
            h = h * self.scale.view(1, -1, 1, 1)
        return self.head(F.relu(h))


def test_plan_and_prune_leave_what_the_models_own_train_and_forward_change() -> None:
    """``plan`` switches the model to eval with ``model.train(False)``: a ``train()`` of the
    user's that folds a scale into a weight in place left the weight doubled (and the flag
    saying so put back: the user's outputs 1.8 off), and the forward's write into a plain
    object's dict left a Proxy there (the model no longer deep-copied). Both are put back."""
    torch.manual_seed(0)
    model, x = FoldsOnEval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    model.opts.seen.clear()
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    assert not model.folded and not model.opts.deploy and model.opts.seen == {}
    skg.prune(model, plan, ratio=0.5)
    assert_untouched(model, before, "prune")
    assert not model.opts.deploy and model.opts.seen == {}
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    copy.deepcopy(model)


# -- features returned in training only ----------------------------------------------------------


class TrainFeature(nn.Module):
    def __init__(self, export: bool) -> None:
        super().__init__()
        self.export = export
        self.a, self.b, self.o = nn.Linear(10, 32), nn.Linear(32, 16), nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.export and x.is_cuda:  # torch.export plans it (the eval forward only)
            x = x.contiguous()
        g = F.relu(self.b(F.relu(self.a(x))))
        y = self.o(g)
        if self.training:
            return y, g  # for a loss on the features
        return y


@pytest.mark.parametrize("export", [False, True])
def test_a_feature_returned_in_training_only_pins(export: bool) -> None:
    """``if self.training: return y, g``: the train forward runs the same ops, so its graph was
    not added to the plan, and ``g``'s channels were prunable: the pruned model's train outputs
    changed shape. Torch.fx's train graph is added where it returns other values; under
    torch.export, the probe compares the train outputs' shapes."""
    plan = skg.plan(TrainFeature(export).eval(), torch.randn(4, 10))
    assert [g.name for g in plan.prunable] == ["a:out"]
    assert not plan.group("b:out").prunable


# -- batch statistics of one value ---------------------------------------------------------------


def test_a_batch_norm_over_another_layers_features_keeps_two() -> None:
    """``BatchNorm1d(points)`` over ``(1, points, features)``: traced in eval (stored
    statistics), nothing kept a second feature, and the pruned model failed in ``train()``
    keeping one (batch statistics over one value per channel)."""

    class PointNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.bn, self.out = nn.Linear(3, 16), nn.BatchNorm1d(4), nn.Linear(16, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(F.relu(self.bn(self.lin(x))))

    plan = skg.plan(PointNorm().eval(), torch.randn(1, 4, 3))
    assert plan.group("lin:out").prunable and plan.group("lin:out").min_keep == 2
    small = skg.prune(PointNorm().eval(), plan, masks={"lin:out": torch.arange(16) >= 2}).model.train()
    assert small(torch.randn(1, 4, 3)).shape == (1, 4, 2)


def test_ignore_a_layer_without_parameters_pins_what_it_computes() -> None:
    """``ignore=["1"]`` naming a layer without parameters was refused ("neither a module nor a
    parameter"): it pins the values the layer computes."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    plan = skg.plan(model, torch.randn(2, 4), ignore=["1"])
    assert plan.prunable == [] and "ignored by user (1)" in (plan.group("0:out").reason or "")
    with pytest.raises(skg.PlanError, match="'9' is neither"):
        skg.plan(model, torch.randn(2, 4), ignore=["9"])


def test_bind_names_a_group_it_has_no_coupling_for() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    couplings = skg.bind(skg.plan(model, torch.randn(2, 4)), model)
    with pytest.raises(skg.PlanError, match="no coupling for group 'nope'.*0:out"):
        couplings["nope"]
    with pytest.raises(KeyError):  # a mapping's error too
        couplings["nope"]


# -- Hugging Face: the kernels and caches the plan's graph does not hold ------------------------


def test_experts_pruned_to_an_unaligned_width_run() -> None:
    """transformers' default experts kernel (``grouped_mm``) needs 16-byte strides: a plan
    made of ``batched_mm`` pruned expert widths to 13 of 32, and the pruned model failed at its
    first call. Such a model runs ``batched_mm``; aligned widths keep ``grouped_mm``."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3MoeConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=128, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model, x = transformers.Qwen3MoeModel(config).eval(), {"input_ids": torch.randint(0, 100, (2, 8))}
    plan = skg.plan(model, x)
    experts = [f"layers.0.mlp.experts.gate_up_proj:1@{e}" for e in range(4)]
    assert all(plan.group(n).prunable for n in experts)
    for keep, kernel in ((16, "grouped_mm"), (13, "batched_mm")):
        masks = {n: torch.arange(32) >= keep for n in experts}
        small = skg.prune(model, plan, masks=masks).model.eval()
        assert small.config._experts_implementation == kernel
        dense = copy.deepcopy(model)
        couplings = skg.bind(plan, dense)
        for n, m in masks.items():
            couplings[n].apply_mask(m)
        with torch.no_grad():
            assert torch.allclose(dense(**x).last_hidden_state, small(**x).last_hidden_state, atol=1e-5)
    assert model.config._experts_implementation == "grouped_mm"


def test_a_state_sized_by_the_config_pins_what_it_holds() -> None:
    """RWKV in eval allocates its recurrent state from ``config.hidden_size`` when the cache is
    on (its config's default), a forward the plan (``use_cache=False``) did not hold: pruning
    the attention's width made the pruned model fail in eval. The probe runs the eval forward
    with its cache too."""
    transformers = pytest.importorskip("transformers")
    config = transformers.RwkvConfig(
        hidden_size=32, num_hidden_layers=2, vocab_size=128, attention_hidden_size=32, intermediate_size=64, context_length=16
    )
    torch.manual_seed(0)
    model, x = transformers.RwkvModel(config).eval(), {"input_ids": torch.randint(0, 100, (2, 8))}
    plan = skg.plan(model, x)
    assert not plan.group("blocks.0.attention.key:out").prunable
    assert "eval forward with its cache" in (plan.group("blocks.0.attention.key:out").reason or "")
    small = skg.prune(model, plan, ratio=0.5).model.eval()
    with torch.no_grad():
        assert small(**x).last_hidden_state.shape == (2, 8, 32)


# -- torch.func.functional_call over a container -------------------------------------------------


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


class Substituted(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.net, self.other = kind, _mlp(), _mlp()
        self.register_buffer("shift", torch.rand(16))

    def forward(self, x: Tensor) -> Tensor:
        p = dict(self.net.named_parameters())
        if self.kind == "plus_one":
            p = {k: v + 1 for k, v in p.items()}
        elif self.kind == "transposed":
            p["2.weight"] = p["2.weight"].T
        elif self.kind == "bias_shift":
            p["0.bias"] = p["0.bias"] + self.shift
        else:  # "soup": the average of two models' weights
            q = dict(self.other.named_parameters())
            p = {k: (v + q[k]) / 2 for k, v in p.items()}
        return torch.func.functional_call(self.net, p, (x,))


@pytest.mark.parametrize("kind", ["plus_one", "transposed", "bias_shift", "soup"])
def test_functional_call_over_a_container_plans_the_tensors_it_is_given(kind: str) -> None:
    """``functional_call(self.net, {k: v + 1 ...}, x)``: the leaves of ``net`` planned as if they
    ran their own parameters (a zero-invariance claim 50% off; ``W.T`` for a square layer's
    weight, or a model soup ``(a + b) / 2``, a prune that failed or broadcast). A layer whose
    tensors were swapped is traced through, with the tensors it is given."""
    torch.manual_seed(0)
    model, x = Substituted(kind).eval(), torch.randn(4, 8)
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    assert kind != "plus_one" or not any(g.zero_invariant for g in plan.prunable)
    for g in plan.prunable:
        mask = torch.arange(g.size) >= max(g.min_keep or 1, g.size // 3)
        small = skg.prune(model, plan, masks={g.name: mask}).model.eval()
        assert small(x).shape == (4, 4)
        if g.zero_invariant:
            torch.manual_seed(0)
            dense = copy.deepcopy(model)
            skg.bind(plan, dense)[g.name].apply_mask(mask)
            with torch.no_grad():
                assert torch.allclose(dense(x), small(x), atol=1e-5)


def test_bind_leaves_out_an_empty_member() -> None:
    """A ``Linear(16, 0)`` head reads the hidden channels: ``bind`` divided by its zero size."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.empty = nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(16, 0)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = torch.relu(self.a(x))
            return self.b(h), self.empty(h)

    model = Net().eval()
    plan = skg.plan(model, torch.randn(3, 4))
    couplings = skg.bind(plan, model)
    couplings["a:out"].apply_mask(torch.arange(16) < 4)
    assert model.a.weight[:4].abs().sum() == 0 and model.b.weight[:, :4].abs().sum() == 0


# -- found by the adversary of this round's changes ----------------------------------------------


class ForeachMomentum(nn.Module):
    """A momentum update with ``torch._foreach_*`` in a ``@torch.no_grad()`` method."""

    def __init__(self, train_only: bool = False) -> None:
        super().__init__()
        self.train_only = train_only
        self.q = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.k = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    @torch.no_grad()
    def update(self) -> None:
        ks, qs = list(self.k.parameters()), list(self.q.parameters())
        torch._foreach_mul_(ks, 0.99)
        torch._foreach_add_(ks, qs, alpha=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training or not self.train_only:
            self.update()
        return self.q(x), self.k(x)


@pytest.mark.parametrize("train_only", [False, True])
def test_a_foreach_momentum_update_leaves_the_model_and_ties_the_encoders(train_only: bool) -> None:
    """The eager check stopped a forward before writing a parameter, but a ``_foreach_*`` write
    takes a list: it ran, and ``plan`` left one momentum step in the user's key encoder. Done
    in training only, the train graph (the same ops) was not added, and the writes it made
    past the graph were lost: the encoders planned as separate zero-invariant groups."""
    torch.manual_seed(0)
    model = ForeachMomentum(train_only).eval()
    before = fingerprint(model)
    plan = skg.plan(model, torch.randn(4, 8))
    assert_untouched(model, before, "plan")
    group = plan.group("q.0:out")  # pinned (torch.export: no rule for ``_foreach_*``), or tied to the key encoder
    assert not group.prunable or ({"q.0.weight", "k.0.weight"} <= {m.param for m in group.members} and not group.zero_invariant)


def test_a_parameter_transposed_in_place_pins() -> None:
    """``b.weight.copy_(a.weight); b.weight.t_()``: ``t_`` was read as a transposed copy, and the
    layers reading ``b.weight`` later got the unswapped axes (a prune that failed)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                self.b.weight.copy_(self.a.weight)
                self.b.weight.t_()
            return self.c(torch.relu(self.a(x))), self.d(torch.relu(self.b(x)))

    model = Net().eval()
    before = fingerprint(model)
    assert skg.plan(model, torch.randn(4, 8)).prunable == []
    assert_untouched(model, before, "plan")


def test_a_list_a_closure_holds_is_put_back() -> None:
    """``cache = []; self.act = lambda t: cache.append(t.detach()) or t``: the trace left a
    Proxy in the user's list, and ``prune`` failed with torch.fx's own error."""
    cache: list[Tensor] = []
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    model[1].forward = lambda t: cache.append(t.detach()) or torch.relu(t)
    plan = skg.plan(model, torch.randn(3, 4))
    assert cache == []
    skg.prune(model, plan, ratio=0.5)
    assert cache == []


def test_a_train_override_that_fails_on_the_pruned_copy_is_refused_cleanly() -> None:
    """A ``train()`` writing ``a.weight.flip(0)`` into a buffer: surgery switched the pruned
    copy to eval with ``eval()``, running it on the cut sizes (a raw ``RuntimeError``)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = nn.Linear(8, 16), nn.Linear(16, 4)
            self.register_buffer("eff", torch.zeros(16, 8))

        def train(self, mode: bool = True) -> Net:
            super().train(mode)
            with torch.no_grad():
                self.eff.copy_(self.a.weight.flip(0))
            return self

        def forward(self, x: Tensor) -> Tensor:
            return self.c(torch.relu(F.linear(x, self.eff, self.a.bias)))

    model = Net().eval()
    plan = skg.plan(model, torch.randn(4, 8))
    with pytest.raises(skg.SparseKitError, match=r"train\(False\) raised"):
        skg.prune(model, plan, ratio=0.5)


def test_attribute_dicts_and_the_empty_name() -> None:
    """A layer holding an ``AttrDict`` (``__getattr__ = dict.__getitem__``) made ``plan`` raise
    ``KeyError('__func__')``; ``ignore=""`` pinned nothing where ``ignore=[""]`` pins all."""

    class AttrDict(dict):
        __getattr__ = dict.__getitem__

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    model[0].cfg = AttrDict(hidden=8)
    assert [g.name for g in skg.plan(model, torch.randn(3, 4)).prunable] == ["0:out"]
    assert skg.plan(model, torch.randn(3, 4), ignore="").prunable == []


class StatefulCell(nn.Module):
    """A recurrent state kept as a plain tensor attribute between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.rec, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.h: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.h if self.h is not None else torch.zeros(x.shape[0], 16)
        h = torch.tanh(self.inp(x) + self.rec(h))
        self.h = h.detach()
        return self.out(h)


def test_a_state_kept_as_a_tensor_attribute_plans() -> None:
    """Once the model had run, ``self.h`` held a tensor, torch.fx read it as a ``get_attr``, and
    the shape pass read the attribute after the forward had set it to a traced value: it
    traced the forward again at every node, and ``plan`` never returned. The value read is
    kept on its node; the state's channels pin (a constant of the trace)."""
    torch.manual_seed(0)
    model, x = StatefulCell().eval(), torch.randn(4, 8)
    with torch.no_grad():
        model(x)
    state = model.h
    plan = skg.plan(model, x)
    assert model.h is state
    assert not plan.group("inp:out").prunable
