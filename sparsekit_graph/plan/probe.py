"""The export probe: a plan traced by ``torch.export`` is tried on a pruned copy before it is returned.

torch.export runs the forward's Python once, at the example's sizes: ``if h.shape[1] == 64``,
``assert h.size(-1) % 8 == 0`` or ``range(h.shape[1] // 16)`` leave no trace of the branch, and
``view(*h.shape[:-1], self.cfg.width)`` writes ``h.shape[-1]`` and ``cfg.width`` as one literal.
The graph cannot tell such code from code that follows a pruned size. So the planner prunes a
copy of the model (uninitialised weights) the way ``prune`` would, traces it again and runs
``prune``'s own checks (same outputs, same code, sizes followed); a group whose pruning fails is
pinned with the reason. Every group keeps a few channels (3, 5 or 7 by turns: far below any
threshold a branch tests, odd, and different in neighbouring groups so two groups that must
stay equal do not), all groups at once. Where the model's code decided on an attribute surgery
rewrites (``if self.num_heads > 2``: a ``SizeTest`` recorded while traced), the group keeps a
count that flips that decision instead, so prune's checks see the other branch's code (HF's
``if n_rep == 1: return x`` drops only re-views: the same code). On a failure, bisection over
the groups (a tie's groups stay together) finds the ones to pin, and the rest is tried again
until it passes. One extra trace when nothing fails, with static batch and length (about half
a dynamic export's cost; the checks pair it with the plan's dynamic trace). The user's model
is never touched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import SparseKitError, TraceError
from ..graph.export_bound import bounded_by
from ..graph.length_reads import unmatched
from ..graph.meta import SIZE_TESTS
from ..graph.size_values import SizeTest
from ..graph.trace import Inputs, trace_graph
from ..prune.checks import changed_numbers, compensated, same_code, same_outputs, sizes_followed
from ..prune.copying import copy_model
from ..prune.surgery import remove_channels
from ..prune.untraced_forwards import Ran, untraced_failure
from .schema import Group, Plan
from .ties import snap_tied

__all__ = ["KEEPS", "probe_plan"]

KEEPS = (3, 5, 7)  # channels a probed group keeps, by turns (fewer where the group is smaller)
_REASON_CHARS = 400

Attempt = Callable[[list[int]], str | None]
Baselines = tuple[fx.Graph, Callable[[], fx.Graph]]  # the model's traces: the plan's, and a static one made on demand


def probe_plan(plan: Plan, model: nn.Module, example_inputs: Inputs, traced: fx.Graph) -> Plan:
    """``plan`` with every prunable group pinned whose pruning a retrace of ``model`` refuses,
    and every group not zero-invariant whose pruning changes a number the code computes.

    Args:
        plan: The plan made from ``traced``.
        model: The model; not modified (a copy is pruned).
        example_inputs: The inputs ``traced`` was traced with.
        traced: The model's eval trace (torch.export), the baseline ``prune`` would compare with.
    """
    units = _units(plan)
    if not units:
        return plan
    masks, untried = _probe_masks(plan, _tests(traced))
    trial = _trial(plan, model, example_inputs, traced, units, masks)
    label = lambda us: ", ".join(n for u in us for n in units[u])  # noqa: E731
    fails: Attempt = lambda us: trial(us)[0]  # noqa: E731
    failed = {u: untried[n] for u, names in enumerate(units) for n in names if n in untried}
    todo = [u for u in range(len(units)) if u not in failed]
    why = fails(todo) if todo else None
    while why is not None:
        found = _culprits(todo, why, fails, label)
        failed.update(found)
        todo = [u for u in todo if u not in found]
        why = fails(todo) if todo else None
    # The rest prunes; where its code computes values from a pruned size, it is not zero-invariant.
    computes: Attempt = lambda us: trial(us)[1] if trial(us)[0] is None else None  # noqa: E731
    changed = computes(todo) if todo else None
    valued = {n for u in _culprits(todo, changed, computes, label) for n in units[u]} if changed else set()
    if not failed and not valued:
        return plan
    reasons = {name: failed[u] for u, names in enumerate(units) if u in failed for name in names}
    groups = []
    for g in plan.groups:
        if g.name in untried:
            g = g.model_copy(update={"prunable": False, "reason": f"under torch.export, {untried[g.name]}"})
        elif g.name in reasons:
            g = g.model_copy(update={"prunable": False, "reason": _reason(g.size, masks[g.name], reasons[g.name])})
        elif g.name in valued:
            g = g.model_copy(update={"zero_invariant": False})
        groups.append(g)
    return plan.model_copy(update={"groups": groups})


def _units(plan: Plan) -> list[list[str]]:
    """Prunable groups, those joined by ties together (they are pruned together or not at all)."""
    names = [g.name for g in plan.prunable if g.size > 1]
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for tie in plan.ties:
        tied = [p.group for p in tie.parts if p.group in parent]
        for other in tied[1:]:
            parent[root(other)] = root(tied[0])
    units: dict[str, list[str]] = {}
    for n in names:
        units.setdefault(root(n), []).append(n)
    return list(units.values())


def _tests(traced: fx.Graph) -> tuple[SizeTest, ...]:
    out = next((n for n in reversed(traced.nodes) if n.op == "output"), None)
    return out.meta.get(SIZE_TESTS, ()) if out is not None else ()


def _probe_masks(plan: Plan, tests: tuple[SizeTest, ...] = ()) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Per prunable group: all but a few of its channels removed (the last ones), ties snapped;
    and the groups to pin untried, with the reason (decisions no one count flips together).
    Groups of one size keep different counts where they can (``KEEPS`` by turns, then 6 more
    each time a turn comes round again): ``if a.shape[1] == b.shape[1]`` must not stay true.
    A group whose attributes the code decided on (``tests``) keeps a count that flips them."""
    masks = {}
    untried: dict[str, str] = {}
    taken: dict[tuple[int, int], int] = {}  # (size, turn's count) -> groups of that size given it
    for i, g in enumerate(g for g in plan.prunable if g.size > 1):
        options = [k for k in KEEPS if g.fewest <= k < g.size] or [max(g.fewest, g.size - 1)]
        keep = options[i % len(options)]
        again = taken.get((g.size, keep), 0)
        taken[(g.size, keep)] = again + 1
        keep = keep + 6 * again if keep + 6 * again < g.size else keep
        keep, why = _flipping(g, keep, tests)
        if why is not None:
            untried[g.name] = why
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[:keep] = False
        masks[g.name] = mask
    scores = {name: -torch.arange(len(m), dtype=torch.float32) for name, m in masks.items()}
    return snap_tied(plan, masks, scores), untried


