"""Which size attributes of torch.nn layers (``conv.out_channels``) the model's own code reads
while it is traced, and what it does with them.

Neither tracer sees such a read: the value is a plain int in the layer's ``__dict__``.
``if self.conv.out_channels == 64`` silently keeps one branch, and ``h.view(b,
self.conv.out_channels, -1)`` is recorded as the literal 64. While a forward is traced, the
class of every such layer is swapped for a recording subclass (as ``config_reads`` does for
configs) whose ``__getattribute__`` hands code outside torch and this package a ``SizeRead``:
an int that remembers its attribute and records what Python makes of it. Afterwards
(``finish``):

- a ``SizeRead`` the graph holds as an argument becomes its plain value again, and its origin
  is kept on the node (``SIZE_READS``): ``sizes.size_sources`` matches the literal to that
  attribute, and a literal nobody read stays a constant;
- an attribute whose value decided Python control flow (a comparison, ``bool``, ``int``, a
  true division) or went where the graph cannot see it (``range(n)``, ``[0] * n``) is listed
  on the output node (``SIZE_CONTROL``); ``size_pins.pin_read_sizes`` pins the layer's axes it sizes;
- each decision on one attribute is listed as a ``SizeTest`` (``SIZE_TESTS``): under
  ``torch.export`` the probe (``plan/probe.py``) prunes to a count that flips it.

A layer's own ``forward`` (torch code) reads its attributes unrecorded: its rule models it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch.fx as fx
from torch import nn

from ..registry import RESIZERS, by_type
from .attribute_sizes import PLAIN_READS, PlainInt, PlainRead, of_origin, plain_int_attributes, read_only_where_literal
from .attribute_sizes import torch_layer as _layer_class
from .flow_values import Conversions
from .length_reads import LENGTH, LENGTH_DECISIONS, SYMBOLIC_READS, Decision, decision, is_length, reading_len
from .list_attributes import int_list, wrapped_list
from .meta import COMPUTED_READS, EXPORTED, MODULE_READS, SIZE_CONTROL, SIZE_READS, SIZE_TESTS, ReadInt
from .number_args import ReadFloat
from .size_flow import flows_nowhere
from .size_reaching import Reaching
from .size_sinks import sinks_now
from .size_values import VALUE, Site, SizeFloat, SizeRead, SizeTest, SizeTuple, truth_free
from .user_code import by_user

__all__ = ["READ_ATTRIBUTES", "SizeRead", "finish", "recording_size_reads", "wrap_config_read"]

# Attributes of torch.nn layers that count channels, heads or features.
READ_ATTRIBUTES = frozenset(
    {"in_channels", "out_channels", "in_features", "out_features", "in1_features", "in2_features", "num_features",
     "num_channels", "num_groups", "embedding_dim", "num_embeddings", "num_parameters", "normalized_shape",
     "embed_dim", "num_heads", "head_dim", "kdim", "vdim", "groups", "hidden_size", "input_size", "proj_size"}
)  # fmt: skip

CONFIG = "config@"  # a site's path for a plain config object: ``config@<id>``

_ACTIVE: list[_Log] = []
_RECORDERS: dict[type, type] = {}
_NAMES: frozenset[str] | set[str] = READ_ATTRIBUTES


class _Log:
    """Reads during one trace: the ``SizeRead``s handed out, and which size attributes each
    recorded module had read (by anyone)."""

    def __init__(self, paths: dict[int, str]) -> None:
        self.paths = paths
        self.made: list[SizeRead | SizeTuple] = []
        self.tests: list[SizeTest] = []  # decisions on one attribute each (``SizeTest``)
        self.probed: set[str] = set()  # module paths whose decisions the export probe tries, not pins
        self.reads: dict[int, set[str]] = {}
        self.own: dict[int, frozenset[str]] = {}  # resizing layers' sizes of their tensors, modules' ints
        self.sizes: frozenset[str] = frozenset()  # ``sizes.SIZE_ATTRIBUTES`` while recording
        self.swapped: list[tuple[nn.Module, type]] = []
        self.sinks = sinks_now()  # streams and logging as planning found them (``size_sinks``)
        self.conversions: Conversions | None = None  # the torch.fx tracer's: reads' frames watched (``flow_values``)
        self.symbolic: set[str] = set()  # reads of symbolic lengths under torch.export (``length_reads``)
        self.lists: dict[tuple[int, str], list[Any]] = {}  # list attributes' copies, one per trace (``list_attributes``)

    def note(self, module: nn.Module, name: str) -> None:
        names = self.reads.get(id(module))
        if names is not None:
            names.add(name)

    def narrow(self) -> None:
        """Forget everything before ``torch.export``, whose literals say nothing of what the
        code read. Modules other than torch.nn layers stay recorded for their tests only
        (``probed``): Python deciding on ``self.num_heads`` is tried by the export probe at a
        count that flips it, not pinned here (``repeat_kv``'s ``n_rep == 1`` computes the
        same either way)."""
        self.made.clear()
        self.tests.clear()
        self.lists.clear()
        if self.conversions is not None:
            self.conversions.clear()
        for m, cls in self.swapped:
            self.reads[id(m)] = set()
            if not _layer_class(cls) and id(m) in self.paths:
                self.probed.add(self.paths[id(m)])

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """While ``torch.export`` runs: a torch function mode that classifies the reads passed to
        torch, and ``len()`` that keeps a tensor's length tracked (``length_reads.reading_len``)."""
        with Reaching(self), reading_len():
            yield

    def wrap(self, layer: nn.Module, name: str, value: Any) -> Any:
        path = self.paths.get(id(layer))
        if path is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            kind = PlainRead if read_only_where_literal(layer, name, _NAMES, self.sizes) else SizeRead
            return kind(value, frozenset({(path, name)}), self, ((path, name), value, _same))
        if int_list(value) and read_only_where_literal(layer, name, _NAMES, self.sizes):  # MixNet's ``splits``
            key = (id(layer), name)
            if key not in self.lists:
                self.lists[key] = wrapped_list(
                    value, name, lambda site, v: PlainRead(v, frozenset({(path, site)}), self, ((path, site), v, _same))
                )
            return self.lists[key]
        if isinstance(value, tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return SizeTuple(value, frozenset({(path, name)}), self)
        return value


def _same(v: int) -> int:
    return v


def wrap_config_read(config: object, name: str, value: Any) -> Any:
    """An int the model's code read from a plain config (``config_reads``) while traced, as a
    ``SizeRead``: control flow on a size a group's surgery rewrites pins that group."""
    if not _ACTIVE or isinstance(value, bool) or not isinstance(value, int) or not by_user(2):
        return value
    return SizeRead(value, frozenset({(f"{CONFIG}{id(config)}", name)}), _ACTIVE[-1])


def _recorder(cls: type) -> type:
    rec = _RECORDERS.get(cls)
    if rec is None:
        base: Any = cls.__getattribute__
        layer = _layer_class(cls) and cls.__module__.split(".")[0] == "torch"  # a user's subclass: its own reads too

        def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807
            value = base(self, name)
            if not _ACTIVE:
                return value
            if name == "__dict__":  # ``vars(m)["out_channels"]``
                return _DictReads(self, value, layer) if by_user(1) else value
            log = _ACTIVE[-1]
            if name in _NAMES or (log.own and name in log.own.get(id(self), ())):
                # a model's own ``self.dim`` too; a subclass's layer sizes read by torch's forward it runs
                if not layer or (name in READ_ATTRIBUTES and by_user(1)):
                    wrapped = log.wrap(self, name, value)
                    if wrapped is not value:  # its literals carry their origin (``SIZE_READS``)
                        return wrapped
                log.note(self, name)
            return value

        ns = {"__getattribute__": __getattribute__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        try:
            rec = type(cls.__name__, (cls,), ns)
        except Exception as e:  # noqa: BLE001 - a final class, or an __init_subclass__ that refuses
            raise TypeError(f"cannot record {cls.__name__}") from e
        _RECORDERS[cls] = rec
    return rec


class _DictReads(MutableMapping):
    """A recorded module's ``__dict__`` as the model's code sees it (``vars(m)``, ``m.__dict__``):
    reads of size attributes through it are ``SizeRead``s as attribute reads are; writes go to
    the module's own dictionary."""

    def __init__(self, module: nn.Module, d: dict[str, Any], layer: bool) -> None:
        self._module, self._d, self._layer = module, d, layer

    def __getitem__(self, name: str) -> Any:
        value = self._d[name]
        if _ACTIVE and (name in _NAMES or name in _ACTIVE[-1].own.get(id(self._module), ())):
            log = _ACTIVE[-1]
            if name in READ_ATTRIBUTES or not self._layer:
                return log.wrap(self._module, name, value)
            log.note(self._module, name)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        self._d[name] = value

    def __delitem__(self, name: str) -> None:
        del self._d[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, name: object) -> bool:
        return name in self._d


def _own_sizes(module: nn.Module) -> frozenset[str]:
    """Attributes of a layer with a registered resizer (not a torch.nn layer: those have
    ``READ_ATTRIBUTES``) that hold a length of its own parameters, alone or in a tuple: timm's
    ``RelPosBias.bias_shape`` (window, window, heads) beside its table (positions, heads). The
    resizer recomputes them from the sliced weights, so a literal read from one follows the
    layer (``sizes.size_sources``)."""
    if _layer_class(type(module)) or by_type(RESIZERS, module) is None:
        return frozenset()
    lengths = {n for p in module.parameters(recurse=False) for n in p.shape}

    def sized(v: Any) -> bool:
        if isinstance(v, tuple):
            return any(sized(e) for e in v)
        return isinstance(v, int) and not isinstance(v, bool) and v in lengths

    return frozenset(k for k, v in module.__dict__.items() if not k.startswith("_") and sized(v))


@contextmanager
def recording_size_reads(model: nn.Module, modules: Iterable[nn.Module]) -> Iterator[_Log]:
    """While active, the model's code reads ``READ_ATTRIBUTES`` of its layers, the
    ``sizes.SIZE_ATTRIBUTES`` of other modules and the sizes a resizing layer keeps of its own
    tensors (``_own_sizes``) as ``SizeRead``s, and every read of a ``sizes.SIZE_ATTRIBUTES``
    attribute of a module holding one is noted; every class is restored afterwards."""
    global _NAMES
    from .sizes import SIZE_ATTRIBUTES  # sizes -> config_reads -> this module

    _NAMES = READ_ATTRIBUTES | SIZE_ATTRIBUTES  # users may register more
    modules = list(modules)
    own = {id(m): names for m in modules if (names := _own_sizes(m) | plain_int_attributes(m))}
    chosen = [
        m
        for m in modules
        if (not READ_ATTRIBUTES.isdisjoint(m.__dict__) and _layer_class(type(m)))
        or not SIZE_ATTRIBUTES.isdisjoint(m.__dict__)
        or id(m) in own
    ]
    # modules read only for their plain ints (``attribute_sizes``) record no reads: their literals
    # say which attribute they are, and ``sizes.made_from`` keeps judging their owners unrecorded
    unlisted = {
        id(m) for m in chosen if SIZE_ATTRIBUTES.isdisjoint(m.__dict__) and not _own_sizes(m) and not _layer_class(type(m))
    }
    log = _Log({})
    log.own = own
    log.sizes = frozenset(SIZE_ATTRIBUTES)
    if not chosen:
        yield log
        return
    log.paths = {id(m): p for p, m in model.named_modules()}
    _ACTIVE.append(log)
    try:
        for m in chosen:
            cls = type(m)
            try:
                object.__setattr__(m, "__class__", _recorder(cls))
            except TypeError:  # a class that cannot be subclassed or swapped: not recorded
                continue
            log.swapped.append((m, cls))
            if id(m) not in unlisted:
                log.reads[id(m)] = set()
        yield log
    finally:
        for m, cls in log.swapped:
            object.__setattr__(m, "__class__", cls)
        _ACTIVE.remove(log)


def finish(graph: fx.Graph, log: _Log) -> None:
    """Put plain values back in ``graph`` where it holds reads (their origin on ``SIZE_READS``)
    and list on the output node the attributes Python control flow read (``SIZE_CONTROL``)."""
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    if out is not None and log.reads and not out.meta.get(EXPORTED):  # export's literals are no reads
        out.meta[MODULE_READS] = {log.paths[k]: frozenset(v) for k, v in log.reads.items() if k in log.paths}
    if out is not None and log.tests:
        out.meta[SIZE_TESTS] = tuple(log.tests)
    log.tests.clear()
    if out is not None and log.symbolic:
        out.meta[SYMBOLIC_READS] = frozenset(log.symbolic)
    log.symbolic.clear()
    if not log.made:
        return
    held: set[int] = set()

    def plain(a: Any) -> Any:
        if isinstance(a, SizeFloat):  # classified by the argument it is (``number_uses``)
            held.add(id(a))
            floats.append(a)
            return ReadFloat(float.__float__(a), a._sites)
        if isinstance(a, PlainRead):  # for a split size or slice only (``split_sizes``): no other rule sees it
            held.add(id(a))
            plain_found.setdefault(int.__int__(a), set()).update(a._sites)
            return PlainInt(int.__int__(a), a.formula)
        if isinstance(a, (SizeRead, SizeTuple)):
            held.add(id(a))
            if isinstance(a, SizeRead) and not a.exact and len(a._sites) == 1:  # computed from one (``computed_sizes``)
                computed.update(a._sites)
            found.setdefault(int(a) if isinstance(a, int) else tuple(a), set()).update(a._sites)
            if isinstance(a, int) and len(a._sites) == 1:  # its position says which attribute it is
                read = ReadInt(int(a), next(iter(a._sites)), not a.exact)
                read.formula = of_origin(a._origin)
                return read
            if isinstance(a, int) and not a.exact:  # computed from several: no attribute's value, whatever it equals
                return ReadInt(int(a), min(a._sites), True, frozenset(a._sites))
            return int(a) if isinstance(a, int) else tuple(a)
        return a

    for node in graph.nodes:
        found: dict[Any, set[Site]] = {}
        floats: list[SizeFloat] = []
        plain_found: dict[int, set[Site]] = {}
        computed: set[Site] = set()
        _read_tuples((node.args, node.kwargs), found)
        args, kwargs = fx.node.map_aggregate(node.args, plain), fx.node.map_aggregate(node.kwargs, plain)
        if found or floats or plain_found:
            node.args, node.kwargs = args, kwargs
        if found:
            node.meta[SIZE_READS] = {k: frozenset(v) for k, v in found.items()}
        if plain_found:
            node.meta[PLAIN_READS] = {k: frozenset(v) for k, v in plain_found.items()}
        if computed:
            node.meta[COMPUTED_READS] = frozenset(computed)
    control: dict[Site, str] = {}
    decisions: list[Decision] = []  # on lengths read under torch.export (``length_reads``)
    for t in log.made:
        kind, where, t.made_at = t.control, t.made_at, ()
        unused = kind is None and not (t.derived or t.reached or id(t) in held)
        if unused and not flows_nowhere(where, t.sinks, log.sinks, tests=truth_free(t), unpacked=t.unpacked):
            value = where and log.conversions is not None and log.conversions.value(*where[0], t.sinks)  # ``h * (1.0 / n)``
            kind = VALUE if value else "a use the traced graph does not hold (range, a list's length)"
        if isinstance(kind, str) and kind != VALUE and is_length(t):
            decisions.append(decision(t, where, kind))
        if kind is not None:
            for site in t._sites:
                if site[0] in log.probed or site[0] == LENGTH:  # the export probe tries it (``narrow``)
                    continue
                if control.get(site) in (None, VALUE):
                    control[site] = kind
    log.made.clear()
    if log.conversions is not None:
        log.conversions.clear()
    if out is not None and control:
        out.meta[SIZE_CONTROL] = control
    if out is not None and decisions:
        out.meta[LENGTH_DECISIONS] = tuple(decisions)


def _read_tuples(a: Any, found: dict[Any, set[Site]]) -> None:
    """Record in ``found`` each tuple of reads only in ``a`` as one read of its attributes
    (a ``SizeTuple`` reaches the graph as its elements: ``view(self.bias_shape)``)."""
    if isinstance(a, dict):
        a = tuple(a.values())
    if not isinstance(a, (tuple, list)):
        return
    if a and all(isinstance(e, SizeRead) for e in a):
        found.setdefault(tuple(int.__int__(e) for e in a), set()).update(*(e._sites for e in a))
    for e in a:
        _read_tuples(e, found)
