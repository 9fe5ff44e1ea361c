"""Adversary round 18: what a traced value answers where the eager tensor answers otherwise.

Each forward below takes a branch on a question a torch.fx Proxy answered unlike the tensor,
unseen by the eager check's gate, so the branch not taken was planned: ``a:out`` claimed
zero-invariant beside the ``h - h.mean(1)`` the forward runs (0.32 off).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_untouched, check_oracle, fingerprint, realistic_bn
from test_adversary_round17 import _AsksData as _Asks  # branches on ``ask(h)`` before a mean over a's channels
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.errors import TraceError


def _has_node(h: Tensor) -> bool:
    try:
        h.node  # noqa: B018 - a Proxy has one, a tensor raises
        return False
    except AttributeError:
        return True


_ASKS: dict[str, Callable[[Tensor], bool]] = {
    "is_floating_point_is": lambda h: h.is_floating_point() is True,
    "is_cuda_is": lambda h: h.is_cuda is False,
    "is_contiguous_is": lambda h: h.is_contiguous() is True,
    "element_size_is_int": lambda h: isinstance(h.element_size(), int),
    "nbytes_is_int": lambda h: isinstance(h.nbytes, int),
    "dim_is_int": lambda h: isinstance(h.dim(), int),
    "ndim_is_int": lambda h: isinstance(h.ndim, int),
    "shape_is_size": lambda h: isinstance(h.shape, torch.Size),
    "size_is_int": lambda h: isinstance(h.shape[1], int),
    "no_node": _has_node,
    "class_name_built": lambda h: operator.attrgetter("".join(["__cl", "ass__"]))(h).__name__ == "Tensor",
}
_REFUSED = {  # the refusal expected
    "class_name_built": "does not compute what its forward computes",  # fake tensors are no ``Tensor`` by name either
    "nbytes_is_int": "Cannot call numel",  # torch.export cannot count the bytes of a dynamic batch
}


@pytest.mark.parametrize("name", sorted(_ASKS))
def test_a_branch_on_what_a_value_answers_plans_the_eager_branch_or_is_refused(name: str, tmp_path: Path) -> None:
    model, x = _Asks(_ASKS[name]).eval(), torch.randn(2, 3, 6, 6)
    assert _ASKS[name](x), "the eager forward takes the branch"
    if name in _REFUSED:
        with pytest.raises(TraceError, match=_REFUSED[name]):
            skg.plan(model, x)
        return
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and not group.zero_invariant, "the mean over a's channels runs"
    check_oracle(model, x, tmp_path, require=False)


def test_rank_and_dtype_questions_answer_as_numbers_in_the_graph() -> None:
    """``h.dim()`` and ``h.is_floating_point()`` answer as the tensor's (pruning keeps both):
    no node for them, and a branch on them needs no eager check."""
    from sparsekit_graph.graph.meta import TO_CHECK, output_node
    from sparsekit_graph.graph.trace import trace_graph

    class Rank(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return h.mean(h.dim() - 1) if h.is_floating_point() else h

    graph = trace_graph(Rank(), torch.randn(1, 3, 4, 4))
    assert not [n for n in graph.nodes if n.target in ("dim", "is_floating_point")]
    assert TO_CHECK not in output_node(graph).meta


class _ReturnsCount(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, int] | dict[str, object]:
        h = torch.relu(self.bn(self.a(x)))
        if self.how == "attribute":
            return self.b(h), self.a.out_channels
        if self.how == "length":
            return self.b(h), h.shape[1]
        if self.how == "shape":
            return self.b(h), tuple(h.shape)
        if self.how == "constant":
            return self.b(h), 8  # as many as a's channels, but no count of them
        return {"y": self.b(h), "n": self.bn.num_features}


@pytest.mark.parametrize("how", ["attribute", "length", "shape", "dict", "constant"])
def test_a_channel_count_the_forward_returns_is_not_zero_invariant(how: str) -> None:
    """Pruning changes the count returned beside the output; ``self.a.out_channels`` and
    ``tuple(h.shape)`` were claimed zero-invariant where ``h.shape[1]`` was not. A number
    that is no count of them (``8``, ``len(self.blocks)``) keeps zero-invariance."""
    model, x = _ReturnsCount(how).eval(), torch.randn(2, 3, 6, 6)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and group.zero_invariant == (how == "constant")
    masks = {"a:out": torch.tensor([True, False] * 4)}
    out = skg.prune(model, skg.plan(model, x), masks=masks).model(x)
    count = out[1] if isinstance(out, tuple) else out["n"]
    assert count == {"shape": (2, 4, 6, 6), "constant": 8}.get(how, 4), "the returned count follows the pruning"


def _pooled(h: Tensor) -> Tensor:
    return h.mean((2, 3))


def _instance_norm(h: Tensor) -> Tensor:
    return (h - h.mean((2, 3), keepdim=True)) / (h.var((2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()


# name -> (what runs after ``relu(bn(a(x)))``, is a:out zero-invariant); ``buf`` and ``wc`` are buffers
_AFTER: dict[str, tuple[Callable[[nn.Module, Tensor], Tensor], bool]] = {
    "linear_buffer": (lambda m, h: F.linear(_pooled(h), m.buf), True),
    "matmul_buffer": (lambda m, h: _pooled(h) @ m.buf.T, True),
    "einsum_buffer": (lambda m, h: torch.einsum("bc,oc->bo", _pooled(h), m.buf), True),
    "sum_keepdim_linear_buffer": (lambda m, h: F.linear(h.sum(3, keepdim=True).sum(2).squeeze(-1), m.buf), True),
    "amax_linear_buffer": (lambda m, h: F.linear(h.amax((-1, -2)), m.buf), True),
    "pool_linear_buffer": (lambda m, h: F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), m.buf), True),
    "max_pool_conv_buffer": (lambda m, h: F.conv2d(F.max_pool2d(h, 2), m.wc), True),
    "conv_buffer": (lambda m, h: F.conv2d(h, m.wc), True),
    "flatten_layer_linear_buffer": (lambda m, h: F.linear(m.flat(F.adaptive_avg_pool2d(h, 1)), m.buf), True),
    "none_index_conv_buffer": (lambda m, h: F.conv2d(h.mean((-1, -2))[..., None, None], m.wc), True),
    "instance_norm_by_hand": (lambda m, h: m.c(_instance_norm(h)), True),
    "instance_norm_pow": (lambda m, h: m.c((h - h.mean((2, 3), True)) / (h.var((2, 3), keepdim=True) + 1e-5) ** 0.5), True),
    # not zero-invariant: a masked channel is no longer zero where the buffer sums it
    "sigmoid_linear_buffer": (lambda m, h: F.linear(_pooled(torch.sigmoid(h)), m.buf), False),
    "mean_over_channels": (lambda m, h: F.linear(h.mean(1).flatten(1), m.buf2), False),
    "added_linear_buffer": (lambda m, h: F.linear(_pooled(h) + 0.1, m.buf), False),
    "instance_norm_eps_underflows": (
        lambda m, h: m.c((h - h.mean((2, 3), True)) / (h.var((2, 3), keepdim=True) + 1e-50).sqrt()),
        False,
    ),
    "instance_norm_no_eps": (lambda m, h: m.c((h - h.mean((2, 3), keepdim=True)) / h.std((2, 3), keepdim=True)), False),
}


class _After(nn.Module):
    def __init__(self, after: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.after = after
        self.a, self.bn, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.flat = nn.Flatten()
        self.register_buffer("buf", torch.randn(5, 8))
        self.register_buffer("buf2", torch.randn(5, 36))
        self.register_buffer("wc", torch.randn(5, 8, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.after(self, torch.relu(self.bn(self.a(x))))


@pytest.mark.parametrize("name", sorted(_AFTER))
def test_zeros_survive_pools_reductions_and_positive_divisors(name: str, tmp_path: Path) -> None:
    """A masked channel stays zero through a pool or a reduction over other axes, so a buffer
    weight that sums it adds nothing (``F.linear(h.mean((2, 3)), buf)`` was not zero-invariant
    where ``F.conv2d(h, buf)`` was); ``sqrt(var + eps)`` never vanishes, so a hand-written
    instance norm divides a masked channel's zeros by a positive number, as ``F.instance_norm``."""
    after, exact = _AFTER[name]
    model, x = _After(after).eval(), torch.randn(2, 3, 6, 6)
    realistic_bn(model, x)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and group.zero_invariant == exact
    check_oracle(model, x, tmp_path, require=False)


