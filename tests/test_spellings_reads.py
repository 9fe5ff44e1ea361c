"""Two spellings of one computation give one plan, and that plan prunes (not pins):

- attention over a ``(B * heads, L, d)`` layout (``reshape(B * H, L, d)`` then ``bmm``, BART/OPT's
  ``view(bsz * self.num_heads, -1, self.head_dim)``, ``flatten(0, 1)``) plans like ``matmul``
  over ``(B, H, L, d)``: the merged axis carries the heads (``ops_reshape._merge_carrier``);
- a size read the model's code only shows (f-string, ``str``, logging) or never uses plans like
  the same model without the read (``graph/size_flow.py``), while a read that can decide
  control flow or reach a Python-level size still pins.

Each pair: ``plan.model_dump()`` equal with group names left out, and the oracle (prune runs,
masked dense == pruned on every zero-invariant group).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import check_oracle, oracle_or_refusal
from torch import Tensor, nn

import sparsekit_graph as skg

D, H, HD, L, DIN, OUT = 24, 4, 6, 5, 12, 5
X = (2, L, DIN)


def dump(plan: skg.Plan) -> dict[str, Any]:
    """``plan.model_dump()`` with every group name replaced by the group's position and the
    traced nodes' names left out (``uses`` of a size attribute: one spelling has more views)."""
    names = {g.name: i for i, g in enumerate(plan.groups)}

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("name", "uses")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return names.get(x, x) if isinstance(x, str) else x

    return strip(plan.model_dump())


# -- (B * heads) layouts ---------------------------------------------------------------------


