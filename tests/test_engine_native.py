"""The native Euclidean loops (``engine/native.py``, built by ``engine/cbuild.py``, driven by
``engine/native_plan.py``): on by default, built in well under a few seconds without torch headers,
safe to build from two processes at once, eager with one warning when no compiler is found, and
the same prox as the eager kernels (sums equal to rounding, writes in the eager order)."""

from __future__ import annotations

import copy
import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision

import sparsekit_graph as skg
from sparsekit_graph.engine import cbuild, native, soft_threshold_all

needs_cc = pytest.mark.skipif(cbuild.compiler() is None, reason="no C compiler (CI installs one)")


def test_on_by_default_and_forced_off_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native._state["on"] == (os.environ.get("SPARSEKIT_GRAPH_EUCLID_KERNELS", "native") != "eager")
    monkeypatch.setattr(native, "_state", {"on": True, "lib": None, "broken": None})
    was = native.set_native(False)
    assert was is True
    assert not native.enabled(torch.zeros(4, 4))
    assert native._state["lib"] is None  # asking while off builds nothing


@needs_cc
def test_cold_build_is_seconds_and_releases_the_gil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEKIT_GRAPH_CACHE", str(tmp_path))
    t = time.perf_counter()
    lib = cbuild.load("sparsekit_graph_euclid", native.SOURCE, native.flags())
    took = time.perf_counter() - t
    assert took < 20, f"cold build took {took:.1f} s"
    (built,) = tmp_path.iterdir()  # one library, no temporary left behind
    assert built.suffix == ".so" and built.name.startswith("sparsekit_graph_euclid-")
    assert isinstance(lib, ctypes.CDLL) and not isinstance(lib, ctypes.PyDLL)
    assert not lib.sk_reads._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]  # GIL released in calls
    t = time.perf_counter()
    cbuild.load("sparsekit_graph_euclid", native.SOURCE, native.flags())  # cached: loaded, not rebuilt
    assert list(tmp_path.iterdir()) == [built] and time.perf_counter() - t < took


