"""ProximalStep under torch.distributed (gloo, CPU, 2 processes): DDP and FSDP2 equal one process.

One pair of processes runs every scenario (spawning is the slow part) and saves what it saw; the
tests below read it. Each rank trains a copy of the same model on the same batch, so DDP's and
FSDP2's averaged gradients equal the single-process ones exactly, and the only thing left to
differ is the proximal step itself: partial sums all-reduced over uneven shards.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph import ProximalStep
from sparsekit_graph.plan.schema import Group, Member, Plan

WORLD = 2
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


class _OddNet(nn.Module):
    """Channel counts that split unevenly over 2 ranks (5 = 3 + 2, 7 = 4 + 3, 9 = 5 + 4, 3 = 2 + 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1, bias=False)  # residual: rows and columns in one group
        self.bn2 = nn.BatchNorm2d(5)
        self.conv3 = nn.Conv2d(5, 7, 3, padding=1)
        self.fc1 = nn.Linear(7 * 4 * 4, 9)  # columns in blocks of 16 (flatten)
        self.fc2 = nn.Linear(9, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, 5, 8, 8)
        h = F.relu(h + self.bn2(self.conv2(h)))
        h = F.relu(self.conv3(h))  # (B, 7, 8, 8)
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)  # (B, 112)
        return self.fc2(F.relu(self.fc1(h)))


class _Heads(nn.Module):
    """3 channels of 5 rows each in fc1 (rows 0..14 split 8 + 7: channel 1 straddles the ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 15), nn.Linear(15, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _heads_plan() -> Plan:
    def member(param: str, axis: int) -> Member:
        return Member(param=param, axis=axis, start=0, stop=15, block=5, order=[1, 0, 2, 3])

    members = [member("fc1.weight", 0), member("fc1.bias", 0), member("fc2.weight", 1)]
    return Plan(model="heads", groups=[Group(name="heads", size=3, prunable=True, zero_invariant=True, members=members)])


def _cases() -> dict[str, tuple[Callable[[], nn.Module], Tensor, Callable[[Tensor], Tensor]]]:
    gen = torch.Generator().manual_seed(5)
    x_img, y_img = torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    x_vec, y_vec = torch.randn(16, 4, generator=gen), torch.randn(16, 3, generator=gen)
    return {
        "oddnet": (_OddNet, x_img, lambda out: F.cross_entropy(out, y_img)),
        "heads": (_Heads, x_vec, lambda out: F.mse_loss(out, y_vec)),
    }


_OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
}
_LAM = {"sgd": 0.3, "adamw": 0.1}
_STEPS = 3


def _train(model: nn.Module, plan: Plan, x: Tensor, loss_fn: Callable[[Tensor], Tensor], kind: str) -> ProximalStep:
    opt = _OPTIMIZERS[kind](model)
    prox = ProximalStep(plan, model, opt, lam=_LAM[kind], weights=_weights(plan))
    for _ in range(_STEPS):
        opt.zero_grad()
        loss_fn(model(x)).backward()
        opt.step()
        assert prox.step()
    return prox


def _weights(plan: Plan) -> dict[str, Tensor]:
    """Default-sized weights (``sqrt`` of elements per channel, near enough), channel 2 of every group 1000x."""
    out = {}
    for g in plan.groups:
        if g.prunable and g.zero_invariant:
            w = torch.full((g.size,), 5.0)
            w[2] = 5000.0
            out[g.name] = w
    return out


def _full(model: nn.Module) -> dict[str, Tensor]:
    """Whole parameters (DTensors gathered: only after the counted region)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("module.")] = t.detach().clone()
    return out


