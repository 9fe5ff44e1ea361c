"""``prune``: importance -> masks -> surgery, checked and transactional."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..errors import PlanError, SparseKitError, TraceError
from ..graph.export_bound import bounded_by
from ..graph.forward_modes import one_code_scan, traced_modes
from ..graph.trace import is_exported, trace_graph
from ..model_state import kept
from ..plan.bind import bind
from ..plan.min_keep import check_min_keep
from ..plan.planner import check_planned
from ..plan.schema import Plan
from ..plan.ties import check_tied_masks, snap_tied
from . import data_importance as _data_importance  # noqa: F401  (registers taylor, activation)
from .checks import check_pruned
from .claims import check_claims
from .copying import copy_model
from .hf import adopt_sizes, fit_config
from .importance import Criterion, ImportanceContext, group_scores, masks_from_scores
from .macs import count_macs, count_params
from .surgery import remove_channels, undone_on_failure
from .untraced_forwards import check_untraced_forwards

__all__ = ["PruneReport", "PruneResult", "checked_masks", "prune"]


class PruneReport(BaseModel):
    """What pruning did: sizes before and after, channels kept per group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    kept: dict[str, int]
    sizes: dict[str, int]
    reloadable: bool | None = None  # a Hugging Face model: its config describes the pruned shapes

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


@dataclass
class PruneResult:
    """The smaller model, the masks applied (True = removed), and the report."""

    model: nn.Module
    masks: dict[str, Tensor]
    report: PruneReport
    plan: Plan


@one_code_scan()  # its traces and the copies it prunes share one scan of the code
def prune(
    model: nn.Module,
    plan: Plan,
    *,
    ratio: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    importance: str | Criterion = "l2",
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    inplace: bool = False,
    global_ranking: bool = False,
    round_to: int | None = None,
    uniform: bool = False,
    seed: int = 0,
) -> PruneResult:
    """Remove channels from ``model`` following ``plan``.

    Args:
        model: The model the plan was made for.
        plan: Its plan, checked against the model first: it must fit, and the model is
            planned again with the plan's recorded ``options`` and inputs: the plan must be
            that plan with edits that apply (``ratio``, ``keep``, groups pinned by hand). A
            plan loaded from a file, edited, made for another model, or made before the
            forward changed (a flag, a config, ``.half()``) is refused where it differs.
        ratio: Fraction of each prunable group's channels to remove (a group's own
            ``ratio``/``keep`` override it). Ignored when ``masks`` is given.
        masks: Explicit masks by group name (``True`` = remove), applied exactly; groups
            not named keep every channel.
        importance: A registered criterion (``"l2"``, ``"l1"``, ``"random"`` seeded by ``seed``,
            ``"taylor"``, ``"activation"``; see ``register_importance``) or a callable
            ``ImportanceContext -> {group: scores}``.
        calibration: Batches for data-driven criteria: model inputs (tensor, tuple or dict),
            or ``(inputs, target)`` pairs when ``loss_fn`` is given. The model is left exactly
            as it was (eval mode inside; no ``.grad`` written; BatchNorm statistics unchanged).
        loss_fn: ``loss_fn(output, target) -> scalar tensor``, needed by ``"taylor"``.
        inplace: Prune ``model`` itself, once a copy was pruned and checked. Every module
            object is kept (a reference such as ``layer = model.layer1[0].conv1`` sees the
            smaller layer afterwards); the pruned parameters and buffers are new tensors, so
            an optimizer built on the old parameters must be rebuilt. If any step fails,
            nothing of ``model`` changes.
        global_ranking: Rank channels across groups instead of per group.
        round_to: Keep a multiple of this many channels per group.
        uniform: Snap like groups (the same layer in every block: same size and member
            layout) to one kept count, each keeping its own best channels. With a per-group
            ``ratio`` counts are uniform already; with ``global_ranking`` this is what lets a
            Hugging Face config describe the pruned model (``report.reloadable``).

    Returns:
        ``PruneResult`` with the pruned model (``model`` itself if ``inplace``).

    Raises:
        PlanError: The plan does not fit, is not the planner's plan of this model (with edits
            that apply), or masks/ratio are invalid. The model is unchanged.
        SparseKitError: The pruned model would not run or changes the output shapes. The
            model is unchanged.
    """
    ratio, round_to, seed = _checked_args(model, plan, ratio, masks, round_to, seed)
    plan.check(model)
    check_planned(plan, model)  # the planner's plan of the model as it is now, with edits that apply
    if masks is None:
        if ratio is None or not 0.0 <= ratio < 1.0:
            raise PlanError(f"ratio must be in [0, 1), got {ratio!r}")
        if round_to is not None and round_to < 1:
            raise PlanError(f"round_to must be a positive integer, got {round_to!r}")
        if importance != "random" and any(t.device.type == "meta" for t in model.parameters()):
            raise PlanError(f"importance {importance!r} needs real weights: the model is on the meta device (use masks=)")
        couplings = bind(plan, model, check=False)
        prunable = {g.name: couplings[g.name] for g in plan.prunable if g.name in couplings}
        ctx = ImportanceContext(model, plan, prunable, calibration, loss_fn, torch.Generator().manual_seed(seed))
        scores = group_scores(importance, ctx)  # a group of buffers only (no coupling): its first channels
        chosen = masks_from_scores(
            plan.prunable, scores, ratio, round_to=round_to, global_ranking=global_ranking, uniform=uniform
        )
        chosen = snap_tied(plan, chosen, scores)  # tied parts (experts, query heads per KV group) lose equally
    else:
        chosen = checked_masks(plan, masks)
    check_min_keep(plan, chosen)
    check_tied_masks(plan, chosen)
    inputs = plan.example_inputs(model)
    with kept(model, values=False):  # tracing runs forward's Python on the user's modules
        before_gm = trace_graph(model, inputs, verify=True)
    work = copy_model(model)
    remove_channels(work, plan, chosen)
    try:
        with bounded_by(before_gm):  # under torch.export, the model's own loop may not end at these counts
            after_gm = trace_graph(work, inputs, verify=True, export=is_exported(before_gm))  # the same tracer's
        traced_modes(work, after_gm, lambda m: trace_graph(work, inputs, train=m.train, autograd=m.autograd))  # each runs
    except TraceError as e:
        raise SparseKitError(f"the pruned model does not run; nothing was changed: {e}") from e
    _same_tracer(before_gm, after_gm)
    try:
        check_pruned(plan, chosen, before_gm, after_gm)
        if is_exported(after_gm):  # the probe tried other counts: zero-invariance at these (``claims``)
            check_claims(plan, model, chosen, inputs, before_gm, after_gm)
            check_untraced_forwards(model, work, inputs)
    except SparseKitError as e:
        cut = ", ".join(n for n, m in chosen.items() if bool(m.any()))
        raise SparseKitError(f"pruning {cut}: {e}; nothing was changed") from e
    reloadable = fit_config(model, work, inputs)
    report = PruneReport(
        params_before=count_params(model),
        params_after=count_params(work),
        macs_before=count_macs(before_gm, model),
        macs_after=count_macs(after_gm, work),
        kept={g.name: g.size - int(chosen[g.name].sum()) if g.name in chosen else g.size for g in plan.groups},
        sizes={g.name: g.size for g in plan.groups},
        reloadable=reloadable,
    )
    if inplace:
        _remove_channels_transactionally(model, plan, chosen, expected=work)
        if reloadable:
            adopt_sizes(model, work)  # the fitted config and the layer sizes it implies
        work = model
    full = {g.name: chosen.get(g.name, torch.zeros(g.size, dtype=torch.bool)) for g in plan.groups}
    return PruneResult(model=work, masks=full, report=report, plan=plan)


