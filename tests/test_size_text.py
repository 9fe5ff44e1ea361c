"""A channel count made text or a hash (issue 7, adversary round 3): a use unless only shown.

``len(str(h.shape[1]))`` or ``{16: 1.0}.get(h.shape[1])`` computes with the count (pinned:
``tests/test_adversary_round3.py``); ``print(h.shape[1])`` or a log call only shows it and plans
as if the line were not there. Text written where the model could read it back pins.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable

import pytest
import torch
from helpers import Body
from torch import Tensor, nn

import sparsekit_graph as skg

_BUF = io.StringIO()
_log = logging.getLogger(__name__)


def _printed(s: nn.Module, h: Tensor) -> Tensor:
    print(h.shape[1], f"{h.shape} {h.shape[1]:>4}", file=sys.stderr)
    return h


def _logged(s: nn.Module, h: Tensor) -> Tensor:
    _log.debug("%s channels", h.shape[1])
    return h


def _dropped(s: nn.Module, h: Tensor) -> Tensor:
    str(s.a.out_channels)
    return h


def _assert_message(s: nn.Module, h: Tensor) -> Tensor:
    torch._assert(h.dim() == 4, f"expected (B, C, H, W), got {h.shape}")  # torchvision's ViT / Swin checks
    return h


def _assert_on_text(s: nn.Module, h: Tensor) -> Tensor:
    torch._assert(len(f"{h.shape[1]}") == 1, "one digit")  # the text is the condition: a use (8 channels)
    return h


def _assert_on_str(s: nn.Module, h: Tensor) -> Tensor:
    torch._assert(str(h.shape[1]) == "8", "eight channels")  # pruned to 6: the check fails
    return h


def _assert_on_fstring(s: nn.Module, h: Tensor) -> Tensor:
    torch._assert(condition=f"{h.shape[1]}" == "8", message="eight channels")
    return h


def _assert_message_by_name(s: nn.Module, h: Tensor) -> Tensor:
    torch._assert(condition=h.dim() == 4, message="got " + str(h.shape[1]) + " channels")
    return h


def _read_back(s: nn.Module, h: Tensor) -> Tensor:
    print(h.shape[1], file=_BUF)
    return h


def _hashed(s: nn.Module, h: Tensor) -> Tensor:
    n = s.a.out_channels  # held by the graph too (a view's size): no flow check of the read itself
    h = h.reshape(h.shape[0], n, -1).reshape(h.shape)
    return h * (1.0 if n in {16, 32} else 2.0)


def _group(fn: Callable[[nn.Module, Tensor], Tensor]) -> skg.Group:
    return skg.plan(Body(fn).eval(), torch.randn(2, 3, 6, 6)).group("a:out")


@pytest.mark.parametrize(
    "fn",
    [_printed, _logged, _dropped, _assert_message, _assert_message_by_name],
    ids=["print", "log", "dropped", "assert_message", "assert_message_by_name"],
)
def test_a_count_shown_as_text_is_no_use(fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    g = _group(fn)
    assert g.prunable and g.zero_invariant, g


@pytest.mark.parametrize(
    "fn",
    [
        _read_back,
        _hashed,
        _assert_on_text,
        _assert_on_str,
        _assert_on_fstring,
    ],
    ids=["read_back", "set_membership", "assert_on_text", "assert_on_str", "assert_on_fstring"],
)
def test_a_count_as_text_kept_or_as_a_key_pins(fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    g = _group(fn)
    assert not g.prunable, g