# What the forward does to ``h`` before a sum over its channels: does a masked channel stay zero?
_WRITES_INTO_H: dict[str, tuple[Callable[[nn.Module, Tensor], object], bool]] = {
    "detach_add": (lambda m, h: h.detach().add_(0.5), False),
    "dropout_add": (lambda m, h: m.drop(h).add_(0.5), False),
    "identity_add": (lambda m, h: m.idn(h).add_(0.5), False),
    "as_tensor_add": (lambda m, h: torch.as_tensor(h).add_(0.5), False),
    "positive_add": (lambda m, h: h.positive().add_(0.5), False),
    "detach_setitem": (lambda m, h: h.detach().__setitem__(slice(None), 0.5), False),
    "chained": (lambda m, h: h.relu_().add_(0.5), False),
    "chained_module": (lambda m, h: m.relu(h).add_(0.5), False),
    "hardsigmoid_inplace": (lambda m, h: F.hardsigmoid(h, inplace=True), False),
    "threshold_inplace": (lambda m, h: F.threshold(h, 0.5, 0.3, inplace=True), False),
    "hardtanh_inplace": (lambda m, h: F.hardtanh(h, 0.1, 1.0, inplace=True), False),
    "augmented_alias": (lambda m, h: _augment(h), False),
    "split_with_sizes_add": (lambda m, h: h.split_with_sizes([3, 3], 2)[0].add_(0.5), False),
    "layer_output_add": (lambda m, h: m.idn(h).add_(0.5), False),
    # keep zeros
    "detach_mul": (lambda m, h: h.detach().mul_(2.0), True),
    "relu_inplace": (lambda m, h: F.relu(h, inplace=True), True),
    "hardtanh_inplace_around_zero": (lambda m, h: F.hardtanh(h, -1.0, 1.0, inplace=True), True),
}


