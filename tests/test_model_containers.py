"""Planning and pruning leave the lists, dicts, sets and deques a model's forward fills as they were.

A forward that keeps history (``self.hist.append(h.shape[1])``), a feature cache, a nested dict
of lists or a ``deque(maxlen=...)`` is traced on stand-ins (a torch.fx ``Proxy``, a traced size, a
``FakeTensor`` under torch.export): afterwards the same container objects hold the same values,
and a container nobody can copy is named in a ``SparseKitError``.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.containers import record, restore
from sparsekit_graph.model_state import kept
from sparsekit_graph.prune.copying import copy_model


class _Keeper(nn.Module):
    """conv -> ReLU -> conv; forward writes into every kind of container it holds. ``export=True``
    adds a branch torch.fx cannot trace (the plan comes from torch.export)."""

    def __init__(self, export: bool) -> None:
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.export = export
        self.stats: dict[str, list] = {"sizes": [], "feats": []}  # nested: a dict of lists
        self.recent: deque[Tensor] = deque(maxlen=2)
        self.seen: set[int] = {3}
        self.counts: defaultdict[str, int] = defaultdict(int)
        self._private: list[object] = []

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.export and h.is_cuda:
            h = h.contiguous()
        # the input's sizes: a pruned length kept where the graph cannot follow it pins under
        # torch.export (``length_reads``: Python may take an int's value silently)
        self.stats["sizes"].append(x.shape[1])
        self.stats["feats"].append(h.detach())
        self.recent.append(h.detach())
        self.seen.add(len(self.recent))  # (a size hashed into a set is a use of it: pins)
        self.counts["calls"] += 1
        self._private.append(x.shape)
        return self.head(h)


def _contents(m: _Keeper) -> tuple:
    """What the containers hold, by identity for objects (tensors, shapes) and by value for ints."""
    return (
        [*m.stats["sizes"]], [id(t) for t in m.stats["feats"]], [id(t) for t in m.recent], sorted(m.seen),
        dict(m.counts), [id(v) for v in m._private], list(m.stats),
    )  # fmt: skip


def _objects(m: _Keeper) -> list[object]:
    return [m.stats, m.stats["sizes"], m.stats["feats"], m.recent, m.seen, m.counts, m._private]


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_plan_and_prune_leave_containers(export: bool) -> None:
    model = _Keeper(export).eval()
    x = torch.randn(2, 3, 6, 6)
    model(x)
    model(x)
    objects = _objects(model)
    before = _contents(model)
    plan = skg.plan(model, x)
    assert _contents(model) == before
    assert all(type(v) is int for v in model.stats["sizes"]) and model.recent.maxlen == 2
    group = next(g for g in plan.groups if g.name == "a:out")
    assert group.prunable, group.reason
    pruned = skg.prune(model, plan, ratio=0.5).model
    assert _contents(model) == before
    assert all(a is b for a, b in zip(objects, _objects(model), strict=True))  # the same objects, refilled
    assert pruned(x).shape == (2, 4, 6, 6)


def test_kept_restores_contents_in_place() -> None:
    """Appended, replaced, removed and reordered entries come back; the objects stay the same."""
    m = nn.Linear(2, 2)
    m.items, m.table, m.tags, m.fifo = [1, 2], {"a": 1, "b": 2}, {"x"}, deque([1], maxlen=3)
    m.nest = [[1], {"k": [2]}]
    refs = (m.items, m.table, m.tags, m.fifo, m.nest[0], m.nest[1]["k"])
    with kept(m, values=False):
        m.items.append(3)
        m.items[0] = 9
        m.table.pop("a")
        m.table["a"] = 5  # same length, other order and value
        m.tags.symmetric_difference_update({"x", "y"})
        m.fifo.extend([7, 8, 9])
        m.nest[0].clear()
        m.nest[1]["k"].append(3)
    after = (m.items, list(m.table.items()), m.tags, list(m.fifo), m.nest)
    assert after == ([1, 2], [("a", 1), ("b", 2)], {"x"}, [1], [[1], {"k": [2]}])
    assert all(a is b for a, b in zip(refs, (m.items, m.table, m.tags, m.fifo, m.nest[0], m.nest[1]["k"])))
    assert m.fifo.maxlen == 3


def test_record_handles_cycles_and_leaves_subclasses() -> None:
    """A list that holds itself is recorded once; a subclass of ``dict`` is not touched."""

    class Frozen(dict):
        def clear(self) -> None:
            raise AssertionError("a subclass must not be cleared")

    loop: list = [1]
    loop.append(loop)
    frozen = Frozen(a=1)
    held = record([loop, frozen])
    loop.append(2)
    frozen["b"] = 2
    restore(held)
    assert len(loop) == 2 and loop[1] is loop and frozen == {"a": 1, "b": 2}


def test_copy_names_an_attribute_it_cannot_copy() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 1))
    m[0].lock = threading.Lock()
    with pytest.raises(skg.TraceError, match=r"attribute 0\.lock \(lock\)"):
        copy_model(m)


def test_copy_detaches_computed_tensors_in_containers() -> None:
    """A cache of activations that still need grad (``self.outs.append(h)``) copies detached."""
    m = nn.Conv2d(3, 4, 1)
    m.outs = [m(torch.randn(1, 3, 2, 2))]
    work = copy_model(m)
    assert work.outs[0] is not m.outs[0] and work.outs[0].is_leaf and torch.equal(work.outs[0], m.outs[0])
