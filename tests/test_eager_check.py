"""A forward that asks a traced value what only a real tensor answers (issue 7, round 15).

Neither tracer's value is a plain tensor (a Proxy under torch.fx, a fake tensor under
torch.export), so ``type(h) is torch.Tensor`` and its kin were traced down the branch the
eager forward does not take: a plan of the wrong branch (``a:out`` zero-invariant beside a
``h - h.mean(1)`` the forward runs). Where the forward's code asks a value what it is,
``plan`` and ``prune`` now run the graph and the eager forward on the example
(``graph/eager_check.py``): torch.fx's graph that computes another
output gives way to torch.export's, and where that one does too the plan is refused by name.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import operator
import pprint
import random
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_untouched, check_oracle, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.errors import TraceError
from sparsekit_graph.graph import eager_check, real_weights
from sparsekit_graph.graph.eager_check import disagreement
from sparsekit_graph.graph.meta import is_exported
from sparsekit_graph.graph.trace import trace_graph


def _is_plain(h: Tensor) -> bool:  # a helper in another function: no line of forward asks
    return type(h) is torch.Tensor


_kind = type  # an alias: the code never names ``type``


def _printed(h: Tensor) -> str:
    text = io.StringIO()
    print(h, file=text, end="")
    return text.getvalue()


def _exec_asks(h: Tensor) -> bool:
    scope = {"h": h, "torch": torch}
    exec("plain = type(h) is torch.Tensor", scope)  # noqa: S102 - the spelling under test
    return scope["plain"]


def _dunder_builtins() -> dict[str, object]:
    return __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)


_BUILTINS_DICT = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)  # ``__builtins__["type"]``


_ASKS: dict[str, Callable[[Tensor], bool]] = {
    "type_is": lambda h: type(h) is torch.Tensor,
    "type_eq": lambda h: type(h) == torch.Tensor,  # noqa: E721 - the spelling under test
    "type_name": lambda h: type(h).__name__ == "Tensor",
    "class_name": lambda h: h.__class__.__name__ == "Tensor",
    "type_in": lambda h: type(h) in (torch.Tensor, nn.Parameter),
    "helper": _is_plain,
    "alias": lambda h: _kind(h) is torch.Tensor,
    "not_callable": lambda h: not callable(h),
    "issubclass": lambda h: issubclass(type(h), torch.Tensor),
    "type_mro": lambda h: torch.Tensor in type(h).__mro__,
    # round 17: questions the gate's walk of the code did not see (planned from the other branch)
    "eval": lambda h: eval("type(h) is torch.Tensor"),  # noqa: S307 - the spelling under test
    "exec": _exec_asks,
    "builtins_dict": lambda h: _BUILTINS_DICT["type"](h) is torch.Tensor,  # a dict of builtins, by another name
    "dunder_builtins": lambda h: _dunder_builtins()["type"](h) is torch.Tensor,
    "attrgetter": lambda h: operator.attrgetter("__class__")(h) is torch.Tensor,
    "getattribute": lambda h: object.__getattribute__(h, "__class__") is torch.Tensor,
    "str": lambda h: str(h).startswith("tensor"),
    "f_string": lambda h: f"{h}".startswith("tensor"),
    "printed": lambda h: _printed(h).startswith("tensor"),  # text made where no name says so: noted as traced
    "pformat": lambda h: pprint.pformat(h).startswith("tensor"),
}
_REFUSED = {"type_is", "type_eq", "type_name", "class_name", "type_in", "helper", "alias"}  # torch.export's fake asks alike
_TEXT = {"str", "f_string", "printed", "pformat"}  # noted while traced: the check says so
_REFUSED |= {"printed", "pformat"}
_REFUSED |= {"eval", "exec", "builtins_dict", "dunder_builtins", "attrgetter", "getattribute", "str", "f_string"}


class _Asks(nn.Module):
    """``h - h.mean(1)`` (not zero-invariant over ``a``'s channels) where the forward's answer
    is True, as it is eagerly."""

    def __init__(self, ask: Callable[[Tensor], bool]) -> None:
        super().__init__()
        self.ask = ask
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.ask(h):
            h = h - h.mean(1, keepdim=True)
        return self.c(torch.relu(self.b(h)))


X = (2, 3, 8, 8)


@pytest.mark.parametrize("name", sorted(_ASKS))
def test_a_forward_that_asks_a_value_its_class_plans_its_eager_branch_or_is_refused(name: str, tmp_path: Path) -> None:
    model, x = _Asks(_ASKS[name]).eval(), torch.randn(*X)
    assert _ASKS[name](model.a(x)), "eagerly the forward takes the mean branch"
    before = fingerprint(model)
    if name in _REFUSED:
        why = r"made text of a traced value" if name in _TEXT else r"type\(h\) is torch\.Tensor"
        with pytest.raises(TraceError, match=r"does not compute what its forward computes.*" + why):
            skg.plan(model, x)
        assert_untouched(model, before, "a refused plan")
        return
    plan = skg.plan(model, x)
    assert not plan.group("a:out").zero_invariant, "the mean over a's channels runs"
    check_oracle(model, x, tmp_path)  # the pruned model equals the masked dense one


def test_prune_refuses_what_plan_refuses() -> None:
    """A plan made elsewhere (or edited) does not get a model the tracers cannot follow pruned."""
    plain = _Asks(lambda h: True).eval()
    plan = skg.plan(plain, torch.randn(*X))
    model = _Asks(_ASKS["type_is"]).eval()
    model.load_state_dict(plain.state_dict())
    before = fingerprint(model)
    with pytest.raises(TraceError, match="does not compute what its forward computes"):
        skg.prune(model, plan, ratio=0.5)
    assert_untouched(model, before, "a refused prune")


# -- what the check must not refuse ---------------------------------------------------------


class _Writes(nn.Module):
    """A forward that clips its own weight and rectifies its input in place, counts its calls
    in a buffer and adds noise: the check runs it without changing the model or the example."""

    def __init__(self, noise: bool) -> None:
        super().__init__()
        self.noise = noise
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        x.relu_()
        self.calls += 1
        with torch.no_grad():
            self.a.weight.clamp_(-0.2, 0.2)
        h = torch.relu(self.a(x))
        if self.noise:
            h = h + 0.1 * torch.randn_like(h)
        return self.b(h)


@pytest.mark.parametrize("noise", [False, True])
def test_a_forward_that_writes_draws_or_mutates_its_input_still_plans(noise: bool) -> None:
    model, x = _Writes(noise).eval(), torch.randn(*X)
    with torch.no_grad():
        model.a.weight.mul_(10)  # the clamp would change it
    before, given = fingerprint(model), x.clone()
    plan = skg.plan(model, x)
    assert plan.group("a:out").prunable
    assert_untouched(model, before, "plan")
    assert torch.equal(x, given), "the example input was written"


def test_the_check_names_the_output_that_differs_and_passes_a_faithful_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _Asks(_ASKS["type_is"]).eval(), torch.randn(*X)
    fx_graph = trace_graph(model, x)  # torch.fx, unverified: the branch not taken eagerly
    assert not is_exported(fx_graph)
    differs = disagreement(model, fx_graph, (x,), {}, train=False, autograd=None)
    assert differs is not None and differs.startswith("output 0 differs by up to"), differs
    faithful = _Asks(lambda h: False).eval()
    assert disagreement(faithful, trace_graph(faithful, x), (x,), {}, train=False, autograd=None) is None
    on_meta = _Asks(_ASKS["type_is"]).to("meta").eval()  # small: compared by value on a real copy
    meta_graph = trace_graph(on_meta, x.to("meta"))
    differs = disagreement(on_meta, meta_graph, (x.to("meta"),), {}, train=False, autograd=None)
    assert differs is not None and differs.startswith("output 0 differs by up to"), differs
    monkeypatch.setattr(real_weights, "REAL_COPY_ELEMENTS", 0)  # too large to copy: the ops each runs are compared
    differs = disagreement(on_meta, meta_graph, (x.to("meta"),), {}, train=False, autograd=None)
    assert (
        differs
        == "after 1 ops alike, the forward runs mean, sub, convolution where the traced graph runs convolution, relu, convolution"
    )
    faithful_meta = faithful.to("meta")
    assert (
        disagreement(faithful_meta, trace_graph(faithful_meta, x.to("meta")), (x.to("meta"),), {}, train=False, autograd=None)
        is None
    )


def test_a_forward_that_asks_nothing_is_not_run_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two forwards cost three times a ResNet-18's planning at 32x32: code that asks no value
    what it is (``code_reads``: none of ``type``, ``callable``, ``__class__``, ... reached from
    forward) is not checked; code that does and traces faithfully stays on torch.fx."""
    import torchvision

    import sparsekit_graph.graph.trace as trace_module
    from sparsekit_graph.graph.eager_gate import asks_what_values_are

    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    assert not asks_what_values_are(model)
    assert asks_what_values_are(_Asks(_ASKS["alias"])) and asks_what_values_are(_Asks(_ASKS["class_name"]))
    runs: list[str] = []
    real = trace_module.disagreement
    monkeypatch.setattr(trace_module, "disagreement", lambda *a, **k: runs.append("run") or real(*a, **k))
    assert not is_exported(trace_graph(model, x, verify=True)) and not runs
    faithful = _Asks(lambda h: type(h) is not torch.Tensor or True).eval()  # asks, and either answer does the same
    assert not is_exported(trace_graph(faithful, torch.randn(*X), verify=True)) and runs == ["run"]


class _TrainModeExport(nn.Module):
    """In train mode, with a device check torch.fx cannot trace (torch.export plans it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        if h.is_cuda:
            h = h.contiguous()
        return self.b(self.drop(h))


def test_a_train_mode_model_torch_fx_cannot_trace_is_planned_in_eval_mode() -> None:
    """Found by the check: after torch.fx failed, undoing its attempt put the layers back in the
    caller's train mode, so torch.export traced batch statistics and dropout into the eval plan
    (and its graph, run, moved the running statistics)."""
    model, x = _TrainModeExport(), torch.randn(*X)
    graph = trace_graph(model, x, train=False)
    assert is_exported(graph)
    norms = [n for n in graph.nodes if "batch_norm" in str(n.target)]
    assert norms and all(n.args[5] is False for n in norms), [n.args for n in norms]
    drops = [n for n in graph.nodes if "dropout" in str(n.target)]
    assert all(n.args[2] is False for n in drops), [n.args for n in drops]  # dropout(h, p, train)
    assert model.training and model.bn.training and model.drop.training, "the caller's flags are back"
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan")
    assert plan.group("a:out").zero_invariant, "eval: no dropout draws on a's channels"


class _EmaAsks(nn.Module):
    """A running mean of ``a``'s channels the forward updates under ``torch.no_grad()`` (torch.fx
    runs ``self.mask.mul_(0.9)`` at trace time: its graph decays nothing), and a question only
    a real tensor answers, so the check runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("mask", (torch.arange(8) % 3 != 0).float())

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        with torch.no_grad():
            self.mask.mul_(0.9).add_(0.1 * h.mean((0, 2, 3)))
        assert callable(h) or not callable(h)  # asked, and answered alike either way
        return self.head(h - self.mask.view(1, -1, 1, 1))