def _augment(h: Tensor) -> None:
    y = h
    y += 0.5  # writes into h


class _WritesIntoH(nn.Module):
    def __init__(self, write: Callable[[nn.Module, Tensor], object]) -> None:
        super().__init__()
        self.write = write
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.drop, self.idn, self.relu = nn.Dropout(0.1), nn.Identity(), nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        self.write(self, h)
        return self.b(h + h.sum(1, keepdim=True))


@pytest.mark.parametrize("name", sorted(_WRITES_INTO_H))
def test_a_write_through_what_shares_the_storage_costs_zero_invariance(name: str, tmp_path: Path) -> None:
    """Writes through an alias no view rule names (``detach()``, an eval dropout, an identity
    layer, ``torch.as_tensor``), after another in-place op, by ``inplace=True`` of a function,
    or by ``y = h; y += c``, turned masked channels back on before the sum: claimed
    zero-invariant, 0.06-0.32 off."""
    write, keeps = _WRITES_INTO_H[name]
    model, x = _WritesIntoH(write).eval(), torch.randn(2, 3, 6, 6)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and group.zero_invariant == keeps
    check_oracle(model, x, tmp_path, require=False)


# A forward that writes its own parameters past their attributes (WGAN-style clipping)
_PARAMETER_WRITES: dict[str, tuple[Callable[[nn.Module], object], bool | None]] = {
    "parameters_clamp_min": (lambda m: [p.data.clamp_(min=0.1) for p in m.bn.parameters()], False),
    "parameters_clip": (lambda m: [p.data.clamp_(-5.0, 5.0) for p in m.parameters()], True),
    "named_parameters_add": (lambda m: [p.data.add_(0.1) for n, p in m.named_parameters() if n == "bn.bias"], False),
    "state_dict_add": (lambda m: m.state_dict()["bn.bias"].add_(0.1), False),
    "private_parameters_add": (lambda m: m.bn._parameters["bias"].data.add_(0.1), False),
    "data_assigned": (lambda m: setattr(m.bn.weight, "data", m.bn.weight.data.clamp(min=0.1)), None),
    "data_literal": (lambda m: setattr(m.bn.bias, "data", torch.full((8,), 0.1)), None),
    "parameters_data_assigned": (lambda m: [setattr(p, "data", p.data.clamp(min=0.1)) for p in m.bn.parameters()], None),
    "data_augmented": (lambda m: _add_to_data(m.bn.bias), False),
    "data_setitem": (lambda m: m.bn.bias.data.__setitem__(slice(None), 0.1), False),
    "identity_add": (lambda m: m.idn(m.bn.bias).add_(0.1), False),
    "foreach_clamp_min": (lambda m: torch._foreach_clamp_min_(list(m.bn.parameters()), 0.05), False),
}