@needs_cc
def test_builders_at_once_load_whole_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four builders racing on an empty cache (threads here: each compiles to its own temporary name
    and renames it into place, which is what keeps separate processes apart too): every one loads a
    working library, and the cache ends with one file."""
    monkeypatch.setenv("SPARSEKIT_GRAPH_CACHE", str(tmp_path))
    start = threading.Barrier(4)

    def build(_: int) -> float:
        start.wait()
        lib = cbuild.load("sparsekit_graph_euclid", native.SOURCE, native.flags())
        x = torch.arange(12.0).reshape(3, 4)
        out = torch.empty(3)
        lib.sk_msum.argtypes = native._SIGNATURES["sk_msum"]
        lib.sk_msum(x.data_ptr(), 3, 4, out.data_ptr())
        return float(out.sum())

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(build, range(4)))
    assert got == [float((torch.arange(12.0) ** 2).sum())] * 4
    assert [f.suffix for f in tmp_path.iterdir()] == [".so"]  # one library, every temporary renamed or removed


def test_no_compiler_warns_once_and_runs_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_state", {"on": True, "lib": None, "broken": None})
    monkeypatch.setattr(cbuild, "compiler", lambda: None)
    w = torch.randn(8, 6)
    twin = w.clone()
    c, c2 = (skg.engine.BlockCoupling([skg.engine.BlockSpec(x, (1, -1))]) for x in (w, twin))
    tau = c.norms().flatten().median().reshape(1).expand(8).contiguous()
    with pytest.warns(UserWarning, match="native Euclidean kernels unavailable.*no C compiler"):
        soft_threshold_all([c], [tau])
    assert native._state["broken"] and not native.enabled(w)
    native.set_native(False)
    soft_threshold_all([c2], [tau])
    assert torch.equal(w, twin)  # the eager kernels ran


@needs_cc
def test_bad_source_is_a_build_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEKIT_GRAPH_CACHE", str(tmp_path))
    with pytest.raises(cbuild.BuildError, match="failed"):
        cbuild.load("broken", "int f( {", native.flags())
    assert list(tmp_path.iterdir()) == []


def _taus(couplings: list, zeroed: float) -> list[torch.Tensor]:
    out = []
    for c in couplings:
        norms = c.norms().flatten().sort().values
        k = int(zeroed * norms.numel())  # halfway between two blocks' norms: no block sits at its threshold
        out.append(torch.full(c.grid_shape, float(norms[k] + norms[k + 1]) / 2))
    return out


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernels_match_eager_over_a_plan(threads: int) -> None:
    """ResNet-18's plan: 3x3 weights shared by two groups (M), 1x1 rows and columns, fc columns."""
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for p in model.parameters():  # blocks of unequal norms: some die, the others shrink unequally
            p.mul_(10 ** (-2 * torch.rand(p.shape[:1])).reshape(-1, *[1] * (p.dim() - 1)))
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    twin = copy.deepcopy(model)
    groups = [g.name for g in plan.prunable]
    bound, bound2 = skg.bind(plan, model), skg.bind(plan, twin)
    cs, cs2 = [bound[n] for n in groups], [bound2[n] for n in groups]
    taus, before = _taus(cs, 0.05), torch.get_num_threads()
    was = native.set_native(True)
    try:
        torch.set_num_threads(threads)
        assert native.enabled(torch.zeros(4, 4)), native._state["broken"]
        killed = soft_threshold_all(cs, taus)
        native.set_native(False)
        killed2 = soft_threshold_all(cs2, taus)
    finally:
        native.set_native(was)
        torch.set_num_threads(before)
    assert sum(int(k.sum()) for k in killed) > 0
    for k, k2 in zip(killed, killed2):
        assert torch.equal(k, k2)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def _resnet18_call(threads: int, wide: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ResNet-18's plan, one ``soft_threshold_all`` on ``threads`` threads: the weights after it and
    the blocks it zeroed (same seed: the same model and thresholds every time)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    bound = skg.bind(plan, model)
    cs = [bound[g.name] for g in plan.prunable]
    taus = [t.double() if wide else t for t in _taus(cs, 0.1)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        killed = soft_threshold_all(cs, taus, eps=1e-7 if wide else None)
    finally:
        torch.set_num_threads(before)
    return [p.detach().clone() for p in model.parameters()], killed


@needs_cc
@pytest.mark.parametrize(("threads", "wide"), [(2, False), (3, False), (5, True)])
def test_the_program_gives_the_one_thread_bits_on_any_thread_count(threads: int, wide: bool) -> None:
    """Rows are taken by whichever thread is free, so which thread runs a pass changes from call
    to call; the bits must not (more threads than this machine's cores included)."""
    assert native.enabled(torch.zeros(2, 2)), native._state["broken"]
    want, want_killed = _resnet18_call(1, wide)
    got, killed = _resnet18_call(threads, wide)
    assert sum(int(k.sum()) for k in killed) > 0
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for a, b in zip(killed, want_killed):
        assert torch.equal(a, b)


@needs_cc
def test_a_cached_program_keeps_no_model_alive() -> None:
    """The compiled call points into the weights but holds none of them: a model dropped after a
    call is freed (its program stays cached with its own small buffers only)."""
    import gc
    import weakref

    model = torchvision.models.resnet18(num_classes=10)
    plan = skg.plan(model, torch.randn(1, 3, 32, 32))
    bound = skg.bind(plan, model)
    cs = [bound[g.name] for g in plan.prunable]
    soft_threshold_all(cs, _taus(cs, 0.1))
    gone = weakref.ref(model.layer4[1].conv2.weight)
    del model, bound, cs
    gc.collect()
    assert gone() is None


@needs_cc
def test_two_python_threads_on_a_first_call_give_two_calls_in_turn() -> None:
    """Two Python threads calling on the same couplings before anything is cached: one layout,
    one program, and the calls in turn (each trial against two serial calls on a twin)."""
    torch.manual_seed(0)
    for _ in range(4):
        model = torchvision.models.resnet18(num_classes=10)
        twin = copy.deepcopy(model)
        plan = skg.plan(model, torch.randn(1, 3, 32, 32))
        cs, cs2 = ([skg.bind(plan, m)[g.name] for g in plan.prunable] for m in (model, twin))
        taus = _taus(cs, 0.05)
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(soft_threshold_all, cs, taus) for _ in range(2)]:
                f.result()
        soft_threshold_all(cs2, taus)
        soft_threshold_all(cs2, taus)
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b)


@needs_cc
def test_a_nan_weight_gives_the_eager_nans() -> None:
    """A NaN norm keeps its block's factor NaN (torch's ``clamp_min`` keeps it), native or eager."""
    out = []
    for on in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 4, 1))
        with torch.no_grad():
            model[2].weight[1, 3] = float("nan")  # one block of the conv's input channels, one of the BN group's
        plan = skg.plan(model, torch.randn(1, 8, 6, 6))
        cs = [skg.bind(plan, model)[g.name] for g in plan.prunable]
        was = native.set_native(on)
        try:
            soft_threshold_all(cs, _taus(cs, 0.25))
        finally:
            native.set_native(was)
        out.append([p.detach().clone() for p in model.parameters()])
    assert any(bool(a.isnan().any()) for a in out[0])
    for a, b in zip(*out):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=1e-5, atol=1e-7)  # sums equal to rounding
