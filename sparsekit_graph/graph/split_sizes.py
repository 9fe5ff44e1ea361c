"""Split sizes and slice bounds made from a module's own int attributes (``attribute_sizes``).

timm writes them many ways: ``torch.split(out, self.width, 1)`` (Res2Net), ``[self.width] *
scale``, ``x.split(self.expand_chs // 2, 1)`` (CSPNet), ``split(x, self.in_channels //
self.num_paths, 1)`` (SKNet), ``out[:, :self.out_chs]`` (GhostNet), ``x[:, 0:self.in_channels]``
and ``x[:, self.in_channels:]`` (ReXNet). Each reaches the graph as a ``PlainInt`` whose
formula says how it was computed from which attributes. Surgery rewrites an attribute that
counts an axis (``SizeSource`` on it), so a size is exact after pruning where, for every count
pruning can leave, the formula evaluated at the rewritten values is the pruned size. Each
attribute of the formula is given a role (``_roles``): it counts one part (its value is a
part's size, lowered by what each part loses), the whole split axis (lowered by what all parts
lose), or nothing (kept; where it also sizes another axis, ``pin_unfollowed_reads`` pins that
one). The first assignment, fewest rewritten attributes first, that verifies is recorded.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.fx as fx
from torch import Tensor

from .attribute_sizes import PLAIN_FOLLOWED, Formula, PlainInt
from .axes import AxisId
from .context import RuleContext
from .list_attributes import read_size
from .meta import META, ReadInt
from .normalize import normalize
from .size_values import Site
from .sizes import SizeSource

__all__ = [
    "followed_count", "followed_half", "followed_head", "followed_prefix", "followed_remainder", "followed_segments",
    "followed_split", "followed_suffix", "followed_tail", "prefix_stop", "tail_start",
]  # fmt: skip

_FIXED, _PART, _WHOLE = "fixed", "part", "whole"
_MOST_SITES = 4  # more attributes in one size: left to pin (3 ** 4 assignments at most)


def followed_split(ctx: RuleContext, how: object, src: AxisId, parts: list[AxisId]) -> bool:
    """``split`` into equal parts by sizes made from attributes (one size, or a list with one
    per part): True, with the attributes recorded on the axes they count, where every size
    follows them; False (nothing recorded) otherwise."""
    elements = [_plain(e) for e in how] if isinstance(how, (list, tuple)) else [_plain(how)]
    sizes = [ctx.graph.size(p) for p in parts]
    total = ctx.graph.size(src)
    if len(parts) < 2 or len(set(sizes)) != 1 or sum(sizes) != total:
        return False
    if isinstance(how, (list, tuple)) and len(elements) != len(parts):
        return False
    formulas = [e.formula for e in elements if isinstance(e, PlainInt) and e == sizes[0]]
    if len(formulas) != len(elements):
        return False
    roles = _roles(formulas, sizes[0], total, len(parts))
    if roles is None:
        return False
    for site, role in roles.items():
        for axis in parts if role == _PART else [src] if role == _WHOLE else []:
            _record(ctx, axis, site)
    return True


def followed_segments(ctx: RuleContext, how: object, src: AxisId, parts: list[AxisId]) -> bool:
    """``torch.split(x, self.splits, 1)`` with ``splits = [16, 8, 8]`` a list attribute (MixNet,
    ``list_attributes``): each size made only from attributes no other size reads, each
    counting its own part (``splits[k]``), so every part is an offset segment pruned on its own
    and surgery lowers each element by what its part lost. True, with the attributes recorded on
    the parts they count; False (nothing recorded) otherwise."""
    sizes = [ctx.graph.size(p) for p in parts]
    if not isinstance(how, (list, tuple)) or len(how) != len(parts) or len(parts) < 2 or sum(sizes) != ctx.graph.size(src):
        return False
    how = [_plain(e) for e in how]
    if not all(isinstance(e, PlainInt) and e == n for e, n in zip(how, sizes)):
        return False
    sites = [set(e.formula[0]) for e in how]
    if any(not a or any(a & b for b in sites[:k]) for k, a in enumerate(sites)):
        return False  # a size of no attribute, or one attribute sizing two parts: not on their own
    found = [_roles([e.formula], n, n, 1) for e, n in zip(how, sizes)]
    if any(roles is None for roles in found):
        return False
    for part, roles in zip(parts, found):
        for site, role in (roles or {}).items():
            if role != _FIXED:
                _record(ctx, part, site)
    return True


def followed_prefix(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId) -> np.ndarray | None:
    """``t[:, :self.out_chs]``, ``t[:, 0:self.in_channels]``: the first ``n`` indices, ``n``
    made from attributes that count the slice (all of the axis, or a segment another rule
    ties). The indices it takes, with the attributes recorded on ``out``; None otherwise."""
    stop = _plain(it.stop)
    if it.step is not None or it.start not in (None, 0) or not isinstance(stop, PlainInt) or not 0 < stop <= ctx.graph.size(axis):
        return None
    return np.arange(int(stop)) if _counts(ctx, stop, out) is not None else None


def followed_count(ctx: RuleContext, n: object, axis: AxisId) -> bool:
    """``F.conv2d(x, self.filt, groups=self.channels)`` (timm ``BlurPool2d``): a count of the
    whole ``axis`` made from attributes that follow it. True, with them recorded on ``axis``;
    False (nothing recorded) where it is no such count or none of them would follow."""
    n = _plain(n)
    if not isinstance(n, PlainInt) or int(n) != ctx.graph.size(axis):
        return False
    return bool(_counts(ctx, n, axis))


def _counts(ctx: RuleContext, n: PlainInt, out: AxisId) -> int | None:
    """Record on ``out`` the attributes of ``n`` that count it (``_roles``): how many; None
    where no assignment verifies."""
    roles = _roles([n.formula], int(n), int(n), 1)
    if roles is None:
        return None
    counting = [site for site, role in roles.items() if role != _FIXED]
    for site in counting:
        _record(ctx, out, site)
    return len(counting)


def followed_remainder(
    ctx: RuleContext, how: object, axis: AxisId, parts: list[AxisId], rest_of: Callable[[object], bool]
) -> str | None:
    """``torch.split(h, [self.n_d, h.shape[1] - self.n_d], 1)`` (TabNet's decision and attention
    parts): the first size counts the first part (as ``h[:, :self.n_d]``), the second is the
    rest of the axis (``rest_of``: the axis length read off the tensor, less the same attribute),
    which moves with it (as ``h[:, self.n_d:]``). ``"rest"``, with the attribute recorded, or,
    where the first part is a half, ``"half"`` (the halves tied, as the two slices are:
    ``followed_half``); None (nothing recorded) otherwise."""
    if not isinstance(how, (list, tuple)) or len(how) != 2 or len(parts) != 2:
        return None
    first, rest = _plain(how[0]), how[1]
    if not isinstance(first, PlainInt) or not _one_read(first) or not isinstance(rest, fx.Node):
        return None
    call = normalize(rest)
    if call.op is not operator.sub or not rest_of(call.args.get("input")) or not _same_read(call.args.get("other"), first):
        return None
    if 2 * int(first) == ctx.graph.size(axis):
        halves = [followed_half(ctx, it, axis, p) for it, p in zip((slice(None, first), slice(first, None)), parts)]
        found = "half" if all(h is not None for h in halves) else None
    else:
        found = "rest" if followed_prefix(ctx, slice(None, first), axis, parts[0]) is not None else None
    if found:
        _follow(ctx, first.formula[0][0])
        rest.meta.setdefault(PLAIN_FOLLOWED, set()).add(first.formula[0][0])  # ``h.shape[1] - self.n_d`` moves with it
    return found


def followed_suffix(ctx: RuleContext, it: slice, axis: AxisId, src: fx.Node, dim: int) -> np.ndarray | None:
    """``t[:, self.in_channels:]`` beside ``t[:, 0:self.in_channels]`` of the same tensor (ReXNet's
    partial residual): the attribute counts the prefix, which that slice records, so the start
    moves with it. The indices it takes; None where no such prefix slice reads the same one
    attribute (or the start is a number computed from it)."""
    start = _plain(it.start)
    if it.step is not None or it.stop is not None or not isinstance(start, PlainInt) or not _one_read(start):
        return None
    if not 0 < start < ctx.graph.size(axis) or not any(_prefix_of(u, start, dim) for u in src.users):
        return None
    _follow(ctx, start.formula[0][0])
    return int(start) + np.arange(ctx.graph.size(axis) - int(start))


def followed_tail(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId) -> np.ndarray | None:
    """``t[:, -self.lo_ch:]`` (octave convolution's low-frequency part): the last ``n`` indices,
    ``n`` made from attributes that count the slice. The indices it takes, with the attributes
    recorded on ``out``; None otherwise."""
    start, size = _plain(it.start), ctx.graph.size(axis)
    if it.step is not None or it.stop is not None or not isinstance(start, PlainInt) or not -size <= start < 0:
        return None
    return size + np.arange(int(start), 0) if _counts(ctx, _negated(start), out) is not None else None


def followed_head(ctx: RuleContext, it: slice, axis: AxisId, src: fx.Node, dim: int) -> np.ndarray | None:
    """``t[:, :-self.lo_ch]`` beside ``t[:, -self.lo_ch:]`` of the same tensor: the attribute counts
    the tail, which that slice records, so the stop moves with it (``followed_suffix`` from the end)."""
    stop, size = _plain(it.stop), ctx.graph.size(axis)
    if it.step is not None or it.start not in (None, 0) or not isinstance(stop, PlainInt) or not -size < stop < 0:
        return None
    if not _one_read(_negated(stop)) or not any(_same_read(tail_start(u, dim), stop) for u in src.users):
        return None
    _follow(ctx, stop.formula[0][0])
    return np.arange(size + int(stop))


def _plain(x: object) -> object:
    """A number computed from a layer's size attribute (``self.conv.out_channels // 2``: a
    ``ReadInt`` with its formula) as the ``PlainInt`` a module's own attribute gives; others as
    they are."""
    if isinstance(x, ReadInt) and x.derived and x.formula is not None:
        return PlainInt(int(x), x.formula)
    return x


def _negated(x: PlainInt) -> PlainInt:
    sites, values, fn = x.formula
    return PlainInt(-int(x), (sites, values, lambda m: -fn(m)))


def _same_read(a: object, b: PlainInt) -> bool:
    a = _plain(a)
    return isinstance(a, PlainInt) and a.formula[:2] == b.formula[:2] and int(a) == int(b)


def tail_start(user: fx.Node, dim: int) -> Any:
    """The start of ``user``'s slice of axis ``dim`` where it is a getitem taking ``[start:]``
    there; None otherwise."""
    it = _slice_of(user, dim)
    return it.start if it is not None and it.stop is None and it.step is None else None


def _prefix_of(user: fx.Node, start: PlainInt, dim: int) -> bool:
    """Is ``user`` a getitem taking ``[:start]`` (or ``[0:start]``) of axis ``dim``, read from
    the same attribute as ``start``?"""
    stop = _plain(prefix_stop(user, dim))
    return isinstance(stop, PlainInt) and _one_read(stop) and stop.formula[0] == start.formula[0]


def followed_half(ctx: RuleContext, it: slice, axis: AxisId, out: AxisId) -> np.ndarray | None:
    """``t[:, :o]``, ``t[:, o:]``, ``t[:, o : 2 * o]`` with ``o = self.conv.out_channels // 2``:
    a half of the axis (as ``chunk(2)`` makes), its bounds made from attributes that count the
    axis or a half, so they follow pruning that keeps the halves equal (the caller ties them).
    The indices it takes, with the attributes recorded; None otherwise."""
    n = ctx.graph.size(axis)
    start, stop = _plain(it.start), _plain(it.stop)
    first = start in (None, 0) and isinstance(stop, PlainInt) and stop == n // 2
    middle = start if isinstance(start, PlainInt) and start == n // 2 else None
    if not first and (middle is None or (stop is not None and not (isinstance(stop, PlainInt) and stop == n))):
        return None
    half = stop if first else middle
    roles = _roles([half.formula], n // 2, n, 2)  # type: ignore[union-attr]
    if roles is None:
        return None
    if not first and stop is not None and not _follows(stop.formula, roles, 2, lambda r: n - 2 * r, n // 2):  # type: ignore[union-attr]
        return None
    for site, role in roles.items():
        for counted in [out] if role == _PART else [axis] if role == _WHOLE else []:
            _record(ctx, counted, site)
    return np.arange(n // 2) + (0 if first else n // 2)


def prefix_stop(user: fx.Node, dim: int) -> Any:
    """The stop of ``user``'s slice of axis ``dim`` where it is a getitem taking ``[:stop]``
    (or ``[0:stop]``) there; None otherwise."""
    it = _slice_of(user, dim)
    return it.stop if it is not None and it.start in (None, 0) and it.step is None else None


def _slice_of(user: fx.Node, dim: int) -> slice | None:
    """The slice ``user`` (a getitem) takes of axis ``dim``; None otherwise."""
    if user.op != "call_function" or user.target is not operator.getitem or len(user.args) != 2:
        return None
    index = user.args[1]
    items: Sequence[Any] = index if isinstance(index, tuple) else (index,)
    value = user.args[0].meta.get(META) if isinstance(user.args[0], fx.Node) else None
    if Ellipsis in items and isinstance(value, Tensor):  # ``h[..., :n]``: as many full slices as it stands for
        k = items.index(Ellipsis)
        items = [*items[:k], *[slice(None)] * (value.ndim - len(items) + 1), *items[k + 1 :]]
    if dim >= len(items) or any(i is Ellipsis or i is None for i in items[:dim]):
        return None
    return items[dim] if isinstance(items[dim], slice) else None


def _one_read(x: PlainInt) -> bool:
    """Is ``x`` one attribute's value itself (its read, ``n * 1``), not computed from it?"""
    sites, values, fn = x.formula
    return len(sites) == 1 and _verified(x.formula, {sites[0]: _PART}, values[0], values[0], 1)


