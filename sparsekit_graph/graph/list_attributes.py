"""List attributes of ints that a model's own module sizes tensors with, element by element.

timm's MixNet keeps the widths of its mixed convolution's parts in a list, ``MixedConv2d.splits
= [16, 8, 8]``, and splits by it: ``torch.split(x, self.splits, 1)`` (a tuple the same). While a forward is traced,
such a list is handed to the model's code as a copy whose elements are ``PlainRead``s of their
own sites, ``(path, "splits[0]")`` (``element``), so each split size carries the element it was
read from; ``split_sizes`` follows them part by part and surgery lowers each element by what
its part lost (``write_size``). The module's own list is never written while planning: the
code writes to its copy, one per trace (the tracer keeps it), so a later read sees the write as
the model would. A list the forward writes (``self.hist.append(n)``) is no list of sizes: each
element handed out is then a use that pins what it sized.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["base_name", "element", "int_list", "read_size", "size_holder", "wrapped_list", "write_size"]

_ELEMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)\[(?P<index>\d+)\]$")


def int_list(v: Any) -> bool:
    """Is ``v`` a non-empty list or tuple of plain ints (not bools)?"""
    return type(v) in (list, tuple) and bool(v) and all(isinstance(e, int) and not isinstance(e, bool) for e in v)


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
    return value[k] if isinstance(value, (list, tuple)) and k < len(value) else default


def size_holder(modules: dict[str, Any], owner: str) -> object | None:
    """The object holding a size attribute: the module named ``owner``, or a config a module
    holds (``"layers.0.attn.config"``, ``"config"``); None where there is none."""
    if owner in modules:
        return modules[owner]
    path, _, attr = owner.rpartition(".")
    return getattr(modules[path], attr, None) if path in modules else None


def write_size(holder: object, attr: str, value: int) -> None:
    """Set ``holder.attr``; for ``name[k]`` a new list (or tuple) with element ``k`` replaced (the
    old one may be shared with another model)."""
    name, k = _parts(attr)
    if k is None:
        setattr(holder, name, value)
        return
    old = getattr(holder, name)
    new = list(old)
    new[k] = value
    setattr(holder, name, tuple(new) if isinstance(old, tuple) else new)


class _ReadList(list):
    """A copy of a list attribute handed to the model's code, written in place of the module's."""


def _written(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def write(self: _ReadList, *args: Any, **kwargs: Any) -> Any:
        for e in list.__iter__(self):
            if getattr(e, "control", False) is None:  # a tracked element not yet used otherwise
                e.control = f"a write to its list ({name})"
        return base(self, *args, **kwargs)

    return write


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):  # fmt: skip
    setattr(_ReadList, _name, _written(_name))


def wrapped_list(value: list[int] | tuple[int, ...], attr: str, wrap: Callable[[str, int], Any]) -> list[Any] | tuple[Any, ...]:
    """A copy of ``value`` whose element ``k`` is ``wrap(element(attr, k), value[k])``; a write
    to a list makes its elements uses (``_ReadList``); a tuple stays a tuple (``self.splits =
    (16, 8, 8)``: no write to follow)."""
    wrapped = (wrap(element(attr, k), v) for k, v in enumerate(value))
    return tuple(wrapped) if isinstance(value, tuple) else _ReadList(wrapped)