@pytest.mark.parametrize("keep", [1, 5])
def test_a_pruned_copy_is_traced_by_the_model_s_tracer_and_buffers_stay_leaves(keep: int) -> None:
    """torch.fx's graph of the model lacks the decay (planned by torch.export); its pruned copy
    must be traced by torch.export too, whatever the check says of its torch.fx graph (at one
    kept channel whose mean is 0 the decay changes nothing: the graphs agree). Running the graph
    with autograd on must not leave the buffer a non-leaf (``deepcopy`` refused it)."""
    model, x = _EmaAsks().eval(), torch.randn(*X)
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert is_exported(trace_graph(model, x, verify=True))
    mask = torch.ones(8, dtype=torch.bool)
    mask[:keep] = False
    pruned = skg.prune(model, plan, masks={"a:out": mask}).model
    assert_untouched(model, before, "prune")
    assert model.mask.grad_fn is None and model.mask.is_leaf
    copy.deepcopy(model)
    with torch.no_grad():
        assert pruned(x).shape == (2, 4, 8, 8)


# -- round 15's adversary: routes to a question the gate must follow -------------------------


class _Helper:
    def check(self, h: Tensor) -> bool:
        return type(h) is torch.Tensor


def _closure() -> Callable[[nn.Module, Tensor], bool]:
    chk = lambda h: type(h) is torch.Tensor  # noqa: E731 - a closure's own
    return lambda s, h: chk(h)


