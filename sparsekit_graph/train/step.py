"""``ProximalStep``: the group-lasso prox over a plan's channels after each optimizer step."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..engine import BlockCoupling, SparseBlock, solve
from ..engine.batch import sync_free
from ..errors import SparseKitError
from ..plan.schema import Plan
from .batched import distributed, eligible, prox_all
from .conditioner import AdamDenominators
from .graphed import GraphedStep, check_graphable
from .layout import member_numel, plan_segments
from .schedule import LamSchedule, ProxStats
from .segments import PartSegment, ProxGroup, Segment, local_tensor

__all__ = ["ProximalStep"]

_STATE_VERSION = 1


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise SparseKitError(
        f"optimizer {type(optimizer).__name__} is not supported: use SGD (euclidean prox) or Adam/AdamW (conditioned prox)"
    )


def _check_options(kind: str, param_group: Mapping[str, Any], where: str) -> None:
    for option in ("amsgrad", "maximize") if kind == "adam" else ("maximize",):
        if param_group.get(option, False):
            raise SparseKitError(f"{where}: optimizer option {option}=True is not supported by the proximal step")


def _weights(given: Mapping[str, float | Tensor] | None, groups: list[ProxGroup], why_not: Callable[[str], str | None]) -> None:
    """Apply the user's weights (a scalar or a ``(size,)`` tensor per group name) in place."""
    by_name = {g.name: g for g in groups}
    for name, w in (given or {}).items():
        g = by_name.get(name)
        if g is None:
            raise SparseKitError(f"weights: {why_not(name) or f'no penalised group named {name!r}'}")
        t = torch.as_tensor(w, dtype=torch.float32).detach().cpu()
        if t.ndim == 0:
            t = t.expand(g.size)
        if tuple(t.shape) != (g.size,) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise SparseKitError(f"weights[{name!r}]: expected a non-negative finite number or ({g.size},) tensor")
        g.weight = t.clone()


def _flags(flags: list[Tensor]) -> list[bool]:
    """0-d bool tensors as Python bools, in one transfer where they share a device."""
    if len({f.device for f in flags}) == 1:
        return [bool(f) for f in torch.stack(flags).tolist()]
    return [bool(f) for f in flags]


def _on_step(ref: weakref.ref[ProximalStep]) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        prox = ref()
        found = getattr(optimizer, "found_inf", None)  # set by GradScaler around a fused step it skips
        if prox is not None and not (isinstance(found, Tensor) and bool(found.sum() != 0)):
            prox._pending = True

    return hook


