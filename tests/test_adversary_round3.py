"""Wrong plans and model changes adversary round 3 found (issue 7): strict xfails until fixed.

Each test asserts the guarantee: a prunable group prunes with any mask to a model that runs, a
zero-invariance claim holds (the pruned model equals the dense one with those channels zeroed),
and planning leaves the user's model as it was. A strict xfail fails, and loses its mark, once
the planner is fixed. Harness and the full list of findings: ``/tmp/adv3/REPORT.md`` (round 3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import sparsekit_graph as skg

C = 16
X = (2, 3, 6, 6)


class Net(nn.Module):
    """conv ``a`` (group ``a:out``, 16 channels) -> BN -> ReLU -> ``fn(self, h)`` -> head sized by a
    dry run. ``export=True`` adds an ``is_cuda`` branch torch.fx cannot trace (torch.export plans it)."""

    def __init__(self, fn: Callable[..., Tensor], export: bool = False, **extra: object) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C)
        for k, v in extra.items():
            setattr(self, k, v)
        self.fn, self.export = fn, export
        with torch.no_grad():
            out = fn(self, self.body(torch.randn(*X)))
        self.head = nn.Conv2d(out.shape[1], 4, 1)

    def body(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        if self.export and h.is_cuda:
            h = h.contiguous()
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fn(self, self.body(x)))


def _holds(model: nn.Module, group: str, keep: int) -> None:
    """``group`` pinned, or pruned to ``keep`` channels (the last ones) it runs, and equals the
    dense model with the removed channels zeroed where the plan claims zero-invariance."""
    torch.manual_seed(0)
    x = torch.randn(*X)
    model.eval()
    plan = skg.plan(model, x)
    g = next(g for g in plan.groups if g.name == group)
    if not g.prunable:
        return
    mask = torch.ones(g.size, dtype=torch.bool)
    mask[g.size - keep :] = False
    pruned = skg.prune(model, plan, masks={group: mask}).model.eval()
    with torch.no_grad():
        out = pruned(x)
        if g.zero_invariant:
            dense = copy.deepcopy(model).eval()
            skg.bind(plan, dense)[group].apply_mask(mask)
            torch.testing.assert_close(out, dense(x), rtol=1e-4, atol=1e-5)


# --- a size turned into a string or a hash is used as a number --------------------------------------


def _str_len(s: nn.Module, h: Tensor) -> Tensor:
    return h * len(str(h.shape[1]))  # 2 digits at 16 channels, 1 digit below 10


def _param_str_len(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) * len(str(s.conv.weight.shape[1]))  # a parameter's size read (SizeRead)


def _hash_key(s: nn.Module, h: Tensor) -> Tensor:
    return h * (hash(h.shape[1]) % 7)


def _dict_get(s: nn.Module, h: Tensor) -> Tensor:
    return h * {16: 1.0}.get(h.shape[1], 2.0)


def _conv() -> dict[str, nn.Module]:
    return {"conv": nn.Conv2d(C, C, 1)}


@pytest.mark.parametrize(
    ("fn", "extra", "group"),
    [(_str_len, dict, "a:out"), (_param_str_len, _conv, "a:out"), (_hash_key, dict, "a:out"), (_dict_get, dict, "a:out")],
    ids=["str_len", "param_str_len", "hash", "dict_get"],
)
def test_size_as_text_or_key(fn: Callable[..., Tensor], extra: Callable[[], dict], group: str) -> None:
    """``len(str(C))``, ``hash(C)``, ``{16: 1.0}.get(C, 2.0)``: numbers computed from a channel
    count through ``str``/``hash`` (not shown, computed): the group is pinned or not zero-invariant.
    Root cause: ``_SizeProxy`` (torch.fx) and ``SizeRead`` (parameter size reads) inherit
    ``__str__``/``__hash__`` untracked, so a dict lookup or a digit count is neither control flow
    nor a value (plain ``str`` of a Proxy even gives the node name)."""
    _holds(Net(fn, **extra()), group, keep=1)


# --- a parameter's element count summed over ``parameters()`` ----------------------------------------


def _params_numel(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / sum(p.numel() for p in s.conv.parameters())


def _state_dict_numel(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / s.conv.state_dict()["weight"].numel()


@pytest.mark.parametrize("fn", [_params_numel, _state_dict_numel], ids=["parameters", "state_dict"])
@pytest.mark.parametrize("group", ["a:out", "conv:out"])
def test_numel_over_parameters(fn: Callable[..., Tensor], group: str) -> None:
    """``sum(p.numel() for p in conv.parameters())`` scales the output by conv's size (in and out
    channels): both groups lose zero-invariance. Root cause: ``param_reads`` sees ``w.numel()``
    on ``conv.weight`` but not on the tensors ``conv.parameters()`` yields."""
    _holds(Net(fn, conv=nn.Conv2d(C, C, 1)), group, keep=3)


# --- torch.export: an activation's numel baked as a constant -----------------------------------------


def _numel_mean(s: nn.Module, h: Tensor) -> Tensor:
    return h - h.sum() / h.numel()


def _nelement_mean(s: nn.Module, h: Tensor) -> Tensor:
    return h - h.sum() / h.nelement()


@pytest.mark.parametrize("fn", [_numel_mean, _nelement_mean], ids=["numel", "nelement"])
def test_export_numel_mean(fn: Callable[..., Tensor]) -> None:
    """``h - h.sum() / h.numel()`` under torch.export: fx finds the number depends on the count
    (not zero-invariant); export bakes ``numel`` (2*16*6*6) into the graph and claims
    zero-invariance. Root cause: the export path's constants made of a channel count
    (``prune/claims.py`` / ``plan/probe.py``) miss an element count (product of all dims)."""
    _holds(Net(fn, export=True), "a:out", keep=3)


# --- prunable groups that prune refuses ---------------------------------------------------------------


def _chunk_count(s: nn.Module, h: Tensor) -> Tensor:
    return sum(h.chunk(h.shape[1] // 4, 1))  # 4 chunks of 4 at 16 channels


def _chunk_count_of_layer(s: nn.Module, h: Tensor) -> Tensor:
    return sum(h.chunk(s.a.out_channels // 4, 1))  # the count read off the layer, not the tensor


@pytest.mark.parametrize("fn", [_chunk_count, _chunk_count_of_layer], ids=["shape", "layer_attribute"])
def test_chunk_count_from_shape(fn: Callable[..., Tensor]) -> None:
    """``sum(h.chunk(h.shape[1] // 4, 1))`` (or ``conv.out_channels // 4``): the plan offered
    ``a:out`` (4 channels of 4) as prunable and zero-invariant, but prune refused (head expects
    the chunk width it was planned with): a count made from a length changes with pruning, so the
    parts are not equal parts of a fixed count; the same with ``split_size`` works."""
    _holds(Net(fn), "a:out", keep=2)


def test_a_literal_or_attribute_chunk_count_still_prunes() -> None:
    """``chunk(4)`` and ``chunk(self.n)`` (a plain attribute, no layer size) keep equal parts of
    a fixed count: position ``p`` of every part prunes together."""
    for fn in (lambda s, h: sum(h.chunk(4, 1)), lambda s, h: sum(h.chunk(s.n, dim=1))):
        plan = skg.plan(Net(fn, n=4).eval(), torch.randn(*X))
        assert plan.group("a:out").prunable and plan.group("a:out").zero_invariant
        _holds(Net(fn, n=4), "a:out", keep=2)


class _BufferMask(nn.Module):
    """A per-channel 0/1 buffer multiplied in (``mask.view(1, -1, 1, 1)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.head = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.Conv2d(C, 4, 1)
        self.register_buffer("mask", (torch.arange(C) % 3 != 0).float())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.a(x))) * self.mask.view(1, -1, 1, 1))


