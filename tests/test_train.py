"""ProximalStep: group lasso over a plan's channels after each optimizer step (single process)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph import ProximalStep, SparseKitError
from sparsekit_graph.train import LamSchedule, ProxStats


class _Net(nn.Module):
    """conv-bn-relu, a residual conv (one weight on both axes of one group), conv, flatten, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, 8, 8, 8)
        h = F.relu(h + self.bn2(self.conv2(h)))
        h = F.relu(self.conv3(h))  # (B, 12, 8, 8)
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)  # (B, 192)
        return self.fc2(F.relu(self.fc1(h)))


X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(4))
OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
}


@pytest.fixture(scope="module")
def net_plan() -> skg.Plan:
    return skg.plan(_Net(), X)


def _fresh(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    F.cross_entropy(model(X), Y).backward()
    opt.step()


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_lam_zero_changes_nothing(net_plan: skg.Plan, kind: str) -> None:
    plain, proxed = _fresh(), _fresh()
    opt_a, opt_b = OPTIMIZERS[kind](plain), OPTIMIZERS[kind](proxed)
    prox = ProximalStep(net_plan, proxed, opt_b, lam=0.0)
    ramp = ProximalStep(net_plan, proxed, opt_b, lam=5.0, schedule=LamSchedule.warmup(3))  # factor 0 for 3 steps
    for _ in range(3):
        _train_step(plain, opt_a)
        _train_step(proxed, opt_b)
        assert prox.step() and ramp.step()
    assert _same(_params(plain), _params(proxed))
    assert prox.stats().lam == 0.0 and ramp.steps == 3


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_large_lam_zeroes_every_group_exactly(net_plan: skg.Plan, kind: str) -> None:
    model = _fresh()
    opt = OPTIMIZERS[kind](model)
    prox = ProximalStep(net_plan, model, opt, lam=1e6)
    _train_step(model, opt)
    prox.step()
    stats = prox.stats()
    penalised = [g for g in net_plan.groups if g.prunable and g.zero_invariant]
    assert stats.groups == len(penalised) == stats.groups_zero == stats.groups_sparse
    assert stats.channels_zero == stats.channels == sum(g.size for g in penalised)
    assert stats.removable == stats.channels - len(penalised)  # one channel kept per group
    params = dict(model.named_parameters())
    for g in penalised:
        for m in g.members:
            if m.param in params:
                assert params[m.param].narrow(m.axis, m.start, m.stop - m.start).eq(0).all(), m.param
    masks = prox.masks()
    assert set(masks) == {g.name for g in penalised}
    assert all(not bool(mk[0]) and bool(mk[1:].all()) for mk in masks.values())


def _kill_half(plan: skg.Plan) -> dict[str, Tensor]:
    """Per-channel weights: huge on the odd channels of every group, default-sized elsewhere."""
    out = {}
    for g in plan.groups:
        if g.prunable and g.zero_invariant:
            w = torch.full((g.size,), 1e-3)
            w[1::2] = 1e6
            out[g.name] = w
    return out


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_pruning_the_zeroed_channels_keeps_the_trained_outputs(net_plan: skg.Plan, kind: str) -> None:
    model = _fresh()
    opt = OPTIMIZERS[kind](model)
    prox = ProximalStep(net_plan, model, opt, lam=1.0, weights=_kill_half(net_plan))
    for _ in range(4):
        _train_step(model, opt)
        prox.step()
    masks = prox.masks()  # Adam's metric may also kill a channel whose gradient is zero (a dead ReLU)
    assert all(bool(mk[1::2].all()) and not bool(mk[0::2].all()) for mk in masks.values())
    result = skg.prune(model, net_plan, masks=masks)
    assert result.report.params_after < result.report.params_before
    model.eval()
    result.model.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_dead_channels_stay_exactly_zero(net_plan: skg.Plan, kind: str) -> None:
    model = _fresh()
    opt = OPTIMIZERS[kind](model)
    prox = ProximalStep(net_plan, model, opt, lam=1.0, weights=_kill_half(net_plan))
    for _ in range(2):
        _train_step(model, opt)
        prox.step()
    dead = prox.masks()
    prox.lam = 0.0  # no more shrinkage: only the reset momentum keeps them at zero
    for _ in range(4):
        _train_step(model, opt)
        prox.step()
    assert {k: v.tolist() for k, v in prox.masks().items()} == {k: v.tolist() for k, v in dead.items()}


def test_without_the_momentum_reset_dead_channels_revive(net_plan: skg.Plan) -> None:
    """The control for the test above: SGD's momentum buffer moves a zeroed channel again."""
    model = _fresh()
    opt = OPTIMIZERS["sgd"](model)
    prox = ProximalStep(net_plan, model, opt, lam=1.0, weights=_kill_half(net_plan), reset_state=False)
    _train_step(model, opt)
    prox.step()
    before = prox.stats().channels_zero
    prox.lam = 0.0
    _train_step(model, opt)
    assert before > 0 and prox.stats().channels_zero < before


def _reference(plan: skg.Plan, model: nn.Module, opt: torch.optim.Optimizer, lam: float) -> None:
    """The engine's own soft_threshold, group by group in plan order, with Adam's denominators."""
    adam = isinstance(opt, torch.optim.Adam | torch.optim.AdamW)
    couplings = skg.bind(plan, model)
    lr = opt.param_groups[0]["lr"]
    for g in plan.groups:
        if not (g.prunable and g.zero_invariant):
            continue
        c = couplings[g.name]
        tau = torch.full(c.grid_shape, lam * lr * math.sqrt(c.numel_per_block()))
        conditioners = None
        if adam:
            conditioners = {}
            beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
            for spec in c.specs:
                state = opt.state[spec.view.param]
                h = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** float(state["step"]))).add_(eps)
                conditioners[spec] = spec.view.window(h)
        c.soft_threshold(tau, conditioners)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("lam", [1e-2, 0.3, 3.0])