class Heads(nn.Module):
    """One pre-norm attention block and an MLP; ``core`` spells the product over the heads."""

    def __init__(self, core: str, export: bool = False) -> None:
        super().__init__()
        self.core, self.export, self.num_heads, self.head_dim, self.scale = core, export, H, HD, HD**-0.5
        self.inp, self.norm = nn.Linear(DIN, D), nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.fc1, self.fc2, self.head = nn.Linear(D, 32), nn.Linear(32, D), nn.Linear(D, OUT)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        if self.export and h.is_cuda:  # torch.fx cannot trace this: torch.export (and the probe) plan it
            h = h.contiguous()
        B, n, _ = h.shape
        t = self.norm(h)
        q, k, v = (p(t).view(B, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        o = getattr(self, f"_{self.core}")(q, k, v)  # (B, H, L, d)
        h = h + self.o(o.transpose(1, 2).reshape(B, n, -1))
        return self.head(h + self.fc2(F.gelu(self.fc1(h))))

    def _matmul(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v

    def _bmm(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, n, d = q.shape
        att = torch.bmm(q.reshape(B * h, n, d), k.reshape(B * h, n, d).transpose(1, 2)) * self.scale
        return torch.bmm(att.softmax(-1), v.reshape(B * h, n, d)).view(B, h, n, d)

    def _bart(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        bsz, n = q.shape[0], q.shape[2]
        shape = (bsz * self.num_heads, -1, self.head_dim)
        q, k, v = (t.contiguous().view(*shape) for t in (q, k, v))
        att = F.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        return torch.bmm(att, v).view(bsz, self.num_heads, n, self.head_dim)

    def _flatten(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B = q.shape[0]
        q, k, v = (t.flatten(0, 1) for t in (q, k, v))
        att = torch.baddbmm(torch.zeros(1, 1, 1), q, k.mT, alpha=self.scale).softmax(-1)
        return att.bmm(v).unflatten(0, (B, -1))


def _heads_plan(core: str, export: bool = False) -> tuple[nn.Module, skg.Plan]:
    torch.manual_seed(0)
    model = Heads(core, export).eval()
    return model, skg.plan(model, torch.randn(*X))


@pytest.mark.parametrize("export", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fx", "export"])
@pytest.mark.parametrize("core", ["bmm", "bart", "flatten"])
def test_bmm_over_merged_heads_plans_like_matmul(core: str, export: bool, tmp_path: Path) -> None:
    _, base = _heads_plan("matmul", export)
    heads = next(g for g in base.groups if g.size == H)
    assert heads.prunable and heads.zero_invariant, heads.reason
    model, plan = _heads_plan(core, export)
    assert dump(plan) == dump(base)
    result = check_oracle(model, torch.randn(*X), tmp_path)
    assert result.report.kept[heads.name] < H


def test_a_split_with_other_factors_stays_exact(tmp_path: Path) -> None:
    """``(B * H)`` split back as ``(B * H / 2, 2)``: no merge to follow, the oracle still holds."""

    class Odd(Heads):
        def _bmm(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            B, h, n, d = q.shape
            o = torch.bmm(q.reshape(B * h, n, d), v.reshape(B * h, n, d).transpose(1, 2).softmax(-1)) @ k.reshape(B * h, n, d)
            return o.view(B * h // 2, 2, n, d).view(B, h, n, d)

    torch.manual_seed(0)
    model = Odd("bmm").eval()
    check_oracle(model, torch.randn(*X), tmp_path, require=False, min_drop=0.0)


# -- size reads that are only shown, or go nowhere -------------------------------------------

C = 64
X4 = (2, 3, 6, 6)
_log = logging.getLogger("spellings_reads")
_SINK = io.StringIO()


class Reads(nn.Module):
    """conv ``a`` -> BN -> conv ``conv`` -> BN -> ``fn(self, h)`` -> 1x1 head."""

    def __init__(self, fn: Callable[[nn.Module, Tensor], Tensor], export: bool = False) -> None:
        super().__init__()
        self.export = export
        self.a, self.bn, self.conv = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.Conv2d(C, C, 3)
        self.bn2, self.head, self.fn = nn.BatchNorm2d(C), nn.Conv2d(C, 4, 1), fn

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn2(self.conv(torch.relu(self.bn(self.a(x))))))
        if self.export and h.is_cuda:  # torch.export plans it
            h = h.contiguous()
        return self.head(self.fn(self, h))


def _plain(s: nn.Module, h: Tensor) -> Tensor:
    return h


def _width(s: nn.Module) -> int:
    return s.conv.out_channels


def _note(text: str) -> bool:
    return text.startswith("6")


# Harmless: the same plan as ``_plain``.
def _fstring(s: nn.Module, h: Tensor) -> Tensor:
    _log.debug(f"conv has {s.conv.out_channels} channels")
    return h


def _percent_args(s: nn.Module, h: Tensor) -> Tensor:
    _log.info("conv has %d channels", s.conv.out_channels)
    return h


def _unused(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels  # noqa: F841 - read, never used
    return h


def _statement(s: nn.Module, h: Tensor) -> Tensor:
    s.conv.out_channels  # noqa: B018 - read, dropped
    return h


def _str_format(s: nn.Module, h: Tensor) -> Tensor:
    _log.debug("{} -> {}".format(s.a.out_channels, s.conv.out_channels) + " " + str(s.conv.out_channels))  # noqa: UP032
    logging.debug("%s", repr(s.conv.out_channels // 2))
    return h


def _percent(s: nn.Module, h: Tensor) -> Tensor:
    _log.warning("conv: %d" % s.conv.out_channels) if h.dim() > 9 else None  # noqa: UP031
    return h


def _print(s: nn.Module, h: Tensor) -> Tensor:
    print(f"{s.conv.out_channels:>4d}", s.conv.in_channels, sep=",", file=sys.stderr)
    return h


def _guarded(s: nn.Module, h: Tensor) -> Tensor:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("width %s", s.conv.out_channels)
    return h


def _helper_dropped(s: nn.Module, h: Tensor) -> Tensor:
    _width(s)
    n = _width(s)  # noqa: F841
    return h


SHOWN = [_fstring, _percent_args, _unused, _statement, _str_format, _percent, _print, _guarded, _helper_dropped]


# Not harmless: the count reaches Python (a length, an index, a branch, unknown code): pinned.
def _range(s: nn.Module, h: Tensor) -> Tensor:
    for _ in range(s.conv.out_channels // 32):
        h = h + 1
    return h


def _repeat(s: nn.Module, h: Tensor) -> Tensor:
    return h * torch.tensor([1.0] * s.conv.out_channels).view(1, -1, 1, 1)


def _str_branch(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if str(s.conv.out_channels) == "64" else h


def _int_of_fstring(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if int(f"{s.conv.out_channels}") > 48 else h


def _set_membership(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if s.conv.out_channels in {32, 48} else h  # no hash match: no comparison is made


def _index(s: nn.Module, h: Tensor) -> Tensor:
    return h * ((0.5,) * 100)[s.conv.out_channels]


def _stored_then_used(s: nn.Module, h: Tensor) -> Tensor:
    n = s.conv.out_channels
    _log.debug("conv has %d channels", n)
    return h * ((0.5,) * 100)[n]


def _helper_to_range(s: nn.Module, h: Tensor) -> Tensor:
    for _ in range(_width(s) // 32):
        h = h + 1
    return h


def _shown_to_code(s: nn.Module, h: Tensor) -> Tensor:
    return h * 2 if _note(f"{s.conv.out_channels}") else h


def _printed_to_a_buffer(s: nn.Module, h: Tensor) -> Tensor:
    print(s.conv.out_channels, file=_SINK, end="")  # the model reads it back
    return h * 2 if _SINK.getvalue().endswith("64") else h


def _shown_to_attribute(s: nn.Module, h: Tensor) -> Tensor:
    s.__dict__["label"] = f"{s.conv.out_channels}"
    return h * 2 if s.label.startswith("6") else h


REACHING = [_range, _repeat, _str_branch, _int_of_fstring, _set_membership, _index, _stored_then_used, _helper_to_range]
REACHING += [_shown_to_code, _shown_to_attribute, _printed_to_a_buffer]


def _reads_plan(fn: Callable[[nn.Module, Tensor], Tensor], export: bool = False) -> tuple[nn.Module, skg.Plan]:
    torch.manual_seed(0)
    model = Reads(fn, export).eval()
    return model, skg.plan(model, torch.randn(*X4))


@pytest.mark.parametrize("fn", SHOWN, ids=lambda f: f.__name__.strip("_"))
def test_a_read_only_shown_plans_like_no_read(fn: Callable[[nn.Module, Tensor], Tensor], tmp_path: Path) -> None:
    _, base = _reads_plan(_plain)
    assert next(g for g in base.groups if g.name == "conv:out").prunable
    model, plan = _reads_plan(fn)
    assert dump(plan) == dump(base)
    check_oracle(model, torch.randn(*X4), tmp_path)


@pytest.mark.parametrize("fn", REACHING, ids=lambda f: f.__name__.strip("_"))
def test_a_read_that_reaches_python_pins(fn: Callable[[nn.Module, Tensor], Tensor], tmp_path: Path) -> None:
    model, plan = _reads_plan(fn)
    conv = next(g for g in plan.groups if g.name == "conv:out")
    assert not conv.prunable and "conv.out_channels" in (conv.reason or ""), conv.reason
    oracle_or_refusal(model, torch.randn(*X4), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("gqa", ["expand_reshape", "repeat_interleave"])
def test_bmm_with_grouped_query_heads_plans_like_matmul(gqa: str, tmp_path: Path) -> None:
    """Key/value heads repeated (HF ``repeat_kv``, ``repeat_interleave``) before the ``(B * H)``
    merge: one plan with the ``matmul`` spelling, and the oracle."""
    from test_strangers3 import Spell, Stranger
    from test_strangers3 import X as X3

    plans = []
    for core in ("matmul", "bmm"):
        torch.manual_seed(0)
        model = Stranger(Spell(gqa=gqa, core=core)).eval()
        plans.append(skg.plan(model, torch.randn(*X3)))
    assert dump(plans[1]) == dump(plans[0])
    assert any(g.prunable and g.zero_invariant and g.size == 2 for g in plans[1].groups)
    check_oracle(model, torch.randn(*X3), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fn", [_fstring, _percent_args, _unused, _helper_dropped, _range, _str_branch], ids=lambda f: f.__name__)
def test_reads_under_export(fn: Callable[[nn.Module, Tensor], Tensor], tmp_path: Path) -> None:
    """The same proofs where ``torch.export`` traces (the forward runs as Python there too)."""
    _, base = _reads_plan(_plain, export=True)
    model, plan = _reads_plan(fn, export=True)
    if fn in SHOWN:
        assert dump(plan) == dump(base)
    else:
        assert not next(g for g in plan.groups if g.name == "conv:out").prunable
    oracle_or_refusal(model, torch.randn(*X4), tmp_path)
