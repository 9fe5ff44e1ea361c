"""Round 17: plans on meta weights are the plans of the same model with real weights.

- A model too large to copy that torch.export traces (every Hugging Face model) is compared
  with its graph by the ATen ops each runs, the forward run as torch.export sees it: an LLM's
  forward that asks ``h.__class__.__name__`` is refused on meta as with real weights.
- Parameters whose values the forward reads past ``self.g`` (``next(self.bn.parameters())``,
  ``state_dict()``, a plain list or helper object holding them) were followed on real weights
  only (round 14): on meta the group was claimed zero-invariant (0.33 off on real weights).
- A real copy whose output is NaN (a BatchNorm's drawn variance) compared nothing.
- Gemma's scaled embeddings on meta: the export probe's pruned copies read the scale's value
  (``float`` of a meta buffer) and every group the probe tried was pinned.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.errors import TraceError
from sparsekit_graph.graph import eager_check, real_weights

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import transformers_sweep as sweep  # noqa: E402


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    return transformers.LlamaModel(config).eval()


class _AsksAfterLlama(nn.Module):
    """A head after a Llama that centres the hidden states where the forward's value is a
    plain tensor (eagerly, always): the hidden width is not zero-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.llm, self.head = _llama(), nn.Linear(32, 4)

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.llm(input_ids=input_ids).last_hidden_state
        if h.__class__.__name__ == "Tensor":
            h = h - h.mean(-1, keepdim=True)
        return self.head(h)


def _checked_runs(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    ran: list[bool] = []
    run = eager_check._Runs.__call__
    monkeypatch.setattr(eager_check._Runs, "__call__", lambda *a, **k: ran.append((r := run(*a, **k)) is not None) or r)
    return ran


def test_an_llm_on_meta_weights_too_large_to_copy_is_checked_by_its_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real_weights, "REAL_COPY_ELEMENTS", 0)  # as a 7B model is
    ran = _checked_runs(monkeypatch)
    real = _llama()
    with torch.device("meta"):
        model = _llama()
    ids = torch.zeros(2, 8, dtype=torch.long)
    meta_plan = skg.plan(model, {"input_ids": ids.to("meta")})
    assert ran == [True, True], "the forward (as exported) and the exported graph both ran on meta"
    assert meta_plan.groups == skg.plan(real, {"input_ids": ids}).groups


def test_an_llm_forward_that_asks_is_refused_on_meta_weights_as_on_real_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real_weights, "REAL_COPY_ELEMENTS", 0)
    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(_AsksAfterLlama(), {"input_ids": ids})
    with torch.device("meta"):
        model = _AsksAfterLlama()
    with pytest.raises(TraceError, match="the forward runs mean, sub"):
        skg.plan(model, {"input_ids": ids.to("meta")})


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text"])
def test_gemma_on_meta_weights_plans_as_on_real_ones(name: str) -> None:
    model, x = sweep.build(name)
    with torch.device("meta"):
        meta_model, meta_x = sweep.build(name)
    real_plan, meta_plan = skg.plan(model, x), skg.plan(meta_model, meta_x)
    assert [g for g in meta_plan.groups if not g.prunable and g.reason and "meta" in g.reason] == []
    assert meta_plan.groups == real_plan.groups


class _NormThenAsks(nn.Module):
    """conv -> ``norm`` -> ReLU, then ``h - h.mean(1)`` where ``type(h) is torch.Tensor`` (eagerly,
    always); ``g.sqrt()`` of a parameter, if ``rooted``, is NaN where a drawn value is negative."""

    def __init__(self, norm: nn.Module, rooted: bool) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 8, 3, padding=1), norm, nn.Conv2d(8, 4, 1)
        self.g = nn.Parameter(torch.ones(8, 1, 1)) if rooted else None

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm(self.a(x)))
        if self.g is not None:
            h = h * self.g.sqrt()
        if type(h) is torch.Tensor:
            h = h - h.mean(1, keepdim=True)
        return self.b(h)


@pytest.mark.parametrize("rooted", [False, True], ids=["batchnorm", "sqrt_of_a_parameter"])
def test_a_real_copy_whose_output_is_nan_is_checked_by_its_ops(rooted: bool) -> None:
    """The real copy drew a BatchNorm's running variance from a normal: its square root, and
    so both outputs, were NaN and alike, and the meta plan took the branch not run (``a:out``
    zero-invariant, 0.155 off). Buffers are drawn positive now, and a copy whose output is NaN
    or inf is checked by the ops instead."""
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(_NormThenAsks(nn.BatchNorm2d(8), rooted).eval(), x)
    with torch.device("meta"):
        model = _NormThenAsks(nn.BatchNorm2d(8), rooted).eval()
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(model, x.to("meta"))


_READS: dict[str, Callable[[nn.Module], Tensor]] = {
    "parameters": lambda s: next(s.bn.parameters()),
    "state_dict": lambda s: s.state_dict()["bn.weight"],
    "_parameters": lambda s: s.bn._parameters["weight"],
    "named_parameters": lambda s: dict(s.named_parameters())["bn.weight"],
    "list": lambda s: s.held[0],
    "helper": lambda s: s.helper.w,
}


class _ReadsValues(nn.Module):
    def __init__(self, read: Callable[[nn.Module], Tensor]) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.held, self.helper, self.read = [self.bn.weight], types.SimpleNamespace(w=self.bn.weight), read

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        return self.b(h * self.read(self).mean())  # a number the pruned model takes from fewer channels


@pytest.mark.parametrize("name", sorted(_READS))
def test_values_read_past_the_attribute_cost_zero_invariance_on_meta_as_on_real_weights(name: str) -> None:
    x = torch.randn(2, 3, 6, 6)
    real_plan = skg.plan(_ReadsValues(_READS[name]).eval(), x)
    with torch.device("meta"):
        model = _ReadsValues(_READS[name]).eval()
    meta_plan = skg.plan(model, x.to("meta"))
    assert not real_plan.group("a:out").zero_invariant
    assert meta_plan.groups == real_plan.groups
