"""Training to group sparsity: the plan's groups, proximal steps after each optimizer step.

``ProximalStep`` applies the prox of ``lam * sum_g weight_g ||w_g||`` (group lasso over the plan's
channels) after every ``optimizer.step()``: Euclidean for SGD, and for Adam/AdamW the prox in the
optimizer's own metric ``diag(sqrt(v_hat) + eps) / lr``, so the step is the proximal step of the
preconditioned update. Groups are proxed one after another in plan order, each exactly.

Under ``torch.distributed`` the same step runs on every rank. Replicated parameters (DDP) need
nothing more. FSDP2 parameters (``fully_shard``: DTensors sharded on dim 0, shards of any sizes) are
viewed on each rank's local shard; per-channel partial sums (of squares, and of the conditioned
prox's Newton terms) are all-reduced across the mesh, so no parameter is ever gathered.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .engine import BlockCoupling, SparseBlock, View
from .engine.block import _Part
from .errors import SparseKitError
from .plan.bind import member_spec
from .plan.layout import strided_layout
from .plan.schema import Group, Member, Plan

__all__ = ["LamSchedule", "ProxStats", "ProximalStep"]

_TINY = torch.finfo(torch.float32).tiny
_STATE_VERSION = 1


class LamSchedule(BaseModel):
    """How ``lam`` evolves with the optimizer steps ``t = 1, 2, ...`` the prox has seen.

    * ``constant``: ``lam`` at every step.
    * ``warmup``: no penalty for the first ``steps`` steps (dense warm-up), then ``lam``.
    * ``linear``: ``lam * (start + (end - start) * min(1, t / steps))``, e.g. a ramp from 0.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "warmup", "linear"] = "constant"
    steps: int = Field(default=0, ge=0)
    start: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    end: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)

    @classmethod
    def constant(cls) -> LamSchedule:
        return cls()

    @classmethod
    def warmup(cls, steps: int) -> LamSchedule:
        return cls(kind="warmup", steps=steps)

    @classmethod
    def linear(cls, steps: int, start: float = 0.0, end: float = 1.0) -> LamSchedule:
        return cls(kind="linear", steps=steps, start=start, end=end)

    def factor(self, t: int) -> float:
        """Multiplier of ``lam`` at step ``t`` (1-based)."""
        if self.kind == "warmup":
            return 0.0 if t <= self.steps else 1.0
        if self.kind == "linear":
            return self.end if self.steps == 0 else self.start + (self.end - self.start) * min(1.0, t / self.steps)
        return 1.0


class ProxStats(BaseModel):
    """Where training to sparsity stands: channels (and whole groups) at exactly zero."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int  # optimizer steps seen (skipped ones not counted)
    lam: float  # lam of the latest step, schedule applied
    groups: int  # penalised groups
    groups_zero: int  # groups with every channel at zero
    groups_sparse: int  # groups with at least one channel at zero
    channels: int
    channels_zero: int
    removable: int  # channels ``masks()`` removes (every zero channel, but one kept per group)
    fraction_removable: float
    zero: dict[str, int]  # channels at zero, per group


# -- where a group's elements live on this rank ---------------------------------------------------
def _local(t: Tensor) -> Tensor:
    """The rank-local tensor of a DTensor, else ``t`` itself."""
    return t.to_local() if _is_dtensor(t) else t


def _shares(a: Tensor, b: Tensor) -> bool:
    """``a`` is a view into ``b``'s storage (rows handed out without a copy)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