def test_matches_the_engine_soft_threshold(kind: str, lam: float) -> None:
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    model = _Mlp()
    plan = skg.plan(model, x)
    opt = OPTIMIZERS[kind](model)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    ref = copy.deepcopy(model)
    ref_opt = OPTIMIZERS[kind](ref)
    ref_opt.load_state_dict(opt.state_dict())
    prox = ProximalStep(plan, model, opt, lam=lam)
    assert prox.step(force=True)
    _reference(plan, ref, ref_opt, lam)
    for (name, got), want in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7, msg=name)
        assert torch.equal(got == 0, want == 0), name


def _bisect(w: Tensor, h: Tensor, tau: float) -> Tensor:
    """float64 reference of the conditioned prox of one block: bisection on mu to machine precision."""
    w, h = w.double(), h.double()
    y = h * w
    if float(y.norm()) <= tau:
        return torch.zeros_like(w)
    lo, hi = 0.0, tau * float(h.max()) / (float(y.norm()) - tau)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid * float((y / (h + mid)).norm()) < tau:
            lo = mid
        else:
            hi = mid
    return y / (h + 0.5 * (lo + hi))


@pytest.mark.parametrize("ratio", [0.5, 0.999, 1.001, 1.01, 1.1, 2.0, 10.0, 1e3, 1e6])
def test_conditioned_prox_against_float64_bisection(ratio: float) -> None:
    """Each channel placed at ``||h w|| / tau = ratio`` with conditioners spread over 6 decades."""
    gen = torch.Generator().manual_seed(int(ratio * 1000) % 997)
    model = _Mlp()
    plan = skg.plan(model, torch.randn(2, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
    opt.step()
    for p in model.parameters():  # conditioners sqrt(v_hat) + eps from 1e-7 to 1e-1
        opt.state[p]["exp_avg_sq"].copy_(10 ** (-14 + 12 * torch.rand(p.shape, generator=gen)) * (1 - 0.999))
    couplings = skg.bind(plan, model)
    group = plan.group("fc1:out")
    c = couplings[group.name]
    h = {s: s.view.window(opt.state[s.view.param]["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.999)).add(1e-8) for s in c.specs}
    blocks_w, blocks_h = c.block_view().reshape(16, -1), c.block_view(h).reshape(16, -1)
    lr = 1e-2
    tau = (blocks_h * blocks_w).norm(dim=1).double() / ratio
    weights = {g.name: 0.0 for g in plan.groups if g.prunable}
    weights[group.name] = (tau / lr).float()  # lam = 1: tau = lr * weight
    want = [_bisect(blocks_w[i], blocks_h[i], float(weights[group.name][i]) * lr) for i in range(16)]
    prox = ProximalStep(plan, model, opt, lam=1.0, weights=weights)
    prox.step(force=True)
    got = c.block_view().reshape(16, -1)
    for i in range(16):
        if float(want[i].norm()) == 0:
            assert got[i].eq(0).all()
        else:
            err = float((got[i].double() - want[i]).norm() / want[i].norm())
            assert err < 1e-6, (i, err)


def test_euclidean_threshold_is_lam_lr_sqrt_numel(net_plan: skg.Plan) -> None:
    model = _fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    only = {g.name: 0.0 for g in net_plan.groups if g.prunable and g.zero_invariant and g.name != "fc1:out"}
    prox = ProximalStep(net_plan, model, opt, lam=0.01, weights=only)  # conv3:out would shrink fc1 first
    couplings = skg.bind(net_plan, model)
    c = couplings["fc1:out"]
    before = c.norms().reshape(-1)
    prox.step(force=True)
    after = c.norms().reshape(-1)
    tau = 0.01 * 0.1 * math.sqrt(c.numel_per_block())
    torch.testing.assert_close(before - after, torch.full_like(before, tau), rtol=1e-4, atol=1e-6)


def test_from_couplings_equals_the_plan(net_plan: skg.Plan) -> None:
    a, b = _fresh(), _fresh()
    opt_a, opt_b = OPTIMIZERS["adamw"](a), OPTIMIZERS["adamw"](b)
    couplings = skg.bind(net_plan, b)
    penalised = {g.name: couplings[g.name] for g in net_plan.groups if g.prunable and g.zero_invariant}
    prox_a = ProximalStep(net_plan, a, opt_a, lam=0.5)
    prox_b = ProximalStep.from_couplings(penalised, opt_b, lam=0.5)
    for _ in range(3):
        _train_step(a, opt_a)
        _train_step(b, opt_b)
        prox_a.step()
        prox_b.step()
    assert _same(_params(a), _params(b))
    assert prox_a.stats() == prox_b.stats()


def _skip_with_scaler(model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, bad: bool) -> None:
    opt.zero_grad()
    loss = F.cross_entropy(model(X), Y) * (math.inf if bad else 1.0)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_steps_a_grad_scaler_skips_are_skipped(net_plan: skg.Plan, fused: bool) -> None:
    model = _fresh()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    scaler = torch.amp.GradScaler("cpu")
    prox = ProximalStep(net_plan, model, opt, lam=0.5)
    _skip_with_scaler(model, opt, scaler, bad=False)
    assert prox.step() and prox.steps == 1
    before = _params(model)
    _skip_with_scaler(model, opt, scaler, bad=True)
    assert not prox.step() and prox.steps == 1
    assert _same(before, _params(model))
    _skip_with_scaler(model, opt, scaler, bad=False)
    assert prox.step() and prox.steps == 2 and not _same(before, _params(model))


def test_step_without_an_optimizer_step_does_nothing(net_plan: skg.Plan) -> None:
    model = _fresh()
    opt = OPTIMIZERS["sgd"](model)
    prox = ProximalStep(net_plan, model, opt, lam=10.0)
    before = _params(model)
    assert not prox.step()
    assert _same(before, _params(model)) and prox.steps == 0


def test_schedules() -> None:
    assert [LamSchedule.constant().factor(t) for t in (1, 100)] == [1.0, 1.0]
    assert [LamSchedule.warmup(2).factor(t) for t in (1, 2, 3, 50)] == [0.0, 0.0, 1.0, 1.0]
    assert [LamSchedule.linear(4).factor(t) for t in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert LamSchedule.linear(2, start=1.0, end=0.0).factor(1) == 0.5
    with pytest.raises(ValueError):
        LamSchedule(kind="cosine")


def test_schedule_drives_lam(net_plan: skg.Plan) -> None:
    model = _fresh()
    opt = OPTIMIZERS["sgd"](model)
    prox = ProximalStep(net_plan, model, opt, lam=2.0, schedule=lambda t: 0.5 * t)
    seen = []
    for _ in range(3):
        _train_step(model, opt)
        prox.step()
        seen.append(prox.stats().lam)
    assert seen == [1.0, 2.0, 3.0] and prox.lam_at(10) == 10.0
    bad = ProximalStep(net_plan, model, opt, lam=1.0, schedule=lambda t: -1.0)
    _train_step(model, opt)
    with pytest.raises(SparseKitError, match="schedule: factor at step 1"):
        bad.step()


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_state_dict_resumes_the_same_run(net_plan: skg.Plan, kind: str) -> None:
    schedule = LamSchedule.linear(4)
    straight = _fresh()
    opt = OPTIMIZERS[kind](straight)
    prox = ProximalStep(net_plan, straight, opt, lam=2.0, schedule=schedule)
    for _ in range(6):
        _train_step(straight, opt)
        prox.step()

    first = _fresh()
    opt1 = OPTIMIZERS[kind](first)
    prox1 = ProximalStep(net_plan, first, opt1, lam=2.0, schedule=schedule)
    for _ in range(3):
        _train_step(first, opt1)
        prox1.step()
    saved = copy.deepcopy((first.state_dict(), opt1.state_dict(), prox1.state_dict()))
    resumed = _fresh(seed=1)
    resumed.load_state_dict(saved[0])
    opt2 = OPTIMIZERS[kind](resumed)
    opt2.load_state_dict(saved[1])
    prox2 = ProximalStep(net_plan, resumed, opt2, lam=2.0, schedule=schedule)
    prox2.load_state_dict(saved[2])
    assert prox2.steps == 3
    for _ in range(3):
        _train_step(resumed, opt2)
        prox2.step()
    assert _same(_params(straight), _params(resumed))
    assert prox.stats() == prox2.stats()


def test_stats_and_masks_agree(net_plan: skg.Plan) -> None:
    model = _fresh()
    opt = OPTIMIZERS["adamw"](model)
    prox = ProximalStep(net_plan, model, opt, lam=1.0, weights=_kill_half(net_plan))
    _train_step(model, opt)
    prox.step()
    stats, masks = prox.stats(), prox.masks()
    assert isinstance(stats, ProxStats)
    assert stats.zero == {k: int(v.sum()) for k, v in masks.items()}
    assert stats.removable == sum(int(v.sum()) for v in masks.values())
    assert stats.fraction_removable == pytest.approx(stats.removable / stats.channels)
    assert 0 < stats.groups_sparse == stats.groups and stats.groups_zero == 0


# -- what it cannot do exactly ----------------------------------------------------------------------
def _error_cases() -> dict[str, tuple[Callable[[skg.Plan], object], str]]:
    def make(opt_fn: Callable[[nn.Module], torch.optim.Optimizer], lam: float = 1.0, **kw: object) -> Callable:
        def build(plan: skg.Plan) -> object:
            model = _fresh()
            return ProximalStep(plan, model, opt_fn(model), lam, **kw)

        return build

    def frozen(plan: skg.Plan) -> object:
        model = _fresh()
        model.bn1.weight.requires_grad_(False)
        return ProximalStep(plan, model, torch.optim.SGD(model.parameters(), lr=0.1), 1.0)

    def missing(plan: skg.Plan) -> object:
        model = _fresh()
        return ProximalStep(plan, model, torch.optim.SGD(model.fc2.parameters(), lr=0.1), 1.0)

    def mixed_lr(plan: skg.Plan) -> object:
        model = _fresh()
        fc1 = list(model.fc1.parameters())
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
        opt = torch.optim.SGD([{"params": rest}, {"params": fc1, "lr": 0.5}], lr=0.1)
        prox = ProximalStep(plan, model, opt, 1.0)
        _train_step(model, opt)
        return prox.step()

    def no_state(plan: skg.Plan) -> object:
        model = _fresh()
        return ProximalStep(plan, model, torch.optim.Adam(model.parameters()), 1.0).step(force=True)

    adam = torch.optim.Adam
    return {
        "rmsprop": (make(lambda m: torch.optim.RMSprop(m.parameters())), "optimizer RMSprop is not supported"),
        "amsgrad": (make(lambda m: adam(m.parameters(), amsgrad=True)), "option amsgrad=True is not supported"),
        "maximize": (make(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, maximize=True)), "maximize=True"),
        "frozen": (frozen, "param 'bn1.weight' is frozen"),
        "not-in-optimizer": (missing, "param 'conv1.weight' is not in the optimizer"),
        "mixed-lr": (mixed_lr, "group 'conv3:out': its parameters have different learning rates"),
        "no-adam-state": (no_state, "has no adam state yet"),
        "negative-lam": (make(OPTIMIZERS["sgd"], lam=-1.0), "lam must be a non-negative finite number"),
        "nan-lam": (make(OPTIMIZERS["sgd"], lam=math.nan), "lam must be"),
        "unknown-group": (make(OPTIMIZERS["sgd"], weights={"nope": 1.0}), "no penalised group named 'nope'"),
        "pinned-group": (make(OPTIMIZERS["sgd"], weights={"fc2:out": 1.0}), r"group 'fc2:out' is pinned \(model output\)"),
        "negative-weight": (make(OPTIMIZERS["sgd"], weights={"fc1:out": -1.0}), r"weights\['fc1:out'\]"),
        "weight-shape": (make(OPTIMIZERS["sgd"], weights={"fc1:out": torch.ones(3)}), r"\(10,\) tensor"),
        "schedule-type": (make(OPTIMIZERS["sgd"], schedule="linear"), "schedule must be a LamSchedule"),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_clear_errors(net_plan: skg.Plan, case: str) -> None:
    build, match = _error_cases()[case]
    with pytest.raises(SparseKitError, match=match):
        build(net_plan)


def test_bad_state_dict(net_plan: skg.Plan) -> None:
    model = _fresh()
    prox = ProximalStep(net_plan, model, OPTIMIZERS["sgd"](model), 1.0)
    with pytest.raises(SparseKitError, match="expected a mapping with version"):
        prox.load_state_dict({"steps": 3})
    with pytest.raises(SparseKitError, match="steps must be a non-negative integer"):
        prox.load_state_dict({**prox.state_dict(), "steps": -1})


def test_plan_must_be_a_plan() -> None:
    model = _fresh()
    with pytest.raises(SparseKitError, match="use from_couplings"):
        ProximalStep({}, model, OPTIMIZERS["sgd"](model), 1.0)  # type: ignore[arg-type]