class ProximalStep:
    """Group lasso over a plan's channels, one proximal step after each ``optimizer.step()``.

    Penalty ``lam * sum_g weight_g * ||w_g||`` over every channel ``g`` of the plan's prunable,
    zero-invariant groups (zeroing such a channel removes its effect exactly, so ``masks()`` can
    prune it). ``step()`` applies the prox of ``lr * penalty``: for SGD the Euclidean one (threshold
    ``lam * lr * weight_g``); for Adam/AdamW the prox in the optimizer's metric
    ``diag(sqrt(v_hat) + eps)`` (bias-corrected ``v``, per parameter), with the same threshold, i.e.
    the exact proximal step of the preconditioned update, solved by Newton to relative 1e-6.

    When a channel is driven to zero (``reset_state=True``) its slice of the optimizer's momentum
    (SGD ``momentum_buffer``, Adam ``exp_avg``) is zeroed too: its gradient is zero, so it then stays
    exactly zero. Under DDP every rank applies the same step; under FSDP2 (``fully_shard``) each rank
    works on its local shard and all-reduces per-channel sums.

    Args:
        plan: The model's plan (made before sharding; names as in ``model.named_parameters()``).
        model: The model (a ``DistributedDataParallel`` wrapper is looked through).
        optimizer: ``torch.optim.SGD``, ``Adam`` or ``AdamW`` over the groups' parameters.
        lam: Penalty strength, ``>= 0``; ``0`` changes nothing.
        weights: Per group name, a number or a ``(size,)`` tensor replacing the default weight
            ``sqrt(elements per channel)``.
        schedule: A ``LamSchedule`` or ``t -> factor`` (``t`` = optimizer steps seen, from 1).
        reset_state: Zero the optimizer momentum of channels the prox kills.
        batched: Solve every group in few engine calls (``soft_threshold_all``, the same result)
            where that applies: one process, no ``torch.distributed`` process group, no DTensor.
            False: group by group, as the distributed path does.
        cuda_graph: SGD on CUDA only: from the second step on, the whole step (thresholds, prox,
            momentum reset) replays one captured ``torch.cuda.CUDAGraph`` (recaptured when a
            parameter or momentum buffer is replaced); see ``train/graphed.py``.

    On CUDA tensors the batched SGD step never reads a value back to the host after its first call
    (the engine's layout is then cached): thresholds are non-negative by construction, groups with
    zero weights are found once, and momentum resets rewrite every group's rows with a mask.

    Raises:
        SparseKitError: An unsupported optimizer or option (amsgrad, maximize), a frozen parameter
            or one the optimizer does not hold, a bad ``lam``/``weights``/``schedule``;
            ``cuda_graph=True`` off CUDA, with Adam, or where the step is not batched.
    """

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lam: float,
        *,
        weights: Mapping[str, float | Tensor] | None = None,
        schedule: LamSchedule | Callable[[int], float] | None = None,
        reset_state: bool = True,
        batched: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        if not isinstance(plan, Plan):
            raise SparseKitError(f"plan must be a Plan, got {type(plan).__name__} (engine couplings: use from_couplings)")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        plan.check(model)
        params = dict(model.named_parameters())
        groups = []
        for g in plan.groups:
            if g.prunable and g.zero_invariant and any(m.param in params for m in g.members):
                segments, pg, coupling = plan_segments(g, params)
                numel = sum(member_numel(m, params[m.param]) for m in g.members if m.param in params)
                groups.append(ProxGroup(g.name, g.size, segments, torch.full((g.size,), math.sqrt(numel)), pg, coupling))

        def why_not(name: str) -> str | None:
            if not any(g.name == name for g in plan.groups):
                return None
            g = plan.group(name)
            if not g.prunable:
                return f"group {name!r} is pinned ({g.reason})"
            return f"group {name!r} is not zero-invariant" if not g.zero_invariant else f"group {name!r} has no parameters"

        self._setup(groups, optimizer, lam, weights, schedule, reset_state, batched, why_not, cuda_graph)

    @classmethod
    def from_couplings(
        cls,
        couplings: Mapping[str, BlockCoupling],
        optimizer: torch.optim.Optimizer,
        lam: float,
        *,
        weights: Mapping[str, float | Tensor] | None = None,
        schedule: LamSchedule | Callable[[int], float] | None = None,
        reset_state: bool = True,
        batched: bool = True,
        cuda_graph: bool = False,
    ) -> ProximalStep:
        """The same step over engine couplings (e.g. ``bind(plan, model)``), keyed by group name.

        Every coupling is penalised; each spec's view must look into a parameter the optimizer holds.
        Default weights are ``sqrt(coupling.numel_per_block())``.
        """
        groups = []
        for name, c in couplings.items():
            if not isinstance(c, SparseBlock):
                raise SparseKitError(f"couplings[{name!r}]: expected a BlockCoupling, got {type(c).__name__}")
            segments: list[Segment] = [
                PartSegment(part, part.spec.view.param, part.spec.name or f"<spec {i} of {name}>")
                for i, part in enumerate(c._parts())
            ]
            weight = torch.full((c.numblk(),), math.sqrt(c.numel_per_block()))
            groups.append(ProxGroup(name, c.numblk(), segments, weight, None, c))
        self = cls.__new__(cls)
        self._setup(groups, optimizer, lam, weights, schedule, reset_state, batched, lambda name: None, cuda_graph)
        return self

    def _setup(
        self,
        groups: list[ProxGroup],
        optimizer: torch.optim.Optimizer,
        lam: float,
        weights: Mapping[str, float | Tensor] | None,
        schedule: LamSchedule | Callable[[int], float] | None,
        reset_state: bool,
        batched: bool,
        why_not: Callable[[str], str | None],
        cuda_graph: bool = False,
    ) -> None:
        if schedule is not None and not (isinstance(schedule, LamSchedule) or callable(schedule)):
            raise SparseKitError(f"schedule must be a LamSchedule or a callable, got {type(schedule).__name__}")
        self._kind = _optimizer_kind(optimizer)
        owner = {id(p): pg for pg in optimizer.param_groups for p in pg["params"]}
        for g in groups:
            for s in g.segments:
                where = f"group {g.name!r}: param {s.name!r}"
                if id(s.param) not in owner:
                    raise SparseKitError(f"{where} is not in the optimizer")
                if not s.param.requires_grad:
                    raise SparseKitError(f"{where} is frozen (requires_grad=False)")
                _check_options(self._kind, owner[id(s.param)], where)
        _weights(weights, groups, why_not)
        for g in groups:
            device = local_tensor(g.segments[0].param).device if g.segments else torch.device("cpu")
            g.weight = g.weight.to(device)
        self._groups, self._optimizer, self._owner = groups, optimizer, owner
        self.lam, self.schedule, self.reset_state = lam, schedule, reset_state
        self._batched = batched and eligible(groups)
        if cuda_graph:
            check_graphable(self._kind, self._batched, groups)
        self._steps, self._last_lam, self._pending = 0, 0.0, False
        self._weights_live: list[bool] | None = None
        self._graphed = GraphedStep(self, groups) if cuda_graph else None
        self._handle = optimizer.register_step_post_hook(_on_step(weakref.ref(self)))

    # -- public API ------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """Penalty strength before the schedule; may be changed between steps."""
        return self._lam

    @lam.setter
    def lam(self, lam: float) -> None:
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
            raise SparseKitError(f"lam must be a non-negative finite number, got {lam!r}")
        self._lam = float(lam)

    @property
    def batched(self) -> bool:
        """Whether ``step()`` solves all groups in few engine calls (else group by group)."""
        return self._batched and not distributed()

    @property
    def steps(self) -> int:
        """Optimizer steps seen (steps a GradScaler skipped are not counted)."""
        return self._steps

    def lam_at(self, t: int) -> float:
        """``lam`` at optimizer step ``t`` (1-based), schedule applied."""
        if self.schedule is None:
            return self.lam
        factor = self.schedule.factor(t) if isinstance(self.schedule, LamSchedule) else float(self.schedule(t))
        if not math.isfinite(factor) or factor < 0:
            raise SparseKitError(f"schedule: factor at step {t} must be a non-negative finite number, got {factor!r}")
        return self.lam * factor

    def step(self, *, force: bool = False) -> bool:
        """Apply the prox for the optimizer step just taken; call it right after ``optimizer.step()``.

        Does nothing (returns False) when the optimizer has not stepped since the last call, e.g.
        when a ``GradScaler`` skipped the step; ``force=True`` applies it anyway.
        """
        if not (self._pending or force):
            return False
        self._pending = False
        self._steps += 1
        lam = self._last_lam = self.lam_at(self._steps)
        if lam == 0:
            return True
        with torch.no_grad():
            if self._graphed is not None and self.batched:
                self._graphed.step(lam, [self._lr(g) for g in self._graphed.groups])
                return True
            denoms = None if self._kind == "sgd" else AdamDenominators(self._groups, self._optimizer.state, self._owner)
            work = []
            for g, live in zip(self._groups, self._live()):
                lr = self._lr(g)
                if live and lr != 0:  # tau = weight * lam * lr has a nonzero entry (weights are checked once)
                    work.append((g, g.weight.double() * (lam * lr)))
                elif denoms is not None:  # a group with tau == 0 is skipped
                    denoms.release(g)
            if self.batched:
                self._reset(work, prox_all(work, denoms))
            else:  # group by group (the distributed path): each group's momentum reset before the next
                for g, tau in work:
                    self._reset([(g, tau)], [self._euclidean(g, tau) if denoms is None else self._conditioned(g, tau, denoms)])
        return True

    def masks(self) -> dict[str, Tensor]:
        """Channels at exactly zero per penalised group (True = remove), for ``prune(masks=...)``.

        A group whose every channel is zero keeps its channel 0 (``prune`` keeps at least one).
        """
        out = {}
        for g in self._groups:
            zero = self._zero(g)
            if bool(zero.all()):
                zero[0] = False
            out[g.name] = zero.cpu()
        return out

    def stats(self) -> ProxStats:
        """Groups and channels at exactly zero, and the fraction ``masks()`` removes."""
        zero = {g.name: self._zero(g) for g in self._groups}
        channels = sum(g.size for g in self._groups)
        removable = sum(int(z.sum()) - int(bool(z.all())) for z in zero.values())
        return ProxStats(
            steps=self._steps,
            lam=self._last_lam,
            groups=len(self._groups),
            groups_zero=sum(bool(z.all()) for z in zero.values()),
            groups_sparse=sum(bool(z.any()) for z in zero.values()),
            channels=channels,
            channels_zero=sum(int(z.sum()) for z in zero.values()),
            removable=removable,
            fraction_removable=removable / max(channels, 1),
            zero={name: int(z.sum()) for name, z in zero.items()},
        )

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the step count (the schedule's clock) and the settings it ran with."""
        return {"version": _STATE_VERSION, "steps": self._steps, "lam": self.lam, "last_lam": self._last_lam}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()`` (``lam`` and weights stay as constructed)."""
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise SparseKitError(f"state_dict: expected a mapping with version {_STATE_VERSION}")
        steps = state.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise SparseKitError(f"state_dict: steps must be a non-negative integer, got {steps!r}")
        self._steps, self._last_lam = steps, float(state.get("last_lam", 0.0))

    def remove(self) -> None:
        """Detach from the optimizer (its step hook is removed)."""
        self._handle.remove()

    # -- the proximal steps ----------------------------------------------------------------------
    def _lr(self, g: ProxGroup) -> float:
        lrs = {float(self._owner[id(s.param)]["lr"]) for s in g.segments}
        if len(lrs) > 1:
            raise SparseKitError(f"group {g.name!r}: its parameters have different learning rates {sorted(lrs)}")
        lr = lrs.pop() if lrs else 0.0
        if lr < 0:  # thresholds are then non-negative by construction: the engine need not check them
            raise SparseKitError(f"group {g.name!r}: learning rate {lr} is negative")
        return lr

    def _live(self) -> list[bool]:
        """Per group, whether its weights have a nonzero entry (read back once, on the first step)."""
        if self._weights_live is None:
            self._weights_live = _flags([g.weight.any() for g in self._groups])
        return self._weights_live

    def _reset(self, work: list[tuple[ProxGroup, Tensor]], dead: list[Tensor]) -> None:
        """Zero the optimizer momentum (SGD ``momentum_buffer``, Adam ``exp_avg``) of the killed channels."""
        if not self.reset_state:
            return
        key = "momentum_buffer" if self._kind == "sgd" else "exp_avg"
        free = bool(dead) and sync_free(dead[0].device)  # then every group's buffers are rewritten, no flag read back
        for (g, _), d, any_dead in zip(work, dead, [True] * len(dead) if free else _flags([d.any() for d in dead])):
            if any_dead:
                for s in g.segments:
                    buf = self._optimizer.state.get(s.param, {}).get(key)
                    if isinstance(buf, Tensor):
                        s.zero(buf, d)

    def _zero(self, g: ProxGroup) -> Tensor:
        amax = torch.zeros(g.size, device=g.weight.device)
        for s in g.segments:
            amax = torch.maximum(amax, s.absmax())
        return g.reduce(amax, dist.ReduceOp.MAX if g.pg is not None else None) == 0

    def _euclidean(self, g: ProxGroup, tau: Tensor) -> Tensor:
        """``w <- max(0, 1 - tau/||w||) w``; returns the channels it killed."""
        pieces = [solve.Piece(s.data(), slots=s.slots, counted=s.counted, fetch=s.data, write=s.commit) for s in g.segments]
        return solve.euclidean(pieces, tau, reduce=g.reduce, overlap=g.overlap)

    def _conditioned(self, g: ProxGroup, tau: Tensor, denoms: AdamDenominators) -> Tensor:
        """Prox in Adam's metric ``sqrt(v / (1 - beta2^t)) + eps``; returns the channels it killed."""
        pieces = [
            solve.Piece(s.data(), s.data(denoms(s.param)), s.slots, s.counted, fetch=s.data, write=s.commit) for s in g.segments
        ]
        dead = solve.conditioned(pieces, tau, reduce=g.reduce, overlap=g.overlap)
        denoms.release(g)
        return dead