class _Counter:
    """Counts calls of every all-gather entry point (c10d, functional collectives, DTensor)."""

    def __init__(self) -> None:
        self.gathers = 0
        self.reduces = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> _Counter:
        import torch.distributed._functional_collectives as funcol
        import torch.distributed.distributed_c10d as c10d
        from torch.distributed.tensor import DTensor

        for module in (dist, c10d):
            for name in dir(module):
                if "gather" in name and callable(getattr(module, name)):
                    self._wrap(module, name, "gathers")
            self._wrap(module, "all_reduce", "reduces")
        for name in dir(funcol):
            if name.startswith("all_gather") and callable(getattr(funcol, name)):
                self._wrap(funcol, name, "gathers")
        self._wrap(DTensor, "full_tensor", "gathers")
        self._wrap(DTensor, "redistribute", "gathers")
        return self

    def _wrap(self, owner: Any, name: str, counter: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            setattr(self, counter, getattr(self, counter) + 1)
            return original(*args, **kwargs)

        setattr(owner, name, counted)
        self._undo.append((owner, name, original))

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def _sync_shards(sharded: nn.Module, opt: torch.optim.Optimizer, ref: nn.Module, ref_opt: torch.optim.Optimizer) -> None:
    """Give every local shard (weights and optimizer state) the reference's values, untimed and exact."""
    with torch.no_grad():
        for p, q in zip(sharded.parameters(), ref.parameters()):
            rank, world = p.device_mesh.get_local_rank(), p.device_mesh.size()
            start = min(rank * -(-q.shape[0] // world), q.shape[0])
            pairs = [(p, q)] + [(opt.state[p][k], ref_opt.state[q][k]) for k in ref_opt.state[q] if k != "step"]
            for shard, full in pairs:
                local = shard.to_local()
                local.copy_(full[start : start + local.shape[0]])
            if "step" in ref_opt.state[q]:
                opt.state[p]["step"].copy_(ref_opt.state[q]["step"])


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel as DDP

        mesh = init_device_mesh("cpu", (WORLD,))
        for case, (make, x, loss_fn) in _cases().items():
            torch.manual_seed(0)
            plan = skg.plan(make(), x) if case != "heads" else _heads_plan()
            for kind in _OPTIMIZERS:
                key = f"{case}/{kind}"
                torch.manual_seed(1)
                ref = make()
                state = {k: v.clone() for k, v in ref.state_dict().items()}

                # DDP: the whole run, compared at the end (every rank's gradients equal one process's)
                single = make()
                single.load_state_dict(state)
                single_prox = _train(single, plan, x, loss_fn, kind)
                ddp_model = make()
                ddp_model.load_state_dict(state)
                ddp = DDP(ddp_model)
                ddp_prox = _train(ddp, plan, x, loss_fn, kind)
                result[f"{key}/single"] = _full(single)
                result[f"{key}/single_masks"] = single_prox.masks()
                result[f"{key}/ddp"] = _full(ddp)
                result[f"{key}/ddp_masks"] = ddp_prox.masks()

                # FSDP2: in lockstep with a reference; before each prox the shards get its exact state
                sharded = make()
                sharded.load_state_dict(state)
                for layer in sharded.children():
                    if any(True for _ in layer.parameters()):
                        fully_shard(layer, mesh=mesh)
                fully_shard(sharded, mesh=mesh)
                result[f"{key}/local_rows"] = {n: tuple(p.to_local().shape[:1]) for n, p in sharded.named_parameters()}
                opt, ref_opt = _OPTIMIZERS[kind](sharded), _OPTIMIZERS[kind](ref)
                prox = ProximalStep(plan, sharded, opt, lam=_LAM[kind], weights=_weights(plan))
                ref_prox = ProximalStep(plan, ref, ref_opt, lam=_LAM[kind], weights=_weights(plan))
                errors = []
                for _ in range(_STEPS):
                    for model, optimizer in ((ref, ref_opt), (sharded, opt)):
                        optimizer.zero_grad()
                        with _Counter() as forward:
                            loss = loss_fn(model(x))
                        loss.backward()
                        optimizer.step()
                    _sync_shards(sharded, opt, ref, ref_opt)
                    with _Counter() as counter:
                        assert prox.step()
                        masks, stats = prox.masks(), prox.stats()
                    assert ref_prox.step()
                    errors.append(_max_rel(_full(sharded), _full(ref)))
                result[f"{key}/gathers"] = (forward.gathers, counter.gathers, counter.reduces)
                result[f"{key}/batched"] = (single_prox.batched, ddp_prox.batched, prox.batched, ref_prox.batched)
                result[f"{key}/errors"] = errors
                result[f"{key}/fsdp_masks"], result[f"{key}/ref_masks"] = masks, ref_prox.masks()
                result[f"{key}/fsdp_stats"], result[f"{key}/ref_stats"] = stats.model_dump(), ref_prox.stats().model_dump()
        dist.barrier()
    except BaseException:  # reported by the test in the parent process
        result["error"] = traceback.format_exc()
    finally:
        torch.save(result, Path(out) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_worker, args=(_free_port(), out), nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
        results = [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    return results


SCENARIOS = [f"{case}/{kind}" for case in ("oddnet", "heads") for kind in _OPTIMIZERS]


def _max_rel(a: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[float, str]:
    """Largest ``|a - b| / max|b|`` over the parameters, and which parameter it is."""
    return max((float((a[n] - b[n]).abs().max()) / max(float(b[n].abs().max()), 1e-12), n) for n in b)


def test_shards_are_uneven(runs: list[dict[str, Any]]) -> None:
    rows = [runs[r]["oddnet/sgd/local_rows"] for r in range(WORLD)]
    assert rows[0]["conv1.weight"] == (3,) and rows[1]["conv1.weight"] == (2,)
    assert rows[0]["fc2.weight"] == (2,) and rows[1]["fc2.weight"] == (1,)
    assert runs[0]["heads/sgd/local_rows"]["fc1.weight"] == (8,) and runs[1]["heads/sgd/local_rows"]["fc1.weight"] == (7,)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ddp_every_rank_applies_the_single_process_step(runs: list[dict[str, Any]], scenario: str) -> None:
    single = runs[0][f"{scenario}/single"]
    for r in range(WORLD):
        err, name = _max_rel(runs[r][f"{scenario}/ddp"], single)
        assert err <= 1e-6, (r, name, err)
        assert _lists(runs[r][f"{scenario}/ddp_masks"]) == _lists(runs[0][f"{scenario}/single_masks"])
    assert all(torch.equal(runs[0][f"{scenario}/ddp"][n], runs[1][f"{scenario}/ddp"][n]) for n in single)
    assert any(bool(m.any()) for m in runs[0][f"{scenario}/single_masks"].values())  # channels were zeroed


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fsdp2_equals_the_single_process_step(runs: list[dict[str, Any]], scenario: str) -> None:
    for r in range(WORLD):
        for step, (err, name) in enumerate(runs[r][f"{scenario}/errors"]):
            assert err <= 1e-6, (r, step, name, err)
        assert runs[r][f"{scenario}/fsdp_stats"] == runs[r][f"{scenario}/ref_stats"]
        assert _lists(runs[r][f"{scenario}/fsdp_masks"]) == _lists(runs[r][f"{scenario}/ref_masks"])
    assert runs[0][f"{scenario}/ref_stats"]["channels_zero"] > 0  # the prox did zero channels


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fsdp2_step_never_gathers_a_parameter(runs: list[dict[str, Any]], scenario: str) -> None:
    for r in range(WORLD):
        forward_gathers, prox_gathers, prox_reduces = runs[r][f"{scenario}/gathers"]
        assert forward_gathers > 0  # the counter sees FSDP2's own all-gathers
        assert prox_gathers == 0
        assert prox_reduces > 0  # partial sums were all-reduced


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_running_process_group_takes_the_group_by_group_path(runs: list[dict[str, Any]], scenario: str) -> None:
    """Under torch.distributed every step (plain tensors included) is the per-group, all-reducing one."""
    assert all(runs[r][f"{scenario}/batched"] == (False,) * 4 for r in range(WORLD))


def _lists(masks: dict[str, Tensor]) -> dict[str, list[bool]]:
    return {k: v.tolist() for k, v in masks.items()}
