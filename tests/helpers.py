"""The DESIGN.md correctness oracle, shared by the model tests, and synthetic deep CNNs of any depth
(for the scaling tests and ``benchmarks/scaling.py``, which adds ``tests/`` to ``sys.path``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.plan.ties import snap_tied


def call(model: nn.Module, x: object) -> object:
    """``model(x)``, or ``model(**x)`` for a dict of keyword inputs (Hugging Face models)."""
    return model(**x) if isinstance(x, dict) else model(x)


def realistic_bn(model: nn.Module, x: Tensor, seed: int = 0) -> None:
    """Random BN affine parameters and running statistics measured on ``x`` (one train pass)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            if m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None
        if not bns:
            model.eval()
            return
        model.train()
        call(model, x)
        for m in bns:
            m.momentum = 0.1
    model.eval()


def first_tensor(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    raise TypeError(type(out))


def assert_close_rel(a: Tensor, b: Tensor, rtol: float = 1e-4) -> None:
    scale = a.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * scale + 1e-6, f"max abs error {err:.3g} vs output scale {scale:.3g}"


def assert_masked_is_pruned(model: nn.Module, plan: skg.Plan, masks: dict[str, Tensor], x: Tensor) -> nn.Module:
    """Masking ``masks`` (True: removed) on a copy of ``model`` gives the pruned model's outputs."""
    dense = copy.deepcopy(model)
    bound = skg.bind(plan, dense)
    for name, mask in masks.items():
        bound[name].apply_mask(mask)
    pruned = skg.prune(model, plan, masks=masks).model.eval()
    with torch.no_grad():
        assert_close_rel(dense(x), pruned(x))
    return pruned


def fingerprint(model: nn.Module) -> tuple:
    """Everything plan/prune must leave alone: tensors (bitwise), flags, hooks, requires_grad."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = [(n, m.training, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()]
    grads = [(n, p.requires_grad) for n, p in model.named_parameters()]
    return state, flags, grads


def assert_untouched(model: nn.Module, before: tuple, when: str) -> None:
    state, flags, grads = fingerprint(model)
    assert state.keys() == before[0].keys(), f"{when}: state_dict keys changed"
    changed = [k for k, v in before[0].items() if not torch.equal(v, state[k])]
    assert not changed, f"{when}: changed {changed[:5]}"
    assert flags == before[1], f"{when}: training flags or hooks changed"
    assert grads == before[2], f"{when}: requires_grad changed"


def check_oracle(
    model: nn.Module,
    x: Tensor | dict[str, Tensor],
    tmp_path: Path,
    *,
    min_drop: float = 0.05,
    require: bool = True,
    equal_counts: bool = False,
    gqa: str = "kv_groups",
) -> skg.PruneResult:
    """Plan, round-trip, prune at 0.5, run in eval and train, and check exactness.

    ``require=False`` (random nets) accepts a net with nothing to prune, e.g. when a channel
    shuffle ties every channel into one. ``equal_counts=True``: the random masks remove the
    same number of channels from groups of one size (a model whose layers read one shared
    count, Phi-3's ``config.num_attention_heads``, cannot hold per-layer counts).
    """
    realistic_bn(model, x)
    before = fingerprint(model)
    plan = skg.plan(model, x, gqa=gqa)
    assert_untouched(model, before, "plan")
    plan.save(tmp_path / "plan.json")
    assert skg.Plan.load(tmp_path / "plan.json") == plan
    plan.check(model)
    assert plan.prunable or not require, "nothing prunable"
    result = skg.prune(model, plan, ratio=0.5)
    assert_untouched(model, before, "prune")
    small = result.model.eval()
    with torch.no_grad():
        dense_out, small_out = first_tensor(call(model, x)), first_tensor(call(small, x))
    assert small_out.shape == dense_out.shape
    after = sum(p.numel() for p in small.parameters())
    assert result.report.params_after == after
    assert after <= (1 - min_drop) * result.report.params_before
    small.train()
    with torch.no_grad():
        call(small, x)

    # Exactness on every zero-invariant group at once: masked dense == pruned.
    gen = torch.Generator().manual_seed(1)
    masks = {}
    for g in plan.prunable:
        if g.zero_invariant and g.size > 1:
            m = torch.rand(g.size, generator=gen) < 0.4
            if equal_counts:  # remove round(0.4 * size) channels, at random positions
                m = torch.zeros(g.size, dtype=torch.bool)
                m[torch.randperm(g.size - 1, generator=gen)[: max(1, round(0.4 * g.size))] + 1] = True
            m[0] = False
            masks[g.name] = m
    assert masks or not require, "no zero-invariant group"
    masks = snap_tied(plan, masks, {n: torch.rand(len(m), generator=gen) for n, m in masks.items()})  # tied counts
    if not masks:
        return result
    dense = copy.deepcopy(model).eval()
    couplings = skg.bind(plan, dense)
    for name, m in masks.items():
        couplings[name].apply_mask(m)
    pruned = skg.prune(model, plan, masks=masks).model.eval()
    with torch.no_grad():
        assert_close_rel(first_tensor(call(dense, x)), first_tensor(call(pruned, x)))
    return result


class _Deep(nn.Module):
    """Conv-BN-ReLU layers; a residual add every 2 layers, a concat + chunk every 8."""

    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(layers))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        skip = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = torch.relu(bn(conv(x)))
            if i % 2 == 1:
                x = x + skip
                skip = x
            if i % 8 == 7:
                x = torch.cat([x, skip], dim=1).chunk(2, dim=1)[0]
        return self.head(x.mean((2, 3)))


def deep_cnn(layers: int, width: int = 16, size: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A ``layers``-deep CNN and an input for it."""
    return _Deep(layers, width).eval(), torch.randn(1, 3, size, size)


class Body(nn.Module):
    """conv-BN-ReLU (group ``a:out``, 8 channels) -> ``fn(self, h)`` -> head, for stranger spellings.

    ``fn`` is the spelling under test; the head (1x1 conv on 4-D output, else Linear) is sized by a
    dry run of ``fn`` on an input of ``example_shape``; ``extra`` become attributes (tensors: buffers).
    """

    example_shape: tuple[int, ...] = (2, 3, 6, 6)

    def __init__(self, fn: Callable[..., Tensor], **extra: nn.Module | nn.Parameter | Tensor) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        set_extras(self, extra)
        self.fn = fn
        with torch.no_grad():
            out = fn(self, torch.relu(self.bn(self.a(torch.randn(*self.example_shape)))))
        self.b = nn.Conv2d(out.shape[1], 4, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.fn(self, torch.relu(self.bn(self.a(x)))))


def set_extras(module: nn.Module, extra: dict[str, nn.Module | nn.Parameter | Tensor]) -> None:
    """Attach ``extra`` to ``module``: plain tensors as buffers, layers and parameters as attributes."""
    for k, v in extra.items():
        if isinstance(v, Tensor) and not isinstance(v, nn.Parameter):
            module.register_buffer(k, v)
        else:
            setattr(module, k, v)


def oracle_or_refusal(model: nn.Module, x: Tensor, tmp_path: Path) -> None:
    """The oracle, or a clean refusal (``SparseKitError``) that leaves the model untouched."""
    before = fingerprint(model)
    try:
        skg.plan(model, x)
    except skg.SparseKitError:
        assert_untouched(model, before, "refused plan")
        return
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


class PerChannel(nn.Module):
    """``b(f(a(x)))`` over (B, 3, H, W): ``f`` acts on each of a's 8 channels alone."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.f = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), f

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.f(self.a(x)))