def _add_to_data(p: Tensor) -> None:
    p.data += 0.1


class _WritesParameters(nn.Module):
    def __init__(self, write: Callable[[nn.Module], object]) -> None:
        super().__init__()
        self.write = write
        self.a, self.bn, self.b, self.idn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.write(self)
        h = torch.relu(self.bn(self.a(x)))
        return self.b(h + h.sum(1, keepdim=True))


@pytest.mark.parametrize("name", sorted(_PARAMETER_WRITES))
def test_parameters_written_past_their_attributes_are_planned_and_left_untouched(name: str, tmp_path: Path) -> None:
    """The forward's real writes ran on the user's weights while traced (``plan`` changed them)
    and no node showed them (claimed zero-invariant, 0.02-0.07 off); ``.data = torch.full(...)``
    made the pruned model fail. Now undone and planned: a write that keeps zeros keeps
    zero-invariance, one that does not costs it, a swap of ``.data`` pins."""
    write, keeps = _PARAMETER_WRITES[name]
    model, x = _WritesParameters(write).eval(), torch.randn(2, 3, 6, 6)
    before = fingerprint(model)
    group = skg.plan(model, x).group("a:out")
    assert_untouched(model, before, "plan")
    assert group.prunable == (keeps is not None)
    if keeps is not None:
        assert group.zero_invariant == keeps
        check_oracle(model, x, tmp_path, require=False)


@pytest.mark.parametrize(
    "norm",
    [
        lambda: nn.BatchNorm2d(8, affine=False, track_running_stats=False),
        lambda: nn.InstanceNorm2d(8),
    ],
    ids=["batch_norm_bare", "instance_norm"],
)
def test_a_norm_layer_without_tensors_follows_its_channels(norm: Callable[[], nn.Module], tmp_path: Path) -> None:
    """No weight or statistics to resize counts the channels, so ``num_features`` kept its
    value: the pruned BatchNorm failed its channel check and ``prune`` refused."""
    model, x = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(2, 3, 6, 6)
    pruned = check_oracle(model, x, tmp_path).model
    assert pruned[1].num_features == pruned[0].out_channels < 8


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor, scale: Tensor | None = torch.ones(1)) -> Tensor:  # noqa: B008 - the default differs
        h = torch.relu(self.a(x))
        return self.b(h if scale is None else h * scale.view(1, -1, 1, 1))


def test_an_input_given_as_none_is_fixed() -> None:
    """``{"x": x, "scale": None}`` and ``(x, None)`` were traced with a Proxy for None
    (``'NoneType' object has no attribute 'view'``): a None input is fixed, as an omitted one is."""
    model, x = _Scaled().eval(), torch.randn(2, 3, 6, 6)
    assert skg.plan(model, {"x": x, "scale": None}).group("a:out").zero_invariant
    assert skg.plan(model, (x, None)).group("a:out").zero_invariant