def _roles(formulas: list[Formula], size: int, total: int, parts: int) -> dict[Site, str] | None:
    """Which attribute counts what (``_PART``: one part of ``size``; ``_WHOLE``: the ``total``
    of ``parts`` parts; ``_FIXED``: nothing) so that every formula is the pruned part's size,
    fewest counting attributes first; None where no assignment does."""
    values: dict[Site, int] = {}
    for sites, found, _ in formulas:
        values.update(zip(sites, found))
    if not values or len(values) > _MOST_SITES:
        return None
    options = [[_FIXED] + [r for r, n in ((_PART, size), (_WHOLE, total)) if v == n] for v in values.values()]
    for choice in sorted(itertools.product(*options), key=lambda c: sum(r != _FIXED for r in c)):
        roles = dict(zip(values, choice))
        if any(r != _FIXED for r in choice) and all(_verified(f, roles, size, total, parts) for f in formulas):
            return roles
    return None


def _verified(formula: Formula, roles: dict[Site, str], size: int, total: int, parts: int) -> bool:
    """Is ``formula`` the part's size at every count pruning can leave (each part losing ``r``),
    its attributes rewritten as ``roles`` say?"""
    return total == size * parts and _follows(formula, roles, parts, lambda r: size - r, size)


def _follows(formula: Formula, roles: dict[Site, str], parts: int, expected: Callable[[int], int], counts: int) -> bool:
    """Is ``formula`` ``expected(r)`` for each ``r < counts`` channels every part loses, its
    attributes rewritten as ``roles`` say (a whole count loses ``parts * r``)?"""
    sites, values, fn = formula
    drop = {_PART: 1, _WHOLE: parts, _FIXED: 0}
    try:
        return all(
            fn({s: v - drop[roles.get(s, _FIXED)] * r for s, v in zip(sites, values)}) == expected(r) for r in range(counts)
        )
    except Exception:  # noqa: BLE001 - a count it cannot take (a division by zero): not followed
        return False


def _record(ctx: RuleContext, axis: AxisId, site: Site) -> None:
    """Attribute ``site`` counts ``axis``: surgery rewrites it with the axis's group."""
    src = SizeSource(*site)
    ctx.graph.size_refs.setdefault(axis, set()).add(src)
    ctx.graph.size_values[src] = int(read_size(ctx.modules.get(site[0]), site[1]))
    _follow(ctx, site)


def _follow(ctx: RuleContext, site: Site) -> None:
    """This node follows ``site`` (``attribute_sizes.pin_unfollowed_reads`` leaves it)."""
    ctx.node.meta.setdefault(PLAIN_FOLLOWED, set()).add(site)
