"""The mutable containers a model's modules hold, recorded and put back in place.

A ``forward`` may keep state in plain Python containers: ``self.hist.append(h.shape[1])``,
``self.outs.append(h.detach())``, ``self.stats["n"] += 1``, a ``deque(maxlen=3)`` of features.
Tracing runs that code on stand-ins (a torch.fx ``Proxy``, a traced size, a ``FakeTensor``) and
would leave them in the user's lists. ``record`` notes every list, dict, set and deque among the
given values (and those nested in them) with its contents, shallowly; ``restore`` puts the
contents back into the same objects, so outside references to them stay valid. Other objects
(tuples, dataclasses, subclasses of these types) are left alone.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable
from itertools import chain, compress, filterfalse
from operator import is_not
from typing import Any

__all__ = ["CONTAINERS", "Recorded", "record", "restore"]

# Exact types only: a subclass may forbid ``clear`` (Hugging Face's ``ModelOutput``).
CONTAINERS = frozenset({list, dict, set, deque, OrderedDict, defaultdict})
_MAPPINGS = frozenset({dict, OrderedDict, defaultdict})
_is_kind = CONTAINERS.__contains__

# The empty containers, and each other one with its keys (or elements) and values (mappings).
Recorded = tuple[list[Any], list[tuple[Any, tuple, "tuple | None"]]]


def record(values: list[object]) -> Recorded:
    """The containers among ``values`` and those nested in them, with their contents."""
    found = list(compress(values, map(_is_kind, map(type, values))))
    full = list(filter(None, found))
    if any(map(_is_kind, map(type, chain.from_iterable(map(_elements, full))))):
        found = _nested(found, full)
        full = list(filter(None, found))
    return list(filterfalse(None, found)), [(c, tuple(c), tuple(c.values()) if type(c) in _MAPPINGS else None) for c in full]


def _nested(found: list[Any], todo: list[Any]) -> list[Any]:
    """``found`` and, depth first, every container nested in ``todo``'s (once each)."""
    seen = set(map(id, found))
    found, todo = list(found), list(todo)
    while todo:
        for v in _elements(todo.pop()):
            if type(v) in CONTAINERS and id(v) not in seen:
                seen.add(id(v))
                found.append(v)
                if v:
                    todo.append(v)
    return found


def restore(recorded: Recorded) -> None:
    """Put every recorded container's contents back where they changed."""
    empty, full = recorded
    if any(empty):  # most stay empty: one check in C
        for c in empty:
            c.clear()
    for c, keys, values in full:
        if len(c) != len(keys):
            _put_back(c, keys, values)
        elif values is not None:
            if any(map(is_not, c.values(), values)) or any(map(is_not, c, keys)):
                _put_back(c, keys, values)
        elif type(c) is set:
            if not all(map(c.__contains__, keys)):
                _put_back(c, keys, values)
        elif any(map(is_not, c, keys)):
            _put_back(c, keys, values)


def _elements(c: Any) -> Iterable[object]:
    return c.values() if type(c) in _MAPPINGS else c


def _put_back(c: Any, keys: tuple, values: tuple | None) -> None:
    if type(c) is list:
        c[:] = keys
        return
    c.clear()
    if values is not None:
        c.update(zip(keys, values))
    elif type(c) is set:
        c.update(keys)
    else:
        c.extend(keys)