class _Segment:
    """One member's elements on this rank, as rows of its group's channel grid.

    Tensors passed in are laid out like the optimizer's parameter (the parameter itself, its
    gradient-shaped optimizer state); DTensors are read on their local shard.
    """

    param: Tensor  # the optimizer's parameter
    name: str  # the parameter's name, for errors
    slots: Tensor | None  # (R,) channel of each row; None: row i is channel i
    counted: bool  # adds to the partial sums (a replicated member counts on one rank only)
    size: int

    def sums(self, rows: Tensor) -> Tensor:
        """(R,) per-row values -> (size,) per-channel sums."""
        if self.slots is None:
            return rows
        return rows.new_zeros(self.size).index_add_(0, self.slots, rows)

    def spread(self, per_channel: Tensor) -> Tensor:
        """(size,) -> (R,)."""
        return per_channel if self.slots is None else per_channel[self.slots]

    def sumsq(self) -> Tensor:
        """``(size,)`` float64 partial sums of squares per channel (float64: shards sum in any order)."""
        x = self.data()
        per_row = x.new_zeros(x.shape[1], dtype=torch.float64)
        for c in _chunks(x):
            per_row[c[1]] += _sumsq(x[c].double())
        return self.sums(per_row)

    def absmax(self) -> Tensor:
        """``(size,)`` largest absolute value per channel (0 where the segment has none)."""
        x = self.data()
        per_row = x.abs().amax(dim=(0, 2)).float() if x.numel() else x.new_zeros(x.shape[1], dtype=torch.float32)
        if self.slots is None:
            return per_row
        return per_row.new_zeros(self.size).scatter_reduce_(0, self.slots, per_row, "amax")

    def scale(self, m: Tensor) -> None:
        """Multiply channel ``i`` by ``m[i]``, in place."""
        x = self.data()
        mult = self.spread(m).to(x.dtype)[None, :, None]
        for c in _chunks(x):
            x[c] *= mult[:, c[1]]
        self.commit(x)

    def data(self, t: Tensor | None = None) -> Tensor:
        """``(A, R, P)``: row ``r`` of the segment is ``[:, r, :]``; a live view where possible, else a copy."""
        raise NotImplementedError

    def commit(self, x: Tensor) -> None:
        """Write ``x`` (from ``data()``, changed) back into the parameter if it is a copy."""
        raise NotImplementedError

    def zero(self, t: Tensor, mask: Tensor) -> None:
        raise NotImplementedError


class _PartSegment(_Segment):
    """A bound member: one part of an engine coupling, its grid flattened row-major.

    ``natural``: the member as a ``(pre, channels, block * post)`` view of its parameter (plan
    members with one channel axis), which the conditioned prox works on in place; without it,
    the part's rows are copied out and written back.
    """

    def __init__(self, part: _Part, param: Tensor, name: str, counted: bool = True, natural: View | None = None) -> None:
        self.part, self.spec, self.param, self.name, self.counted, self.natural = part, part.spec, param, name, counted, natural
        self.slots, self.size = None, math.prod(part.grid)

    def _window(self, t: Tensor) -> Tensor:
        return self.spec.view.window(_local(t))

    def data(self, t: Tensor | None = None) -> Tensor:
        if self.natural is not None:
            return self.natural.data if t is None else self.natural.window(_local(t))
        rows = self.part.rows(self.spec.data if t is None else self._window(t), dtype=None)
        return rows.contiguous().unsqueeze(0)  # contiguous: reducing a transposed view is 10-30x slower

    def commit(self, x: Tensor) -> None:
        if self.natural is None and not _shares(x, self.spec.data):
            self.part.write_rows(x[0])

    def zero(self, t: Tensor, mask: Tensor) -> None:
        elements = self.spec.expand_blocks(self.part.from_grid(mask.reshape(self.part.grid)))
        self._window(t).masked_fill_(elements, 0)


class _RowSegment(_Segment):
    """A member on the sharded axis 0 of an FSDP2 parameter: its local rows, each mapped to a channel."""

    def __init__(self, param: Tensor, name: str, rows: Tensor, slots: Tensor, size: int) -> None:
        self.param, self.name, self.slots, self.size, self.counted = param, name, slots, size, True
        self.idx = rows  # local row indices, ascending
        n = rows.numel()
        first = int(rows[0]) if n else 0
        self.span = (first, first + n) if n and int(rows[-1]) == first + n - 1 else None

    def _2d(self, t: Tensor | None) -> Tensor:
        local = _local(self.param if t is None else t)
        return local.reshape(local.shape[0], math.prod(local.shape[1:])) if local.ndim else local.reshape(1, 1)

    def _sel(self, t2d: Tensor) -> Tensor:
        return t2d[self.span[0] : self.span[1]] if self.span is not None else t2d.index_select(0, self.idx)

    def data(self, t: Tensor | None = None) -> Tensor:
        return self._sel(self._2d(t)).unsqueeze(0)

    def commit(self, x: Tensor) -> None:
        t2d = self._2d(None)
        if not _shares(x, t2d):
            t2d.index_copy_(0, self.idx, x[0])

    def zero(self, t: Tensor, mask: Tensor) -> None:
        t2d = self._2d(t)
        t2d.index_fill_(0, self.idx[self.spread(mask)], 0)


