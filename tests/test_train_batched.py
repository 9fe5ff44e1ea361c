"""ProximalStep's batched path (every group in few ``soft_threshold_all`` calls) equals its group-by-group path.

Each case trains a model a few steps, copies it with its optimizer state, and applies the same prox on
both copies, one ``batched`` (the default in one process) and one group by group (the distributed
path), twice, from the same state each time (a training step on one copy between, which the other
then takes over, so that the second step meets channels the first killed): weights and optimizer
state must agree to float32 tolerance, the same channels must die, and gradients and every other
optimizer state stay untouched.
Thresholds are set per group to kill about a fifth of its channels (one group skipped, one with
per-channel weights, some zero), so that groups sharing a weight meet channels killed by another.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph import ProximalStep
from sparsekit_graph.engine import fused
from sparsekit_graph.train import batched
from sparsekit_graph.zoo import hf_model

TOL = 1e-5  # per parameter: ||batched - group by group|| / ||group by group||
LR = {"sgd": 0.05, "adam": 1e-2, "adamw": 1e-2}
OPTIM = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class _Residual(nn.Module):
    """conv-BN, a residual conv (one weight on both axes of one group), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(h + self.bn2(self.conv2(h)))
        return self.fc(F.relu(self.conv3(h)).mean((2, 3)))


Case = tuple[Callable[[], nn.Module], Callable[[], object], Callable[[nn.Module], Tensor]]


def _vision(make: Callable[[], nn.Module], size: int, classes: int) -> Case:
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 3, size, size, generator=gen), torch.randint(0, classes, (4,), generator=gen)
    return make, lambda: x, lambda m: F.cross_entropy(m(x), y)


def _llama() -> Case:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return hf_model("llama")[0].train()

    torch.manual_seed(0)
    _, x = hf_model("llama")
    return make, lambda: x, lambda m: m(**x, labels=x["input_ids"]).loss


CASES: dict[str, Callable[[], Case]] = {
    "residual-bn": lambda: _vision(_Residual, 8, 5),
    "resnet18": lambda: _vision(lambda: torchvision.models.resnet18(num_classes=10), 32, 10),
    "mobilenet_v3_small": lambda: _vision(lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 32, 10),
    "llama": _llama,
    "resnet50": lambda: _vision(lambda: torchvision.models.resnet50(num_classes=10), 32, 10),
}
_PLANS: dict[str, skg.Plan] = {}


def _plan(name: str, model: nn.Module, example: object) -> skg.Plan:
    if name not in _PLANS:
        _PLANS[name] = skg.plan(model, example)
    return _PLANS[name]


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    """Two param groups with one learning rate: weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    groups = [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}]
    return OPTIM[kind](groups, lr=LR[kind], **extra)


def _denominators(opt: torch.optim.Optimizer) -> dict[int, Tensor]:
    out = {}
    for pg in opt.param_groups:
        for p in pg["params"]:
            st = opt.state[p]
            bias = math.sqrt(1 - pg["betas"][1] ** float(st["step"]))
            out[id(p)] = (st["exp_avg_sq"].sqrt() / bias).add_(pg["eps"])
    return out


def _weights(plan: skg.Plan, model: nn.Module, opt: torch.optim.Optimizer, kind: str) -> dict[str, Tensor | float]:
    """Per penalised group (lam = 1): ``tau`` at the 20% quantile of its channels' norms (in Adam's
    metric for Adam), / lr; the first group skipped, the second with every third channel unpenalised."""
    bound = skg.bind(plan, model)
    hs = None if kind == "sgd" else _denominators(opt)
    out: dict[str, Tensor | float] = {}
    for i, g in enumerate(g for g in plan.groups if g.prunable and g.zero_invariant and g.name in bound):
        c = bound[g.name]
        values = None if hs is None else {s: s.view.window(hs[id(s.view.param)] * s.view.param.detach()) for s in c.specs}
        norms = c.norms(values).reshape(-1)
        w = torch.full((g.size,), float(norms.sort().values[g.size // 5]) * 1.0001 / LR[kind])
        if i == 1:
            w[::3] = 0.0
        out[g.name] = 0.0 if i == 0 else w
    return out


def _rel(a: Tensor, b: Tensor) -> float:
    scale = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / scale if scale else float(a.double().norm())


def _states(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for name, p in model.named_parameters():
        for key, t in opt.state[p].items():
            if isinstance(t, Tensor):
                out[f"{name}/{key}"] = t.detach().clone()
    return out


def _check(a: tuple[nn.Module, torch.optim.Optimizer], b: tuple[nn.Module, torch.optim.Optimizer]) -> None:
    """Every parameter and optimizer state tensor of ``a`` within TOL of ``b``'s."""
    for (name, p), q in zip(a[0].named_parameters(), b[0].parameters()):
        assert _rel(p.detach(), q.detach()) <= TOL, (name, _rel(p.detach(), q.detach()))
    sa, sb = _states(a[1], a[0]), _states(b[1], b[0])
    assert sa.keys() == sb.keys()
    for key in sa:
        assert _rel(sa[key], sb[key]) <= TOL, (key, _rel(sa[key], sb[key]))