def _wrapped(f: Callable[..., Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        return f(*args, **kwargs)

    return wrapper


class _Routed(nn.Module):
    """``h - h.mean(1)`` where ``self.ask(self, h)`` is True, as it is eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.ask(self, h):
            h = h - h.mean(1, keepdim=True)
        return self.c(torch.relu(self.b(h)))


class _Decorated(_Routed):
    @_wrapped
    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if type(h) is torch.Tensor:
            h = h - h.mean(1, keepdim=True)
        return self.c(torch.relu(self.b(h)))


def _routed(route: str) -> nn.Module:
    model = _Decorated() if route == "decorated_forward" else _Routed()
    asks = {
        "helper_object": lambda s, h: s.helper.check(h),
        "lambda_in_a_list": lambda s, h: s.fns[0](h),
        "partial": lambda s, h: s.part(h),
        "closure": _closure(),
        "getattr_class": lambda s, h: getattr(h, "__class__") is torch.Tensor,  # noqa: B009 - the spelling under test
        "not_hasattr": lambda s, h: not hasattr(h, "node"),
        "is_fx_tracing": lambda s, h: not torch.fx._symbolic_trace.is_fx_tracing(),
        "isinstance_proxy": lambda s, h: not isinstance(h, torch.fx.Proxy),
        "decorated_forward": lambda s, h: False,
    }
    model.ask = asks[route]
    model.helper, model.fns, model.part = _Helper(), [lambda h: type(h) is torch.Tensor], functools.partial(_is_plain)
    return model.eval()


@pytest.mark.parametrize(
    "route",
    ["helper_object", "lambda_in_a_list", "partial", "closure", "getattr_class", "not_hasattr", "is_fx_tracing",
     "isinstance_proxy", "decorated_forward"],
)  # fmt: skip
def test_a_question_reached_by_any_route_is_checked(route: str) -> None:
    """Each was planned zero-invariant (0.05-0.14 off the masked model) with the check never run:
    the gate's walk did not reach the question. Now refused, or planned by torch.export right."""
    model, x = _routed(route), torch.randn(*X)
    from sparsekit_graph.graph.eager_gate import asks_what_values_are

    assert asks_what_values_are(model)
    try:
        plan = skg.plan(model, x)
    except TraceError as e:
        assert "does not compute what its forward computes" in str(e) or "Unfaithful" in str(e), e
        return
    assert not plan.group("a:out").zero_invariant


@dataclasses.dataclass
class _Out:
    y: Tensor


class _DataclassOut(_Asks):
    def forward(self, x: Tensor) -> _Out:  # type: ignore[override]
        return _Out(super().forward(x))


def test_a_dataclass_output_is_compared_field_by_field() -> None:
    """pytree sees a plain dataclass as one opaque leaf: both runs "agreed" on no tensors."""
    model, x = _DataclassOut(_ASKS["type_is"]).eval(), torch.randn(*X)
    with pytest.raises(TraceError):
        skg.plan(model, x)


class _Draws(nn.Module):
    """Draws from Python's, numpy's and its own generator, and asks (so the check runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.gen = torch.Generator().manual_seed(3)

    def forward(self, x: Tensor) -> Tensor:
        assert callable(self.b)
        noise = random.random() + float(np.random.rand()) + float(torch.rand((), generator=self.gen))
        return self.b(torch.relu(self.a(x))) + 0 * noise


def test_the_check_leaves_every_random_state_as_the_trace_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs seed the CPU's generator and the model's GPUs' only (``torch.manual_seed`` reset
    every GPU's stream and a queued CUDA seed); Python's, numpy's and the model's own generator
    end where the trace alone leaves them."""
    import sparsekit_graph.graph.trace as trace_module

    def states(model: _Draws) -> tuple:
        return random.getstate(), np.random.get_state()[1].tolist(), model.gen.get_state(), torch.get_rng_state()

    ends = []
    for check in (False, True):
        monkeypatch.setattr(trace_module, "asks_what_values_are", lambda m, check=check: check)
        random.seed(1), np.random.seed(1), torch.manual_seed(123)
        model = _Draws().eval()
        skg.plan(model, torch.randn(*X))
        ends.append(states(model))
    assert all(a == b if not isinstance(a, Tensor) else torch.equal(a, b) for a, b in zip(*ends))
    if not torch.cuda.is_available():  # the seed torch queues for CUDA's first use is the caller's
        queued = torch.cuda._lazy_seed_tracker.manual_seed_all_cb
        assert queued is None or queued[0].__closure__[0].cell_contents == 123


class _ReassignedBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        self.ema = 0.9 * self.ema + 0.1 * h.detach().mean((0, 2, 3))
        return self.b(h)


def test_a_buffer_the_forward_replaces_plans_without_hanging() -> None:
    """``self.ema = 0.9 * self.ema + ...`` left a Proxy in ``_buffers`` for the shape pass, which
    ran it as the buffer and grew the graph it walked: planning never ended."""
    model, x = _ReassignedBuffer().eval(), torch.randn(*X)
    before = fingerprint(model)

    def hung(*_: object) -> None:
        raise TimeoutError("planning did not end")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)  # a regression fails here, not by hanging the run
    try:
        plan = skg.plan(model, x)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert_untouched(model, before, "plan")
    assert plan.group("a:out").prunable


# -- weights on the meta device -----------------------------------------------------------------


def _plan_or_refusal(model: nn.Module, x: Tensor) -> skg.Plan | str:
    try:
        return skg.plan(model, x)
    except TraceError as e:
        return str(e)


@pytest.mark.parametrize("copied", [True, False], ids=["copied", "too_large_to_copy"])
@pytest.mark.parametrize("name", sorted(_ASKS))
def test_on_meta_weights_a_forward_that_asks_plans_as_on_real_weights(
    name: str, copied: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On meta weights a model is planned, or refused, as the same model with real weights is.
    A small one is checked on a real copy (seeded random weights); a larger one by the ATen
    ops each runs (the forward's ``mean`` and ``sub`` are missing from a graph of the other
    branch), torch.export's graph (the only trace of ``h.__class__.__name__``) included: the
    forward then runs as torch.export sees it (``is_compiling()`` True)."""
    if not copied:
        monkeypatch.setattr(real_weights, "REAL_COPY_ELEMENTS", 0)
    real = _Asks(_ASKS[name]).eval()
    with torch.device("meta"):
        model = _Asks(_ASKS[name]).eval()
    real_plan, meta_plan = _plan_or_refusal(real, torch.randn(*X)), _plan_or_refusal(model, torch.randn(*X, device="meta"))
    if isinstance(real_plan, str):
        assert name in _REFUSED and isinstance(meta_plan, str) and "does not compute what its forward computes" in meta_plan
        if not copied:
            assert "the forward runs mean, sub" in meta_plan, meta_plan
        return
    assert isinstance(meta_plan, skg.Plan) and meta_plan.groups == real_plan.groups
    assert not meta_plan.group("a:out").zero_invariant, "the mean over a's channels runs"


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_a_faithful_graph_on_meta_weights_plans_as_on_real_ones(name: str) -> None:
    """torchvision's EfficientNet and ConvNeXt pass the gate (``stochastic_depth``'s
    ``_log_api_usage_once`` reads ``obj.__class__``); their in-place ``+=`` is traced as ``+``,
    and the ops alike otherwise, so the meta plan is the real one."""
    import torchvision

    real = getattr(torchvision.models, name)().eval()
    with torch.device("meta"):
        model = getattr(torchvision.models, name)().eval()
    assert skg.plan(model, torch.randn(1, 3, 32, 32, device="meta")).groups == skg.plan(real, torch.randn(1, 3, 32, 32)).groups


def test_ops_are_compared_out_of_place() -> None:
    from sparsekit_graph.graph.op_log import out_of_place as _out_of_place

    assert [_out_of_place(op) for op in ("add_", "add", "__iand__", "__and__", "relu_")] == [
        "add", "add", "__and__", "__and__", "relu"
    ]  # fmt: skip


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def test_a_real_copy_keeps_ties_and_leaves_the_meta_model_alone() -> None:
    with torch.device("meta"):
        model = _Tied()
    real = real_weights.real_copy(model)
    assert real is not None and real.head.weight is real.emb.weight, "a tie broken draws two weights the graph reads as one"
    assert not real.emb.weight.is_meta and isinstance(real.emb.weight, nn.Parameter) and real.steps.item() == 0
    assert model.emb.weight.is_meta and model.head.weight is model.emb.weight
    again = real_weights.real_copy(model)
    assert again is not None and torch.equal(again.emb.weight, real.emb.weight), "seeded"


def test_a_small_hugging_face_model_on_meta_weights_is_checked_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2 (tied embeddings) is exported, and its exported graph names ``device=meta``: on
    a real copy both run, and agree, so the meta plan is the real one."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32)
    real = GPT2LMHeadModel(config).eval()
    with torch.device("meta"):
        model = GPT2LMHeadModel(config).eval()
    ids = torch.zeros(2, 8, dtype=torch.long)
    compared: list[bool] = []
    run = eager_check._Runs.__call__
    monkeypatch.setattr(eager_check._Runs, "__call__", lambda *a, **k: compared.append((r := run(*a, **k)) is not None) or r)
    meta_plan = skg.plan(model, {"input_ids": ids.to("meta")})
    assert compared == [True, True], "the forward and the exported graph both ran on the real copy"
    assert meta_plan.groups == skg.plan(real, {"input_ids": ids}).groups