@pytest.mark.parametrize(
    "ask", [lambda h: not h.is_meta, lambda h: h.device != torch.device("meta")], ids=["is_meta", "device_ne"]
)
def test_a_branch_on_the_device_plans_on_meta_as_on_real_weights_or_refuses(ask: Callable[[Tensor], bool]) -> None:
    """On meta weights torch.export's fake tensors are on meta, and the branch the real model
    takes was not planned (``a:out`` zero-invariant where the real plan says it is not)."""
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    real = skg.plan(_Asks(ask).eval(), x)
    with torch.device("meta"):
        model = _Asks(ask).eval()
    assert not real.group("a:out").zero_invariant
    try:
        meta = skg.plan(model, x.to("meta"))
    except TraceError:
        return
    assert meta.group("a:out").zero_invariant == real.group("a:out").zero_invariant


def test_a_branch_on_torch_function_overrides_is_checked() -> None:
    """``torch.overrides.has_torch_function((h,))`` is True of a Proxy, False of a tensor: the
    branch the eager forward takes was not planned (0.26 off)."""
    model = _Asks(lambda h: not torch.overrides.has_torch_function((h,))).eval()
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(model, torch.randn(2, 3, 6, 6))


class _Cast(nn.Module):
    def __init__(self, ask: Callable[[Tensor], bool]) -> None:
        super().__init__()
        self.ask = ask
        self.a, self.c, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.c(h)
        if self.ask(y):
            y = y - y.mean(1, keepdim=True)
        return self.b(y.float())


@pytest.mark.parametrize("ask", [lambda y: y.element_size() == 2, lambda y: y.dtype != torch.float32], ids=["size", "dtype"])
def test_a_dtype_question_under_autocast_is_checked(ask: Callable[[Tensor], bool]) -> None:
    """Meta values are not cast: inside a forward that autocasts, ``y.dtype`` answered float32
    where the forward has bfloat16, and the branch not taken was planned (0.16 off)."""
    group = skg.plan(_Cast(ask).eval(), torch.randn(2, 3, 6, 6)).group("c:out")
    assert group.prunable and not group.zero_invariant


class _AsksWeightDevice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if not next(self.parameters()).is_meta:  # a real tensor's question, no traced value's
            h = h - h.mean(1, keepdim=True)
        return self.b(h)


def test_a_weight_device_question_on_meta_is_checked() -> None:
    """The meta plan took the ``is_meta`` branch: zero-invariant where the real plan is not."""
    assert not skg.plan(_AsksWeightDevice().eval(), torch.randn(2, 3, 6, 6)).group("a:out").zero_invariant
    with torch.device("meta"):
        model = _AsksWeightDevice().eval()
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.plan(model, torch.randn(2, 3, 6, 6, device="meta"))


_AUTOGRAD_ASKS: dict[str, Callable[[nn.Module, Tensor, Tensor], bool]] = {
    "value_grad_fn": lambda m, x, h: h.grad_fn is None,  # None under no_grad only
    "input_grad_fn": lambda m, x, h: x.grad_fn is None,  # always None
    "weight_grad_fn": lambda m, x, h: m.a.weight.grad_fn is None,  # a leaf: always None
    "value_requires_grad": lambda m, x, h: not h.requires_grad,
}


class _AsksAutograd(nn.Module):
    def __init__(self, ask: Callable[[nn.Module, Tensor, Tensor], bool]) -> None:
        super().__init__()
        self.ask = ask
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.ask(self, x, h):
            h = h - h.mean(1, keepdim=True)
        return self.b(h)


@pytest.mark.parametrize("name", sorted(_AUTOGRAD_ASKS))
def test_a_branch_on_autograd_state_plans_both_modes(name: str, tmp_path: Path) -> None:
    """``if h.grad_fn is None`` is a grad-mode question: torch.fx's Proxy was never None, so the
    branch ``torch.no_grad()`` takes was not planned (0.26 off there). A traced value answers
    as the tensor would in the mode traced, and both modes are traced."""
    model, x = _AsksAutograd(_AUTOGRAD_ASKS[name]).eval(), torch.randn(2, 3, 6, 6)
    group = skg.plan(model, x).group("a:out")
    assert group.prunable and not group.zero_invariant
    check_oracle(model, x, tmp_path, require=False)