@pytest.fixture
def eager() -> Iterator[None]:
    """The eager kernels (the compiled ones take tens of seconds to compile; both paths share them)."""
    old = fused.set_kernel_mode("eager")
    yield
    fused.set_kernel_mode(old)


def _run(case: str, kind: str, reset_state: bool) -> None:
    make, example, loss_fn = CASES[case]()
    model = make()
    plan = _plan(case, model, example())
    opt = _optimizer(kind, model)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    twin = copy.deepcopy(model)
    twin_opt = _optimizer(kind, twin)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict keeps the tensors it is given
    weights = _weights(plan, model, opt, kind)
    fast = ProximalStep(plan, model, opt, lam=1.0, weights=weights, reset_state=reset_state)
    slow = ProximalStep(plan, twin, twin_opt, lam=1.0, weights=weights, reset_state=reset_state, batched=False)
    assert fast.batched and not slow.batched
    momentum = "momentum_buffer" if kind == "sgd" else "exp_avg"
    for round_ in range(2):
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        before = _states(opt, model)
        assert fast.step(force=True) and slow.step(force=True)
        _check((model, opt), (twin, twin_opt))
        masks, want = fast.masks(), slow.masks()
        assert {k: v.tolist() for k, v in masks.items()} == {k: v.tolist() for k, v in want.items()}
        assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
        after = _states(opt, model)
        untouched = [k for k in before if not k.endswith("/" + momentum)]
        assert all(torch.equal(before[k], after[k]) for k in untouched)
        changed = [k for k in before if k.endswith("/" + momentum) and not torch.equal(before[k], after[k])]
        assert not changed if not reset_state else bool(changed) or round_ > 0, changed  # the first round kills channels
        assert fast.stats().channels_zero > 0
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()  # then the twin takes this state: a training step amplifies rounding (Adam's m / sqrt(v) where v ~ 0)
        twin.load_state_dict(model.state_dict())
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()


ALL = [(case, kind, reset) for case in CASES for kind in OPTIM for reset in ("reset", "keep")]
# the ResNets and MobileNet (each case 30-180 s on the shared 2-core machine) run with -m slow
DEFAULT = [c for c in ALL if c[0] == "residual-bn"] + [("llama", "sgd", "keep"), ("llama", "adamw", "reset")]

MORE = [c for c in ALL if c not in DEFAULT]


@pytest.mark.parametrize(("case", "kind", "reset"), DEFAULT, ids=["-".join(c) for c in DEFAULT])
def test_batched_equals_group_by_group(case: str, kind: str, reset: str, eager: None) -> None:
    _run(case, kind, reset == "reset")


@pytest.mark.slow
@pytest.mark.parametrize(("case", "kind", "reset"), MORE, ids=["-".join(c) for c in MORE])
def test_batched_equals_group_by_group_more(case: str, kind: str, reset: str) -> None:
    """The other combinations, ResNet-50 among them, with the default (compiled where they apply) kernels."""
    _run(case, kind, reset == "reset")


def test_denominator_budget_cuts_runs_in_order(eager: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam's denominators held for one group at a time (a budget of 1 byte): the same result."""
    monkeypatch.setattr(batched, "BUDGET", 1)
    _run("residual-bn", "adamw", True)
