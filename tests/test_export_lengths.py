"""Lengths the model's code reads under ``torch.export`` (issue 7: two spellings, one plan).

``len(t)`` is ``t.shape[0]`` there too (``length_reads.reading_len``), and a truth test of a
count (``if h.shape[1]:``, ``all(x.shape)``, ``if self.conv.out_channels:``) decides nothing
pruning can change: a count stays >= 1. Each unpinned spelling has a twin whose length decides
something pruning flips (``n > 1``, ``n - 1``, ``range(n)``, ``== C``), and the twin still pins.
``Net`` (``test_adversary_round3``) goes to torch.export with ``export=True`` (a device check).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_adversary_round3 import C, Net, X
from torch import Tensor, nn

import sparsekit_graph as skg

Fn = Callable[[nn.Module, Tensor], Tensor]


def _group(fn: Fn, export: bool = True, name: str = "a:out") -> skg.Group:
    model = Net(fn, export=export, conv=nn.Conv2d(C, C, 1)).eval()
    return skg.plan(model, torch.randn(*X)).group(name)


def _prunes(fn: Fn, export: bool = True, name: str = "a:out") -> None:
    """``name`` is prunable, and ``prune`` at 0.5 runs and keeps the output's shape."""
    model = Net(fn, export=export, conv=nn.Conv2d(C, C, 1)).eval()
    x = torch.randn(*X)
    plan = skg.plan(model, x)
    g = plan.group(name)
    assert g.prunable, g.reason
    pruned = skg.prune(model, plan, ratio=0.5).model.eval()
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


def _pins(fn: Fn, export: bool = True, name: str = "a:out", why: str = "") -> None:
    """``name`` is pinned (``why`` in the reason)."""
    g = _group(fn, export, name)
    assert not g.prunable and why in (g.reason or ""), g.reason


def _t(h: Tensor) -> Tensor:
    return h.transpose(0, 1)  # axis 0 is the channels


# -- len(t) -----------------------------------------------------------------------------------


def test_len_of_a_weight_is_a_number_not_a_pin() -> None:
    """``h / len(w)``: the count as a value (not zero-invariant), as ``h / w.shape[0]``."""
    g = _group(lambda s, h: s.conv(h) / len(s.conv.weight), name="conv:out")
    assert g.prunable and not g.zero_invariant, g.reason


def test_len_of_a_weight_decided_on_pins() -> None:
    _pins(lambda s, h: s.conv(h) * (2 if len(s.conv.weight) > 8 else 1), name="conv:out", why="control flow")


def test_len_of_the_channels_as_a_view_size_prunes() -> None:
    _prunes(lambda s, h: _t(_t(h).reshape(len(_t(h)), -1).reshape(_t(h).shape)))


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, h: sum(h[:, i : i + 1] for i in range(len(_t(h)))),
        lambda s, h: h + torch.tensor([1.0] * len(_t(h))).view(1, -1, 1, 1),
        lambda s, h: h * 2 if len(_t(h)) == C else h,
    ],
    ids=["range", "list_times", "equals"],
)
def test_len_of_the_channels_decided_on_pins(fn: Fn) -> None:
    """Pinned (by the decision, the code it runs, or the slices or constant it makes)."""
    _pins(fn)


def test_len_of_a_plain_list_is_the_builtin() -> None:
    """``len()`` of anything but a tensor is the builtin's (a list of parts: no read)."""
    _prunes(lambda s, h: torch.cat(list(h.chunk(2, 1))[: len([0, 1])], 1))