@dataclass
class _Group:
    name: str
    size: int
    segments: list[_Segment]
    weight: Tensor  # (size,) float32
    pg: Any  # process group the partial sums are all-reduced over, or None

    def __post_init__(self) -> None:
        params = [id(s.param) for s in self.segments]
        self.overlap = len(set(params)) < len(params)  # one parameter on two axes: blocks share elements

    def reduce(self, t: Tensor, op: Any = None) -> Tensor:
        if self.pg is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op, group=self.pg)
        return t


# -- the groups of a plan (or of engine couplings) on this rank ------------------------------------
def _shard(p: Tensor, name: str) -> tuple[Any, int, int] | None:
    """``(process group, rank in it, first global row of the local shard)`` for a Shard(0) DTensor."""
    if not _is_dtensor(p):
        return None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(p.placements)
    if all(isinstance(pl, Replicate) for pl in placements):
        return None
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise SparseKitError(
            f"param {name!r}: placements {placements} are not supported (fully_shard's Shard(0) on a 1-d mesh, or replicated)"
        )
    mesh = p.device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    rows, local_rows = p.shape[0], p.to_local().shape[0]
    chunk = -(-rows // world)  # torch.chunk: every shard ceil(rows / world) rows, the last ones short or empty
    first = min(rank * chunk, rows)
    if first + local_rows > rows:
        raise SparseKitError(f"param {name!r}: local shard of {local_rows} rows at row {first} exceeds {rows} rows")
    return mesh.get_group(0), dist.get_rank(mesh.get_group(0)), first


def _natural(m: Member, p: Tensor) -> View | None:
    """The member as a ``(pre, channels, block * post)`` view of ``p`` (one channel axis only)."""
    layout = strided_layout(m.positions())
    if layout is None or len(layout.sizes) != 1:
        return None
    pre, post, size = math.prod(p.shape[: m.axis]), math.prod(p.shape[m.axis + 1 :]), p.shape[m.axis]
    shape = (pre, layout.sizes[0], m.block * post)
    return View(p, shape, (size * post, layout.strides[0] * m.block * post, 1), offset=layout.base * m.block * post)


def _member_numel(m: Member, p: Tensor) -> int:
    """Elements one channel of ``m`` owns in ``p`` (global shape)."""
    return p.numel() // p.shape[m.axis] * m.block


def _plan_segments(g: Group, params: Mapping[str, Tensor]) -> tuple[list[_Segment], Any]:
    """Segments of one group on this rank, and the process group its partial sums need."""
    members = [m for m in g.members if m.param in params]
    shards = {m.param: _shard(params[m.param], m.param) for m in members}
    groups = {id(s[0]): s for s in shards.values() if s is not None}
    if not groups:  # every parameter whole on this rank (single process, DDP): one engine coupling
        coupling = BlockCoupling([member_spec(m, params[m.param]) for m in members], [m.order for m in members], name=g.name)
        return [
            _PartSegment(part, params[m.param], m.param, natural=_natural(m, params[m.param]))
            for m, part in zip(members, coupling._parts())
        ], None
    if len(groups) > 1:
        raise SparseKitError(f"group {g.name!r}: its parameters are sharded over different device meshes")
    pg, rank, _ = next(iter(groups.values()))
    out: list[_Segment] = []
    for m in members:
        p, info = params[m.param], shards[m.param]
        local = _local(p)
        if info is not None and m.axis == 0:  # channels split across ranks: local rows, each to its channel
            pos = torch.tensor(m.positions(), dtype=torch.long, device=local.device)
            rows = (pos[:, None] * m.block + torch.arange(m.block, device=local.device)).reshape(-1) - info[2]
            slots = torch.arange(g.size, device=local.device).repeat_interleave(m.block)
            keep = (rows >= 0) & (rows < local.shape[0])
            rows, slots = rows[keep], slots[keep]
            order = rows.argsort()
            out.append(_RowSegment(p, m.param, rows[order], slots[order], g.size))
        elif local.numel():  # every channel, over this rank's rows (or a whole replicated parameter)
            part = BlockCoupling([member_spec(m, local)], [m.order], name=g.name)._parts()[0]
            out.append(_PartSegment(part, p, m.param, counted=info is not None or rank == 0, natural=_natural(m, local)))
    return out, pg


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


def _weights(given: Mapping[str, float | Tensor] | None, groups: list[_Group], why_not: Callable[[str], str | None]) -> None:
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

    Raises:
        SparseKitError: An unsupported optimizer or option (amsgrad, maximize), a frozen parameter
            or one the optimizer does not hold, a bad ``lam``/``weights``/``schedule``.
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
                segments, pg = _plan_segments(g, params)
                numel = sum(_member_numel(m, params[m.param]) for m in g.members if m.param in params)
                groups.append(_Group(g.name, g.size, segments, torch.full((g.size,), math.sqrt(numel)), pg))

        def why_not(name: str) -> str | None:
            if not any(g.name == name for g in plan.groups):
                return None
            g = plan.group(name)
            if not g.prunable:
                return f"group {name!r} is pinned ({g.reason})"
            return f"group {name!r} is not zero-invariant" if not g.zero_invariant else f"group {name!r} has no parameters"

        self._setup(groups, optimizer, lam, weights, schedule, reset_state, why_not)

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
    ) -> ProximalStep:
        """The same step over engine couplings (e.g. ``bind(plan, model)``), keyed by group name.

        Every coupling is penalised; each spec's view must look into a parameter the optimizer holds.
        Default weights are ``sqrt(coupling.numel_per_block())``.
        """
        groups = []
        for name, c in couplings.items():
            if not isinstance(c, SparseBlock):
                raise SparseKitError(f"couplings[{name!r}]: expected a BlockCoupling, got {type(c).__name__}")
            segments: list[_Segment] = [
                _PartSegment(part, part.spec.view.param, part.spec.name or f"<spec {i} of {name}>")
                for i, part in enumerate(c._parts())
            ]
            groups.append(_Group(name, c.numblk(), segments, torch.full((c.numblk(),), math.sqrt(c.numel_per_block())), None))
        self = cls.__new__(cls)
        self._setup(groups, optimizer, lam, weights, schedule, reset_state, lambda name: None)
        return self

    def _setup(
        self,
        groups: list[_Group],
        optimizer: torch.optim.Optimizer,
        lam: float,
        weights: Mapping[str, float | Tensor] | None,
        schedule: LamSchedule | Callable[[int], float] | None,
        reset_state: bool,
        why_not: Callable[[str], str | None],
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
            device = _local(g.segments[0].param).device if g.segments else torch.device("cpu")
            g.weight = g.weight.to(device)
        self._groups, self._optimizer, self._owner = groups, optimizer, owner
        self.lam, self.schedule, self.reset_state = lam, schedule, reset_state
        self._steps, self._last_lam, self._pending = 0, 0.0, False
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
            for g in self._groups:
                tau = g.weight.double() * (lam * self._lr(g))
                if not bool(tau.any()):
                    continue
                dead = self._euclidean(g, tau) if self._kind == "sgd" else self._conditioned(g, tau)
                if dead is not None and self.reset_state and bool(dead.any()):
                    key = "momentum_buffer" if self._kind == "sgd" else "exp_avg"
                    for s in g.segments:
                        buf = self._optimizer.state.get(s.param, {}).get(key)
                        if isinstance(buf, Tensor):
                            s.zero(buf, dead)
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
    def _lr(self, g: _Group) -> float:
        lrs = {float(self._owner[id(s.param)]["lr"]) for s in g.segments}
        if len(lrs) > 1:
            raise SparseKitError(f"group {g.name!r}: its parameters have different learning rates {sorted(lrs)}")
        return lrs.pop() if lrs else 0.0

    def _zero(self, g: _Group) -> Tensor:
        amax = torch.zeros(g.size, device=g.weight.device)
        for s in g.segments:
            amax = torch.maximum(amax, s.absmax())
        return g.reduce(amax, dist.ReduceOp.MAX if g.pg is not None else None) == 0

    def _euclidean(self, g: _Group, tau: Tensor) -> Tensor:
        """``w <- max(0, 1 - tau/||w||) w``; returns the channels it killed."""
        sumsq = torch.zeros(g.size, device=tau.device, dtype=torch.float64)
        for s in g.segments:
            if s.counted:
                sumsq += s.sumsq()
        g.reduce(sumsq)
        scale = (1 - tau / sumsq.sqrt().clamp_min(_TINY)).clamp_(min=0)
        for s in g.segments:
            s.scale(scale)
        return (scale == 0) & (sumsq > 0)

    def _conditioned(self, g: _Group, tau: Tensor) -> Tensor | None:
        """Prox in Adam's metric; returns the channels it killed."""
        w_rows, h_rows = [], []
        for s in g.segments:
            state = self._optimizer.state.get(s.param, {})
            if "exp_avg_sq" not in state:
                raise SparseKitError(f"group {g.name!r}: param {s.name!r} has no adam state yet (no gradient so far?)")
            pg = self._owner[id(s.param)]
            bias_sqrt = math.sqrt(1 - float(pg["betas"][1]) ** float(state["step"]))
            w, v = s.data(), s.data(state["exp_avg_sq"])
            h = torch.empty(v.shape, dtype=torch.float64 if v.dtype == torch.float64 else torch.float32, device=v.device)
            for c in _chunks(v):  # Adam's denominator: sqrt(v / (1 - beta2^t)) + eps
                torch.sqrt(v[c], out=h[c]).div_(bias_sqrt).add_(float(pg["eps"]))
            w_rows.append(w)
            h_rows.append(h)
        return _solve(g, tau, w_rows, h_rows)


def _solve(g: _Group, tau: Tensor, w_rows: list[Tensor], h_rows: list[Tensor]) -> Tensor:
    """The conditioned prox of every channel of ``g`` at once, written back; returns the killed channels.

    For a channel with elements ``w``, conditioner ``h`` and ``y = h w``: zero if ``||y|| <= tau``,
    else ``x = y / (h + mu)`` where ``mu > 0`` solves ``mu * ||y / (h + mu)|| = tau``. Newton runs on
    the secular form ``phi(mu) = 1/||y / (h + mu)|| - mu/tau`` (concave, nearly linear: exact in one
    step when ``h`` is constant), its first step taken from ``mu = 0`` with sums the setup pass
    computes anyway, bracket-guarded by the lower bound ``tau / ||w||``. Per-row sums are float32
    (cascade summation) combined in float64 and all-reduced across shards. Channels near death
    (``||y|| < 2 tau``, where the root amplifies rounding by ``||y|| / (||y|| - tau)``) are then
    re-solved from there in float64. Every pass walks the data in cache-sized chunks: the work is
    memory-bound, and temporaries that stay in cache make it several times faster.

    Args:
        g: The group.
        tau: ``(size,)`` float64 thresholds.
        w_rows: Per segment, ``data()`` of the parameter (written through, or committed).
        h_rows: Per segment, the conditioner laid out like ``w_rows`` (float32 or float64).
    """
    f64, size, segs = torch.float64, g.size, g.segments
    sums = tau.new_zeros(3, size, dtype=f64)
    y_rows = []
    for s, w, h in zip(segs, w_rows, h_rows):
        y = torch.empty_like(h)
        part = h.new_zeros(3, h.shape[1], dtype=f64)
        for c in _chunks(h):
            wc = w[c].to(h.dtype)
            torch.mul(h[c], wc, out=y[c])
            part[0, c[1]] += _sumsq(y[c])  # ||y||^2
            part[1, c[1]] += _sumsq(wc)  # ||w||^2
            part[2, c[1]] += _dot(wc, wc / h[c])  # sum w^2 / h
        y_rows.append(y)
        if s.counted and h.numel():
            sums += _to_channels(part, s.slots, size)
    g.reduce(sums)
    norm, t = sums[0].sqrt(), tau.double()
    survive = norm > t
    active = survive & (t > 0)
    q0 = sums[1].sqrt().clamp_min(_TINY)
    lower = torch.where(active, t / q0, 0.0)  # mu >= tau / ||w||
    start = (1 / q0) / (1 / t - sums[2] / q0**3)  # Newton from mu = 0 (phi = 1/||w||), for free
    start = torch.where(active & (start > lower) & torch.isfinite(start), start, lower)
    mu = _newton([(h, y, s.slots, s.counted) for s, h, y in zip(segs, h_rows, y_rows)], g, t, start, lower, ~active)
    heavy = active & (norm < 2 * t)
    if bool(heavy.any()):
        ids = heavy.nonzero().squeeze(1)
        fine = []
        norm2 = tau.new_zeros(size, dtype=f64)
        for s, w, h in zip(segs, w_rows, h_rows):
            rows = s.spread(heavy)
            h64 = h[:, rows].double()
            y64, slots = h64 * w[:, rows].double(), ids if s.slots is None else s.slots[rows]
            fine.append((h64, y64, slots, s.counted))
            if s.counted and y64.numel():
                norm2.index_add_(0, slots, y64.square().sum((0, 2)))
        survive = torch.where(heavy, g.reduce(norm2).sqrt() > t, survive)
        mu = _newton(fine, g, t, mu, lower, ~(heavy & survive))
    untouched = survive & ~active  # tau = 0: left exactly as they are
    any_untouched, any_dead = bool(untouched.any()), not bool(survive.all())  # one host sync each, per group
    for s, w, h, y in zip(segs, w_rows, h_rows, y_rows):
        m = s.spread(mu).to(h.dtype)[None, :, None]
        keep, dead = s.spread(untouched), s.spread(~survive)
        saved = w[:, keep].clone() if any_untouched and not g.overlap else None
        if g.overlap:  # an element in two blocks is shrunk by both: multiply what earlier segments wrote
            w = s.data()
            for c in _chunks(w):
                w[c] = w[c] * (h[c] / h[c].add(m[:, c[1]]))  # h / (h + mu): exactly 1 where mu = 0
        else:
            for c in _chunks(w):  # x = y / (h + mu), straight into the parameter where dtypes allow
                target, d = w[c], h[c].add_(m[:, c[1]])
                if target.dtype == y.dtype:
                    torch.div(y[c], d, out=target)
                else:
                    target.copy_(y[c] / d)
        if saved is not None:
            w[:, keep] = saved
        if any_dead:
            w[:, dead] = 0
        s.commit(w)
    return ~survive & (sums[1] > 0)


def _chunks(x: Tensor) -> list[tuple[slice, slice]]:
    """Index pairs cutting an ``(A, R, P)`` tensor into pieces of about ``_CHUNK`` elements (CPU caches;
    on an accelerator one piece: many small kernels cost more than the memory traffic they save)."""
    outer, rows, inner = x.shape
    if x.device.type != "cpu":
        return [(slice(None), slice(None))]
    if outer > 1:
        step = max(1, _CHUNK // max(1, rows * inner))
        return [(slice(a, min(a + step, outer)), slice(None)) for a in range(0, outer, step)]
    step = max(1, _CHUNK // max(1, inner))
    return [(slice(None), slice(a, min(a + step, rows))) for a in range(0, rows, step)]


def _sumsq(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)``: sums of squares over dims 0 and 2."""
    return torch.linalg.vector_norm(x[0], dim=1).square_() if x.shape[0] == 1 else _sum02(x * x)


def _dot(x: Tensor, z: Tensor) -> Tensor:
    """``(a, r, p), (a, r, p) -> (r,)``: sums of products over dims 0 and 2."""
    return torch.linalg.vecdot(x[0], z[0], dim=1) if x.shape[0] == 1 else _sum02(x * z)


def _sum02(x: Tensor) -> Tensor:
    """``(a, r, p) -> (r,)`` for a contiguous ``x``: a GEMV over dim 0 (a strided sum is far slower), then dim 2."""
    a, r, p = x.shape
    rows = (x.new_ones(1, a) @ x.reshape(a, r * p)).reshape(r, p)
    return rows.sum(1) if p > 1 else rows.reshape(r)


def _to_channels(per_row: Tensor, slots: Tensor | None, size: int) -> Tensor:
    """(k, R) per-row sums -> (k, size) per-channel sums."""
    if slots is None:
        return per_row
    return per_row.new_zeros(per_row.shape[0], size).index_add_(1, slots, per_row)


def _newton(
    parts: list[tuple[Tensor, Tensor, Tensor | None, bool]], g: _Group, t: Tensor, mu: Tensor, lo: Tensor, done: Tensor
) -> Tensor:
    """Safeguarded Newton on ``phi`` for the channels not ``done``, from ``mu`` (``lo``: a lower bound).

    ``parts``: per segment, ``(h, y, slots, counted)`` shaped ``(A, R, P)``; ``slots`` maps rows to
    channels (None: row ``i`` is channel ``i``). Returns ``mu`` (float64, ``(size,)``).

    A Newton step ``delta`` (relative) leaves an error of at most ``c delta^2`` with
    ``c = 3 rho / (2 (1 - rho))``, ``rho = tau T / q^3 in [0, 1)`` (``mu |phi''| <= 3 T / q^3`` and
    ``|phi'| = (1 - rho) / tau``): a step is accepted without another pass once ``c delta^2`` is
    8x below ``rtol``, or when ``delta <= rtol``.
    """
    size, f64 = t.numel(), torch.float64
    lo, hi, done = lo.clone(), torch.full_like(mu, math.inf), done.clone()
    for _ in range(_MAX_ITER):
        if bool(done.all()):
            break
        st = t.new_zeros(2, size)
        for h, y, slots, counted in parts:
            if counted and y.numel():
                m = (mu if slots is None else mu[slots]).to(h.dtype)[None, :, None]
                part = y.new_zeros(2, y.shape[1], dtype=f64)
                for c in _chunks(y):
                    d = h[c].add(m[:, c[1]])  # h + mu
                    u = torch.div(y[c], d)  # y / (h + mu)
                    part[0, c[1]] += _sumsq(u)
                    part[1, c[1]] += _dot(u, u.div(d))  # y^2 / (h + mu)^3
                st += _to_channels(part, slots, size)
        g.reduce(st)
        q = st[0].sqrt()
        phi = 1 / q - mu / t
        slope = st[1] / (st[0] * q) - 1 / t  # d/dmu 1/q = sum y^2 / (h + mu)^3 / q^3
        step = mu - phi / slope
        lo = torch.where(phi > 0, mu, lo)
        hi = torch.where(phi < 0, mu, hi)
        fallback = torch.where(torch.isinf(hi), 2 * lo, 0.5 * (lo + hi))
        newton = (step > lo) & (step < hi)  # also false for nan
        step = torch.where(newton, step, fallback)
        delta = (step - mu).abs() / step
        rho = (t * st[1] / (st[0] * q)).clamp(0.0, 1.0)
        c = 1.5 * rho / (1 - rho).clamp_min(_TINY)
        converged = (delta <= _RTOL) | (newton & (delta <= 1e-2) & (8 * c * delta * delta <= _RTOL))
        mu = torch.where(done, mu, step)
        done |= converged
    return mu


_CHUNK = 1 << 17  # elements per slice of rows: a few such temporaries fit in a core's L2 cache
_MAX_ITER = 50
_RTOL = 1e-6