class _EmaBuffer(_BufferMask):
    """The buffer is an running mean the forward updates in place."""

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        with torch.no_grad():
            self.mask.mul_(0.9).add_(0.1 * h.mean((0, 2, 3)))
        return self.head(h - self.mask.view(1, -1, 1, 1))


@pytest.mark.parametrize("make", [_BufferMask, _EmaBuffer], ids=["buffer_mask", "ema_buffer"])
def test_buffer_group_pruned_to_one_channel(make: type[nn.Module]) -> None:
    """A prunable group with a per-channel buffer prunes to 3 channels but refuses 1 (SparseKitError
    'the pruned model runs other code'). Was: ``buffer_view`` traces a 1-element buffer's
    ``view(1, -1, 1, 1)`` as ``squeeze`` + ``unsqueeze``s, and ``prune.checks.same_code`` counted
    the ``squeeze`` (a re-view, like ``unsqueeze``) as other code."""
    _holds(make(), "a:out", keep=1)


# --- planning writes into the user's containers --------------------------------------------------------


class _History(nn.Module):
    """``self.hist.append(h.shape[1])`` in forward: a list the user keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1)
        self.hist: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        self.hist.append(h.shape[1])
        return self.head(h)


def test_plan_leaves_user_lists_alone() -> None:
    """After ``plan``, the model's list holds what it held (no ``Proxy`` appended by the trace).
    Was: ``model_state.kept`` snapshotted ``__dict__`` values by identity, so a list, dict or set
    the forward mutates kept what tracing put in it (``containers`` now records contents)."""
    model = _History()
    x = torch.randn(*X)
    model(x)
    before = list(model.hist)
    skg.plan(model, x)
    assert model.hist == before and all(type(v) is int for v in model.hist), model.hist


def _keep_outputs(s: nn.Module, h: Tensor) -> Tensor:
    s.outs.append(h.detach())  # a user's feature cache
    return h * 2


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_plan_leaves_user_tensor_cache_alone(export: bool) -> None:
    """``self.outs.append(h.detach())``: ``plan`` returns or refuses with ``SparseKitError``, and the
    list holds the same real tensors after. Was: ``model_state.kept`` did not restore a mutated
    container; the torch.fx trace's Proxy / torch.export's FakeTensor stayed in it, and the export
    path's deepcopy of the model then failed (RuntimeError: data pointer of a FakeTensor)."""
    model = Net(_keep_outputs, export=export, outs=[])
    model.outs = []
    x = torch.randn(*X)
    model.eval()(x)
    before = list(model.outs)
    try:
        skg.plan(model, x)
    except skg.SparseKitError:
        pass
    assert len(model.outs) == len(before), [type(t).__name__ for t in model.outs]
    assert all(a is b for a, b in zip(model.outs, before))


