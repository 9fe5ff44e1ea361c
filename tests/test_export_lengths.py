"""Lengths the model's code reads under ``torch.export`` (issue 7: two spellings, one plan).

``len(t)`` is ``t.shape[0]`` there too (``length_reads.reading_len``), and a truth test of a
count (``if h.shape[1]:``, ``all(x.shape)``, ``if self.conv.out_channels:``) decides nothing
pruning can change: a count stays >= 1. Each unpinned spelling has a twin whose length decides
something pruning flips (``n > 1``, ``n - 1``, ``range(n)``, ``== C``), and the twin still pins.
``Net`` (``test_adversary_round3``) goes to torch.export with ``export=True`` (a device check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


# -- a truth test of a count ------------------------------------------------------------------


def _if_length(s: nn.Module, h: Tensor) -> Tensor:
    if h.shape[1]:
        h = h * 2
    return h


def _if_length_minus_one(s: nn.Module, h: Tensor) -> Tensor:
    if h.shape[1] - 1:  # 0 at one channel: pruning flips it
        h = h * 2
    return h


def _if_length_above_one(s: nn.Module, h: Tensor) -> Tensor:
    if h.shape[1] > 1:
        h = h * 2
    return h


def _all_of_shape(s: nn.Module, h: Tensor) -> Tensor:
    if not all(h.shape):  # LongT5's ``_pad_to_multiple``
        return h
    return h * 2


def _tested_then_looped(s: nn.Module, h: Tensor) -> Tensor:
    n = h.shape[1]
    if n:
        h = h * 2
    return sum(h[:, i : i + 1] for i in range(n))


def _if_attribute(s: nn.Module, h: Tensor) -> Tensor:
    if s.conv.out_channels:
        h = s.conv(h)
    return h


def _if_attribute_minus_one(s: nn.Module, h: Tensor) -> Tensor:
    if s.conv.out_channels - 1:
        h = s.conv(h)
    return h


def _if_attribute_above_one(s: nn.Module, h: Tensor) -> Tensor:
    if s.conv.out_channels > 1:
        h = s.conv(h)
    return h


@pytest.mark.parametrize("fn", [_if_length, _all_of_shape], ids=["if_length", "all_of_shape"])
def test_a_truth_test_of_a_length_is_no_decision(fn: Fn) -> None:
    _prunes(fn)


@pytest.mark.parametrize(
    "fn", [_if_length_minus_one, _if_length_above_one, _tested_then_looped], ids=["minus_one", "above_one", "then_range"]
)
def test_a_length_pruning_flips_still_pins(fn: Fn) -> None:
    _pins(fn)


@pytest.mark.parametrize("export", [True, False], ids=["export", "fx"])
def test_a_truth_test_of_a_layer_attribute_is_no_decision(export: bool) -> None:
    _prunes(_if_attribute, export, "conv:out")


@pytest.mark.parametrize("export", [True, False], ids=["export", "fx"])
@pytest.mark.parametrize("fn", [_if_attribute_minus_one, _if_attribute_above_one], ids=["minus_one", "above_one"])
def test_a_layer_attribute_pruning_flips_still_pins(fn: Fn, export: bool) -> None:
    _pins(fn, export, "conv:out", why="control flow")


def _zero_in_joined_shape(s: nn.Module, h: Tensor) -> Tensor:
    shape = h.shape[:1] + (h.shape[2] // 2, 2) + h.shape[3:]  # LongT5's ``_split_into_blocks``
    if 0 in shape:
        return h
    return h * 2


def _zero_in_joined_channels(s: nn.Module, h: Tensor) -> Tensor:
    shape = h.shape[:0] + (h.shape[0],) + h.shape[1:]  # the channels in the tail: one shape
    if 0 in shape:
        return h
    return h.reshape(shape) * 2


def _one_in_shape(s: nn.Module, h: Tensor) -> Tensor:
    shape = h.shape[:0] + (h.shape[0],) + h.shape[1:]
    if 1 in shape:  # true at one channel
        return h
    return h.reshape(shape) * 2


def _zero_in_computed(s: nn.Module, h: Tensor) -> Tensor:
    shape = h.shape[:1] + (h.shape[1] - 1,) + h.shape[2:]  # 0 at one channel
    if 0 in shape:
        return h
    return h * 2


@pytest.mark.parametrize("fn", [_zero_in_joined_shape, _zero_in_joined_channels], ids=["blocks", "channels_in_tail"])
def test_zero_in_a_shape_is_no_decision(fn: Fn) -> None:
    _prunes(fn)


@pytest.mark.parametrize("fn", [_one_in_shape, _zero_in_computed], ids=["one_in", "zero_in_computed"])
def test_membership_pruning_flips_still_pins(fn: Fn) -> None:
    _pins(fn, why="control flow")


@pytest.mark.slow
def test_longt5_heads_prune_and_reload(tmp_path: Path) -> None:
    """LongT5 (local attention) pinned its encoder heads on ``_pad_to_multiple``'s ``all(x.shape)``
    and ``_split_into_blocks``' ``0 in output_shape``: now prunable, exact at 0.5, and the pruned
    model reloads from its config with equal outputs."""
    transformers = pytest.importorskip("transformers")
    from helpers import check_oracle
    from test_adversary_round7_hf import _hf, _ids

    assert transformers
    model = _hf("LongT5Config", "LongT5Model", vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                num_decoder_layers=2, num_heads=4, local_radius=2, encoder_attention_type="local")  # fmt: skip
    x = {**_ids(), "decoder_input_ids": _ids()["input_ids"][:, :5]}
    result = check_oracle(model, x, tmp_path)
    heads = result.plan.group("encoder.block.0.layer.0.LocalSelfAttention.q:out")
    assert heads.prunable, heads.reason
    assert result.report.reloadable
    result.model.save_pretrained(tmp_path / "small")
    again = type(model).from_pretrained(tmp_path / "small").eval()
    with torch.no_grad():
        assert torch.equal(result.model.eval()(**x).last_hidden_state, again(**x).last_hidden_state)


def _kept_then_view(s: nn.Module, h: Tensor) -> Tensor:
    n = h.shape[1]
    h = torch.relu(h * 2)
    return h.reshape(h.shape[0], n, -1).reshape(h.shape)  # the kept read reaches the view


def _kept_then_listed(s: nn.Module, h: Tensor) -> Tensor:
    n = h.shape[1]
    h = torch.relu(h * 2)
    return h * torch.tensor([1.0] * n).view(1, -1, 1, 1)  # ``[1.0] * n`` takes its value silently


def test_a_length_kept_in_a_local_then_a_size_prunes() -> None:
    _prunes(_kept_then_view)


def test_a_length_kept_in_a_local_then_taken_silently_pins() -> None:
    _pins(_kept_then_listed)
