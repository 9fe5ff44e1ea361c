"""List attributes of ints that a model's own module sizes tensors with, element by element.

timm's MixNet keeps the widths of its mixed convolution's parts in a list, ``MixedConv2d.splits
= [16, 8, 8]``, and splits by it: ``torch.split(x, self.splits, 1)``. While a forward is traced,
such a list is handed to the model's code as a copy whose elements are ``PlainRead``s of their
own sites, ``(path, "splits[0]")`` (``element``), so each split size carries the element it was
read from; ``split_sizes`` follows them part by part and surgery lowers each element by what
its part lost (``write_size``). The module's own list is never written while planning; code
that writes to the copy is refused (it would trace other code than the model runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["base_name", "element", "int_list", "read_size", "wrapped_list", "write_size"]

_ELEMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)\[(?P<index>\d+)\]$")


def int_list(v: Any) -> bool:
    """Is ``v`` a non-empty list of plain ints (not bools)?"""
    return type(v) is list and bool(v) and all(isinstance(e, int) and not isinstance(e, bool) for e in v)


def element(attr: str, k: int) -> str:
    """The attribute name of element ``k`` of list attribute ``attr``: ``splits[0]``."""
    return f"{attr}[{k}]"


def _parts(attr: str) -> tuple[str, int | None]:
    found = _ELEMENT.match(attr)
    return (found["name"], int(found["index"])) if found else (attr, None)


def base_name(attr: str) -> str:
    """The attribute holding ``attr``: ``splits`` for ``splits[0]``, ``attr`` itself otherwise."""
    return _parts(attr)[0]


def read_size(holder: object, attr: str, default: Any = None) -> Any:
    """``holder.attr``, or element ``k`` of ``holder.name`` for ``name[k]``; ``default`` where
    there is none."""
    name, k = _parts(attr)
    value = getattr(holder, name, default)
    if k is None:
        return value
    return value[k] if isinstance(value, list) and k < len(value) else default


def write_size(holder: object, attr: str, value: int) -> None:
    """Set ``holder.attr``; for ``name[k]`` a new list with element ``k`` replaced (the old list
    may be shared with another model)."""
    name, k = _parts(attr)
    if k is None:
        setattr(holder, name, value)
        return
    new = list(getattr(holder, name))
    new[k] = value
    setattr(holder, name, new)


class _ReadList(list):
    """A copy of a list attribute handed to the model's code. Writing to it would change only
    the copy, so the traced code would not be the model's: it refuses (the trace fails)."""


def _refuse(name: str) -> Callable[..., Any]:
    def write(self: _ReadList, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"a list attribute of sizes is written while traced ({name}): not modelled")

    return write


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):  # fmt: skip
    setattr(_ReadList, _name, _refuse(_name))


def wrapped_list(value: list[int], attr: str, wrap: Callable[[str, int], Any]) -> list[Any]:
    """A copy of ``value`` whose element ``k`` is ``wrap(element(attr, k), value[k])``; writes to
    it raise (``_ReadList``)."""
    return _ReadList(wrap(element(attr, k), v) for k, v in enumerate(value))