# --- over-pins: a plain spelling of the same computation prunes -----------------------------------------


def _weight_shape(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / s.conv.weight.shape[0]


def _len_weight(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / len(s.conv.weight)


def _weight_numel(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / s.conv.weight.numel()


def _weight_nelement(s: nn.Module, h: Tensor) -> Tensor:
    return s.conv(h) / s.conv.weight.nelement()


def _pinned(fn: Callable[..., Tensor]) -> set[str]:
    model = Net(fn, conv=nn.Conv2d(C, C, 1)).eval()
    return {g.name for g in skg.plan(model, torch.randn(*X)).groups if not g.prunable}


@pytest.mark.parametrize(
    ("plain", "other"), [(_weight_shape, _len_weight), (_weight_numel, _weight_nelement)], ids=["len", "nelement"]
)
def test_size_read_spellings_plan_alike(plain: Callable[..., Tensor], other: Callable[..., Tensor]) -> None:
    """``len(w)`` is ``w.shape[0]`` and ``w.nelement()`` is ``w.numel()``: the same pins
    (``param_reads._len``; ``nelement`` an alias of ``numel``). More: test_size_read_spellings."""
    assert _pinned(other) == _pinned(plain)


def _scale_by_width(s: nn.Module, h: Tensor) -> Tensor:
    return nn.functional.interpolate(h, scale_factor=s.a.out_channels / 8)  # 2x at 16 channels


def test_a_scale_factor_from_a_layer_size_pins() -> None:
    """``interpolate(h, scale_factor=conv.out_channels / 8)``: pruning ``a`` changes the output's
    spatial size, so ``a:out`` must pin (today it is planned prunable and prune refuses)."""
    _holds(Net(_scale_by_width), "a:out", keep=8)