def _flipping(g: Group, keep: int, tests: tuple[SizeTest, ...]) -> tuple[int, str | None]:
    """The count ``g`` keeps so that the code's decisions on the attributes surgery rewrites
    for it (``g.sizes``) go the other way: ``keep`` where it does, else the nearest count that
    flips the most (whole ties' steps only). Returns it, and why the group must be pinned
    untried where some decision that a count flips stays as it was."""
    refs = {(r.owner, r.attr): r for r in g.sizes}
    mine = [t for t in tests if t.site in refs]
    if not mine:
        return keep, None

    def flipped(k: int) -> list[SizeTest]:
        return [t for t in mine if t.flips(t.value - refs[t.site].lowered_by(g.size - k))]

    steps = [k for k in range(g.fewest, g.size) if all((g.size - k) % r.every == 0 for r in refs.values())] or [keep]
    best = max(steps, key=lambda k: (len(flipped(k)), -abs(k - keep)))
    best = keep if len(flipped(keep)) >= len(flipped(best)) else best
    left = [t for t in mine if t not in flipped(best) and any(t in flipped(k) for k in steps)]
    if not left:
        return best, None
    return best, f"the code decides on sizes no one count flips together: {'; '.join(sorted({str(t) for t in left}))}"


def _trial(
    plan: Plan, model: nn.Module, example_inputs: Inputs, traced: fx.Graph, units: list[list[str]], masks: dict[str, Tensor]
) -> Callable[[list[int]], tuple[str | None, str | None]]:
    """A function: indices of ``units`` -> (why pruning those groups fails, or None; which
    numbers of the code changed with them, or None), each set traced once."""
    seen: dict[tuple[int, ...], tuple[str | None, str | None]] = {}
    static: list[fx.Graph] = []
    runs: dict[bool, Ran | None] = {}  # where the model's own forwards run (``untraced_failure``), once asked

    def baseline() -> fx.Graph:
        """The model's static trace, made once where needed (``length_reads.unmatched``)."""
        if not static:
            static.append(trace_graph(model, example_inputs, dynamic=False, export=True))
        return static[0]

    def trial(chosen: list[int]) -> tuple[str | None, str | None]:
        key = tuple(sorted(chosen))
        if key not in seen:
            masked = {n: masks[n] for u in key for n in units[u]}
            seen[key] = _prune_and_trace(plan, model, example_inputs, (traced, baseline), masked, runs)
        return seen[key]

    return trial


