"""Int attributes of a model's own modules that its forward sizes tensors with.

timm's Res2Net splits by ``self.width``, GhostNet slices ``out[:, :self.out_chs]``: sizes held
in attributes whose names no list (``sizes.SIZE_ATTRIBUTES``) could foresee. While a forward is
traced, every int attribute of a module that is no torch.nn layer (or of its class) is handed
to the model's code as a ``PlainRead`` (``size_reads``), and a number computed from such reads
keeps its formula, so a split size or slice bound made of them carries its origin:
``split_sizes`` follows it where it stays exact, the axis it shapes may be pruned, and surgery
rewrites the attribute as it does a listed one.

Such an attribute counts only the axes a literal read from it shaped (``size_refs``): one that
also decided control flow, or sized an op argument (``stride``, ``kernel_size``), pins those
axes and no others (a ``scale`` looped over sizes nothing, whatever tensors share its value).
A listed name keeps its wider reach (``size_reads._sized_axes``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch.fx as fx
from torch import nn

from ..registry import RESIZERS, by_type
from .axes import AxisGraph
from .list_attributes import base_name, int_list
from .size_origins import Origin
from .size_values import Site, SizeRead, identity
from .user_code import by_user

__all__ = [
    "PLAIN_FOLLOWED",
    "PLAIN_READS",
    "Formula",
    "PlainInt",
    "PlainRead",
    "pin_unfollowed_reads",
    "plain_int_attributes",
    "of_origin",
    "read_only_where_literal",
    "torch_layer",
]


# {literal: {(module path, attribute)}}: a node's arguments made from such attributes, kept apart
# from ``meta.SIZE_READS`` so that no rule but a split's or a slice's (``split_sizes``) sees them
PLAIN_READS = "skg.plain_reads"
# {(module path, attribute)}: those the node's rule made its sizes follow (``split_sizes``), on
# whichever axes they count (a split's input: the attribute counts the whole axis)
PLAIN_FOLLOWED = "skg.plain_followed"


# One or more attributes, their values when read, and a number as a function of them
# ({site: value} -> int): ``self.in_channels // self.num_paths``.
Formula = tuple[tuple[Site, ...], tuple[int, ...], Callable[[Mapping[Site, int]], int]]


class PlainRead(SizeRead):
    """A read of such an attribute, or a number the model's code computed from such reads and
    plain ints (``self.expand_chs // 2``, ``self.in_channels // self.num_paths``): ``formula``
    says how, so a split size can check that it follows the pruned attributes
    (``split_sizes``). Arithmetic that leaves its value whatever the count (``self.width * 1``,
    ``self.width + 0``: ``size_values.identity``) gives the read again. No rule but a split's or
    a slice's sees it: the graph holds it as a ``PlainInt``, a plain int to everyone else."""

    formula: Formula

    def __new__(
        cls, value: int, sites: frozenset[Site], log: Any, origin: Any = None, formula: Formula | None = None
    ) -> PlainRead:
        obj = cast(PlainRead, super().__new__(cls, value, sites, log, origin))
        obj.formula = formula or of_origin(origin) or ((), (), _constant(int(value)))
        return obj


def of_origin(origin: Origin | None) -> Formula | None:
    """The formula of a number made from one attribute (``size_origins.Origin``)."""
    if origin is None:
        return None
    site, first, fn = origin
    return (site,), (first,), lambda m: fn(m[site])


def _constant(v: int) -> Callable[[Mapping[Site, int]], int]:
    return lambda m: v


class PlainInt(int):
    """A ``PlainRead`` the graph holds as an argument: an int with its ``formula``."""

    formula: Formula

    def __new__(cls, value: int, formula: Formula) -> PlainInt:
        obj = int.__new__(cls, value)
        obj.formula = formula
        return obj

    def __reduce__(self) -> tuple:
        return int, (int(self),)

    def __deepcopy__(self, memo: dict) -> PlainInt:
        return self

    def __copy__(self) -> PlainInt:
        return self


def _joined(base: Callable[..., Any], operands: tuple[Any, ...]) -> Formula | None:
    """The formula of ``base(*operands)``, operands ``PlainRead``s or plain ints (None where
    another tracked value takes part: a layer's size, a float)."""
    if any(isinstance(o, SizeRead) and not isinstance(o, PlainRead) or isinstance(o, float) for o in operands):
        return None
    sites: dict[Site, int] = {}
    for o in operands:
        if isinstance(o, PlainRead):
            sites.update(zip(*o.formula[:2]))
    parts = [o.formula[2] if isinstance(o, PlainRead) else _constant(o) for o in operands]
    return tuple(sites), tuple(sites.values()), lambda m: base(*(f(m) for f in parts))


def _plain(op: str) -> Any:
    base = getattr(int, op)

    def arith(self: PlainRead, *other: Any) -> Any:
        out = base(int(int.__int__(self)), *other)
        if out is NotImplemented:  # ``bsz * self.top_k`` with ``bsz`` a SymInt: as a ``SizeRead`` (plain value)
            return getattr(SizeRead, op)(self, *other)
        if not self.formula[0] or type(out) is not int or not by_user(1):
            return out
        formula = _joined(base, (self, *other))
        if formula is None:
            return out
        (sites, _, fn) = formula
        origin = (sites[0], formula[1][0], lambda v: fn({sites[0]: v})) if len(sites) == 1 else None
        for o in (self, *other):
            if isinstance(o, PlainRead):
                o.derived = True  # its fate is the number's: held where it goes, or used by Python
        made = PlainRead(out, frozenset(sites), self._log, origin, formula)
        made.exact = identity(origin)  # ``self.width * 1``, ``self.width + 0``: still the read
        return made

    return arith


for _op in ("add", "sub", "mul", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor", "truediv", "divmod"):
    setattr(PlainRead, f"__{_op}__", _plain(f"__{_op}__"))
    setattr(PlainRead, f"__r{_op}__", _plain(f"__r{_op}__"))
for _op in ("__neg__", "__pos__", "__abs__", "__invert__", "__trunc__", "__floor__", "__ceil__"):
    setattr(PlainRead, _op, _plain(_op))

_LAYER_CLASSES: dict[type, bool] = {}
# containers hold layers but compute nothing of their own: a subclass's forward is the model's code
_CONTAINERS = frozenset({nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict})


def torch_layer(cls: type) -> bool:
    """Is ``cls`` a torch.nn layer (or a subclass of one)? A subclass of a container
    (timm's ``MixedConv2d(nn.ModuleDict)``) is not: its attributes are the model's own."""
    known = _LAYER_CLASSES.get(cls)
    if known is None:
        known = _LAYER_CLASSES[cls] = any(c.__module__.startswith("torch.nn.") and c not in _CONTAINERS for c in cls.__mro__[:-1])
    return known


def plain_int_attributes(module: nn.Module) -> frozenset[str]:
    """The attributes holding a plain int (not a bool) of ``module``, its own or its class's
    (``width = 4`` in the class body; ``self._width`` behind a ``@property``), or a list of
    them (MixNet's ``splits``: ``list_attributes``), unless it is a torch.nn layer (its sizes
    are listed) or resizes itself (its resizer recomputes them). Surgery rewrites one on the
    instance, shadowing the class's."""
    cls = type(module)
    if torch_layer(cls) or by_type(RESIZERS, module) is not None:
        return frozenset()
    found = _CLASS_INTS.get(cls)
    if found is None:
        user = [c for c in cls.__mro__ if not c.__module__.startswith("torch.") and c is not object]
        found = _CLASS_INTS[cls] = frozenset(k for c in user for k, v in vars(c).items() if _name(k) and _plain_int(v))
    return found | frozenset(k for k, v in module.__dict__.items() if _name(k) and (_plain_int(v) or int_list(v)))


_CLASS_INTS: dict[type, frozenset[str]] = {}


def _name(k: str) -> bool:
    """A public name or a private one (``_width``), not a dunder (``__slots__``)."""
    return not k.startswith("__")


def read_only_where_literal(module: Any, attr: str, names: frozenset[str] | set[str], sizes: frozenset[str] | set[str]) -> bool:
    """Is ``module.attr`` counted only by the literals read from it (``plain_int_attributes``)?
    So is every int of a module holding none of ``sizes`` (``sizes.SIZE_ATTRIBUTES``: such a
    module was never recorded), and any int not in ``names`` of one that holds some. An
    element of a list attribute (``splits[0]``) is its list's."""
    attr = base_name(attr)
    if not isinstance(module, nn.Module) or attr not in plain_int_attributes(module):
        return False
    return attr not in names or sizes.isdisjoint(module.__dict__)


def pin_unfollowed_reads(
    graph: AxisGraph,
    nodes: Iterable[fx.Node],
    modules: dict[str, nn.Module],
    names: frozenset[str] | set[str],
    sizes: frozenset[str] | set[str],
    prefix: str,
) -> None:
    """Pin the axes a module's own int attribute sizes (``size_refs``) where a literal read from
    it also reached a node none of whose axes it sizes (``view(b, self.width, -1)``, a constant
    factor there; ``torch.zeros(self.width)``): surgery rewrites the attribute, and that node
    would change with it."""
    sized: dict[tuple[str, str], list] = {}
    for axis, refs in graph.size_refs.items():
        for r in refs:
            if read_only_where_literal(modules.get(r.owner), r.attr, names, sizes):
                sized.setdefault((r.owner, r.attr), []).append(axis)
    if not sized:
        return
    for n in nodes:
        name = prefix + n.name
        followed = n.meta.get(PLAIN_FOLLOWED) or ()
        for sites in (n.meta.get(PLAIN_READS) or {}).values():
            for site in sites:
                axes = sized.get(site, []) if site not in followed else []
                if axes and not any(a[1] == name or a[1].startswith(name + ".") for a in axes):
                    reason = f"size attribute {site[0] or 'model'}.{site[1]} also sizes node {n.name}, which does not follow it"
                    for a in axes:
                        graph.pin(a, reason)
                        graph.mix(a, reason)


def _plain_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