def _same_tracer(before: fx.Graph, after: fx.Graph) -> None:
    """Raise where the model and its pruned copy were traced by different tracers: torch.fx
    failed on one of them (an exception raised inside its forward while traced, a signal
    handler's included) and ``trace_graph`` fell back to torch.export, so their ops cannot be
    compared (``checks.same_code`` would name the first node, an ATen op or constant)."""
    if is_exported(before) != is_exported(after):
        failed = "pruned model" if is_exported(after) else "model"
        raise SparseKitError(
            f"torch.fx could not trace the {failed} where it traced the other (torch.export traced it instead), "
            "so their code cannot be compared; nothing was changed (an exception its forward raised while traced, "
            "or an interruption such as a signal handler's, stopped torch.fx)"
        )


def _remove_channels_transactionally(model: nn.Module, plan: Plan, masks: dict[str, Tensor], *, expected: nn.Module) -> None:
    """Repeat on ``model`` the surgery checked on its copy ``expected``; undo it all on failure."""
    with undone_on_failure(model):
        remove_channels(model, plan, masks)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
        if got != want:
            bad = next(k for k in want if got.get(k) != want[k])
            raise SparseKitError(f"inplace surgery gave {bad} shape {got.get(bad)}, its checked copy {want[bad]}")


def _checked_args(
    model: Any, plan: Any, ratio: Any, masks: Any, round_to: Any, seed: Any
) -> tuple[float | None, int | None, int]:
    """``prune``'s arguments of the wrong kind, named; returns ``ratio``, ``round_to`` and ``seed`` as
    Python numbers (numpy and 0-d tensor numbers included).

    Raises:
        PlanError: The argument named in the message has the wrong type.
    """
    if not isinstance(model, nn.Module):
        raise PlanError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(plan, Plan):
        raise PlanError(f"plan must be a Plan (sparsekit_graph.plan(model, inputs)), got {type(plan).__name__}")
    if masks is not None and not isinstance(masks, Mapping):
        raise PlanError(f"masks must map group names to bool tensors, got {type(masks).__name__}")
    ratio = None if ratio is None else _number("ratio", ratio, float, "a number in [0, 1)")
    round_to = None if round_to is None else _number("round_to", round_to, operator.index, "a positive integer")
    return ratio, round_to, _number("seed", seed, operator.index, "an integer")


def _number(name: str, x: Any, convert: Callable[[Any], Any], what: str) -> Any:
    """``convert(x)`` (numpy and 0-d tensor numbers included; never a bool or a string)."""
    try:
        if isinstance(x, (str, bytes, bool)):
            raise TypeError
        return convert(x)
    except (TypeError, ValueError, RuntimeError):
        raise PlanError(f"{name} must be {what}, got {x!r}") from None


def checked_masks(plan: Plan, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``masks`` checked against ``plan`` (known groups, bool of the group's size, none of a
    pinned group, never every channel), on the CPU."""
    names = {g.name: g for g in plan.groups}
    out = {}
    for name, mask in masks.items():
        g = names.get(name)
        if g is None:
            raise PlanError(f"masks: plan has no group named {name!r}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (g.size,):
            raise PlanError(f"masks[{name!r}]: expected a bool tensor of shape ({g.size},)")
        if mask.is_meta:
            raise PlanError(f"masks[{name!r}]: a mask on the meta device holds no values (make it on the CPU)")
        if bool(mask.any()) and not g.prunable:
            raise PlanError(f"masks[{name!r}]: group is pinned ({g.reason})")
        if bool(mask.all()):
            raise PlanError(f"masks[{name!r}]: would remove every channel")
        out[name] = mask.cpu()
    return out