def _prune_and_trace(
    plan: Plan,
    model: nn.Module,
    example_inputs: Inputs,
    baselines: Baselines,
    masks: dict[str, Tensor],
    runs: dict[bool, Ran | None],
) -> tuple[str | None, str | None]:
    traced, static = baselines
    work = copy_model(model, weights=False)
    try:
        remove_channels(work, plan, masks)
        with bounded_by(traced):  # the model's own loop may not end at the count kept
            after = trace_graph(work, example_inputs, dynamic=False, export=True)  # static: half the time; the model's tracer
        same_outputs(traced, after)
        baseline = _same_code_as(traced, after, static)
        sizes_followed(plan, masks, traced, after)
        decided = unmatched(traced, after, static)  # ``if h.shape[1] != 8``: the same code at this count only
        if decided is None:
            decided = untraced_failure(work, example_inputs, model, runs, lambda: _weighted(plan, model, masks))
        if decided is not None:
            return decided, None
    except TraceError as e:  # the retrace's own error, not the fx-then-export summary
        cause = e.__cause__ or e
        return f"the pruned model does not trace: {type(cause).__name__}: {str(cause).strip()}", None
    except SparseKitError as e:
        return str(e), None
    except Exception as e:  # noqa: BLE001 - whatever stops the pruned copy stops prune
        return f"{type(e).__name__}: {e}", None
    changed = changed_numbers(baseline, after, compensated(plan, masks))
    return None, f"numbers computed from its size changed at {', '.join(changed[:3])}" if changed else None


def _weighted(plan: Plan, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` with its weights, pruned by ``masks``."""
    work = copy_model(model)
    remove_channels(work, plan, masks)
    return work


def _same_code_as(traced: fx.Graph, after: fx.Graph, static: Callable[[], fx.Graph]) -> fx.Graph:
    """The model's trace that ``after`` (a pruned copy's static trace) runs the same code as:
    ``traced``, else the model's static trace (``static()``): torch.export writes some code
    otherwise at dynamic sizes (DeBERTa's ``torch.tensor(min(...))`` of a symbolic length is a
    ``scalar_tensor``, of a static one a lifted constant). Raises where neither is."""
    try:
        same_code(traced, after)
        return traced
    except SparseKitError:
        baseline = static()
        same_code(baseline, after)
        return baseline


def _culprits(units: list[int], why: str, attempt: Attempt, label: Callable[[list[int]], str]) -> dict[int, str]:
    """Units of ``units`` (which fail together, with ``why``) to pin: by bisection, those that
    fail on their own; where no half fails alone, a minimal set of units that fail together
    (QuickXplain: the smallest part of one half that fails with the other, then the converse)."""
    if len(units) == 1:
        return {units[0]: why}
    half = len(units) // 2
    left, right = units[:half], units[half:]
    found: dict[int, str] = {}
    for part in (left, right):
        reason = attempt(part)
        if reason is not None:
            found.update(_culprits(part, reason, attempt, label))
    if found:
        return found
    need_right = _needed(left, right, attempt)
    conflict = _needed(need_right, left, attempt) + need_right
    return {u: f"pruned together with {label([v for v in conflict if v != u])}: {why}" for u in conflict}


def _needed(base: list[int], candidates: list[int], attempt: Attempt) -> list[int]:
    """A minimal part of ``candidates`` that fails with all of ``base`` (``base`` alone passes,
    ``base + candidates`` fails)."""
    if len(candidates) == 1:
        return candidates
    half = len(candidates) // 2
    first, second = candidates[:half], candidates[half:]
    if attempt(base + first) is not None:
        return _needed(base, first, attempt)
    if attempt(base + second) is not None:
        return _needed(base, second, attempt)
    need_first = _needed(base + second, first, attempt)
    return need_first + _needed(base + need_first, second, attempt)


def _reason(size: int, mask: Tensor, why: str) -> str:
    kept = size - int(mask.sum())
    text = " ".join(why.split())
    text = text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
    return f"pruning it breaks the model's code under torch.export (tried keeping {kept} of {size} channels): {text}"
