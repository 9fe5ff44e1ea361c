"""``warnings.warn`` of a message made from a size read (issue 7): a warning is shown, not computed.

``warnings.warn(f"... {self.conv.out_channels}")`` pinned the channels (only ``print`` and
``logging`` were trusted sinks). It is trusted as they are, by the state when the read was made:
shown by warnings' own code on a ``sys.stderr`` that ``print`` may use, never raised. A warning
recorded (``catch_warnings(record=True)``, pytest's own capture) or turned into an error, or a
read given as the category or the stack level, still pins.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers import Body
from torch import Tensor, nn

import sparsekit_graph as skg

X4 = (2, 3, 6, 6)


def _message(s: nn.Module, h: Tensor) -> Tensor:
    warnings.warn(f"{s.a.out_channels} channels")  # noqa: B028 - the plainest spelling
    return h


def _message_keyword(s: nn.Module, h: Tensor) -> Tensor:
    warnings.warn(message="{} channels".format(s.a.out_channels), category=RuntimeWarning, stacklevel=1)  # noqa: UP032
    return h


def _stacklevel(s: nn.Module, h: Tensor) -> Tensor:
    warnings.warn("channels", UserWarning, s.a.out_channels // 8)
    return h


def _stacklevel_keyword(s: nn.Module, h: Tensor) -> Tensor:
    warnings.warn(f"{s.a.out_channels} channels", stacklevel=s.a.out_channels // 8)
    return h


@contextmanager
def _shown() -> Iterator[None]:
    """Warnings shown by warnings' own code (under pytest they are recorded), never raised."""
    spec = importlib.util.spec_from_file_location("_stock_warnings", warnings.__file__)
    assert spec is not None and spec.loader is not None
    stock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stock)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings._showwarnmsg_impl = stock._showwarnmsg_impl  # type: ignore[attr-defined]
        yield


def _group(fn: Callable[[nn.Module, Tensor], Tensor]) -> skg.Group:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Body(fn).eval()
    return skg.plan(model, torch.randn(*X4)).group("a:out")


@pytest.mark.parametrize("fn", [_message, _message_keyword], ids=["positional", "keyword"])
def test_a_warned_count_is_shown_not_computed(fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    with _shown():
        g = _group(fn)
    assert g.prunable and g.zero_invariant, g


@pytest.mark.parametrize("fn", [_stacklevel, _stacklevel_keyword], ids=["positional", "keyword"])
def test_a_count_given_as_the_stack_level_pins(fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    with _shown():
        g = _group(fn)
    assert not g.prunable and "a.out_channels" in (g.reason or ""), g


@pytest.mark.parametrize("state", ["recorded", "error", "captured_by_logging"])
def test_a_warning_the_model_could_see_again_pins(state: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Body(_message).eval()
    with _shown(), warnings.catch_warnings(record=state == "recorded"):
        if state == "error":  # of another category: the walk does not tell categories apart
            warnings.simplefilter("error", DeprecationWarning)
        if state == "captured_by_logging":
            import logging

            logging.captureWarnings(True)
        try:
            g = skg.plan(model, torch.randn(*X4)).group("a:out")
        finally:
            if state == "captured_by_logging":
                logging.captureWarnings(False)
    assert not g.prunable and "a.out_channels" in (g.reason or ""), g
