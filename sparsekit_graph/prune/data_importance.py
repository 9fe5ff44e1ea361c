"""Importance from data: first-order Taylor and activation-aware scores.

* ``taylor``: ``sum |w * dL/dw|`` over every element of a channel in every member of its group,
  with the gradient summed over the calibration batches (Molchanov et al.; Torch-Pruning's
  ``TaylorImportance``). Needs ``loss_fn``.
* ``activation``: the channel's input activations times the weights that read them, as Wanda
  and FLAP score: ``sqrt(sum_consumers ||W[:, c]||^2 * E[x_c^2])`` -- the output energy lost by
  removing channel ``c`` if activations were uncorrelated. A consumer is a member lying on a
  weight's input axis (``Linear`` / ``Conv`` by default; ``register_input_features`` adds layer
  types). A group no consumer reads (its channels reach only custom ops or the output) falls
  back to ``l2``.

Both run under ``calibrate.preserved``: the model is exactly as it was afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine import BlockCoupling
from ..errors import PlanError, SparseKitError
from ..plan.bind import member_order, member_spec
from ..registry import by_type, registrar
from .calibrate import batches, call_model, compute_loss, model_device, preserved
from .importance import ImportanceContext, register_importance

__all__ = ["INPUT_FEATURES", "InputStats", "register_input_features"]


@dataclass(frozen=True)
class InputStats:
    """One input's contribution to a layer's activation statistics.

    ``sumsq`` broadcasts to ``module.weight``: for each weight element, the sum of squares of the
    input feature it multiplies, over ``count`` positions (tokens, pixels). ``axes``: the weight
    axes along which the input feature changes (members there are the feature's consumers).
    """

    sumsq: Tensor
    count: int
    axes: tuple[int, ...]


InputRule = Callable[[nn.Module, Tensor], InputStats]
INPUT_FEATURES: dict[type, InputRule] = {}
register_input_features = registrar(INPUT_FEATURES)
"""``@register_input_features(MyLayer)`` on ``fn(module, input) -> InputStats``."""


@register_input_features(nn.Linear)
def _linear(module: nn.Module, x: Tensor) -> InputStats:
    x2 = x.detach().float().pow(2).reshape(-1, x.shape[-1])  # (tokens, in)
    return InputStats(x2.sum(0)[None, :], x2.shape[0], (1,))


@register_input_features(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Module, x: Tensor) -> InputStats:
    w = module.weight
    spatial = w.ndim - 2
    if x.ndim == spatial + 1:
        x = x.unsqueeze(0)  # unbatched
    c = x.shape[1]
    s = x.detach().float().pow(2).transpose(0, 1).reshape(c, -1).sum(1)  # (C,)
    out, in_g = w.shape[:2]
    groups = c // in_g
    ones = (1,) * spatial
    if groups == 1:
        return InputStats(s.reshape(1, c, *ones), x.numel() // c, (1,))
    per_out = s.reshape(groups, in_g).repeat_interleave(out // groups, 0)  # (out, in_g)
    return InputStats(per_out.reshape(out, in_g, *ones), x.numel() // c, (0, 1) if in_g == 1 else (1,))


@register_importance("taylor")
def taylor(ctx: ImportanceContext) -> dict[str, Tensor]:
    """``sum |w * g|`` per channel over the group's parameters, ``g`` the calibration gradient."""
    if ctx.loss_fn is None:
        raise PlanError(
            "importance 'taylor' needs loss_fn= (loss_fn(output, target) -> scalar tensor) and calibration= (input, target) pairs"
        )
    params = list({id(s.view.param): s.view.param for c in ctx.couplings.values() for s in c.specs}.values())
    if not params:  # nothing to prune: no gradient to take
        return {}
    acc = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    device = model_device(ctx.model)
    with preserved(ctx.model), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for i, (inputs, target) in enumerate(batches(ctx.calibration, ctx.loss_fn, device, who="taylor")):
            loss = compute_loss(ctx.loss_fn, call_model(ctx.model, inputs, i), target, i)
            _check_not_frozen(ctx.model, params)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a.add_(g.float())
    saliency = {id(p): (p.detach().float() * a).abs_() for p, a in zip(params, acc)}
    return {name: c.norms({s: saliency[id(s.view.param)] for s in c.specs}, p=1).reshape(-1) for name, c in ctx.couplings.items()}


def _check_not_frozen(model: nn.Module, params: list[nn.Parameter]) -> None:
    """A parameter the model's forward froze (``requires_grad_(False)`` inside ``forward``) has
    no gradient, so its channels would score zero: refuse, naming it."""
    frozen = {id(p) for p in params if not p.requires_grad}
    if frozen:
        name = next((n for n, p in model.named_parameters() if id(p) in frozen), "?")
        raise SparseKitError(
            f"importance 'taylor': the model's forward turned off requires_grad of parameter {name}, so it gets no "
            "gradient; use importance='l2' or 'activation', or leave requires_grad alone in forward"
        )


class _Recorder:
    """Forward pre-hooks summing each reader layer's input statistics."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.stats: dict[int, list[Any]] = {}  # id(module) -> [sumsq, count, axes]
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        rule = by_type(INPUT_FEATURES, module)
        if not isinstance(x, Tensor) or rule is None:
            return
        got = rule(module, x)
        have = self.stats.get(id(module))
        if have is None:
            self.stats[id(module)] = [got.sumsq.clone(), got.count, got.axes]
        else:
            have[0] += got.sumsq
            have[1] += got.count

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_importance("activation")
def activation(ctx: ImportanceContext) -> dict[str, Tensor]:
    """Input-activation RMS times the reading weights, per channel (Wanda / FLAP style)."""
    params = dict(ctx.model.named_parameters())
    readers = {  # id(weight) -> the layer that reads its input through it
        id(m.weight): m
        for m in ctx.model.modules()
        if by_type(INPUT_FEATURES, m) is not None and isinstance(getattr(m, "weight", None), Tensor)
    }
    wanted: dict[int, nn.Module] = {}
    for g in ctx.plan.prunable:
        for m in g.members:
            layer = readers.get(id(params[m.param])) if g.name in ctx.couplings and m.param in params else None
            if layer is not None:
                wanted[id(layer)] = layer
    recorder = _Recorder(list(wanted.values()))
    try:
        with preserved(ctx.model), torch.no_grad():
            for i, (inputs, _) in enumerate(batches(ctx.calibration, ctx.loss_fn, model_device(ctx.model), who="activation")):
                call_model(ctx.model, inputs, i)
    finally:
        recorder.remove()
    scaled: dict[int, Tensor] = {}  # id(weight) -> |W| * rms(input feature), per element
    out = {}
    for g in ctx.plan.prunable:
        coupling = ctx.couplings.get(g.name)
        if coupling is None:
            continue
        specs, orders = [], []
        for m in g.members:
            layer = readers.get(id(params[m.param])) if m.param in params else None
            stats = recorder.stats.get(id(layer)) if layer is not None else None
            if stats is None or m.axis not in stats[2]:
                continue
            w = params[m.param]
            if id(w) not in scaled:
                scaled[id(w)] = w.detach().float().abs() * (stats[0] / max(stats[1], 1)).sqrt()
            specs.append(member_spec(m, scaled[id(w)]))
            orders.append(member_order(m, scaled[id(w)]))
        if specs:
            out[g.name] = BlockCoupling(specs, orders, name=g.name).norms(p=2).reshape(-1)
        else:  # nothing reads these channels through a known layer: weight norms
            out[g.name] = coupling.norms(p=2).reshape(-1) / math.sqrt(coupling.numel_per_block())
    return out
