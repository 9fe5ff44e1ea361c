"""``ProximalStep(..., cuda_graph=True)``: the steady-state Euclidean step replayed as one CUDA graph.

The batched SGD step on CUDA reads nothing back to the host once the engine's layout is cached
(``engine/batch.py``), so it can be captured: the thresholds ``weight * (lam * lr)`` (``lam * lr``
from a device vector filled before each replay, so a schedule or a new learning rate needs no
recapture), ``euclidean_all`` over every group and the momentum reset. The first step runs eagerly
(it builds the layout and warms the libraries up), the second captures and replays, the rest
replay. The graph writes into the tensors it was captured on: it is captured again when a
parameter or a momentum buffer is replaced (``optimizer.load_state_dict``, ``model.to``), which is
checked on the host from their addresses before every replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..engine.batch import euclidean_all
from ..errors import SparseKitError
from .segments import ProxGroup

if TYPE_CHECKING:
    from .step import ProximalStep

__all__ = ["GraphedStep", "check_graphable"]


def check_graphable(kind: str, batched: bool, groups: list[ProxGroup]) -> None:
    """Raises ``SparseKitError`` unless the step can be captured: SGD, batched, every parameter on CUDA."""
    if kind != "sgd":
        raise SparseKitError(
            "cuda_graph=True: only the Euclidean step (SGD) is captured; Adam's conditioned step reads values back"
        )
    if not batched:
        raise SparseKitError("cuda_graph=True needs the batched step (batched=True, whole tensors of one process)")
    for g in groups:
        for s in g.segments:
            if s.param.device.type != "cuda":
                raise SparseKitError(
                    f"cuda_graph=True: group {g.name!r}: param {s.name!r} is on {s.param.device}, not a CUDA device"
                )


class GraphedStep:
    """Thresholds, prox and momentum reset of a ``ProximalStep``'s groups, captured once and replayed."""

    def __init__(self, prox: ProximalStep, groups: list[ProxGroup]) -> None:
        self.prox, self.groups = prox, groups
        self.device = groups[0].weight.device if groups else torch.device("cpu")
        self.weights = [g.weight.double() for g in groups]
        self.coef = torch.zeros(len(groups), dtype=torch.float64, device=self.device)  # lam * lr per group
        self._index: dict[tuple[int, ...], Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.eager_calls = self.captures = self.replays = 0

    def body(self) -> None:
        """The step itself (what the graph holds): no host synchronisation."""
        live = [i for i, ok in enumerate(self.prox._live()) if ok]
        work = [(self.groups[i], self.weights[i] * self.coef[i]) for i in live]
        couplings = [g.coupling for g, _ in work if g.coupling is not None]  # all of them: the step is batched
        self.prox._reset(work, euclidean_all(couplings, [t for _, t in work]))

    def step(self, lam: float, lrs: list[float]) -> None:
        """Fill ``lam * lr``, then replay (capturing first when the tensors changed; eagerly on the first call)."""
        self._fill([lam * lr for lr in lrs])
        if not self.eager_calls:
            self.prox._live()  # the one read-back, before any capture
            self.body()
            self.eager_calls += 1
            return
        key = self._key()
        if self.graph is None or key != self.key:
            self.graph = None  # the old graph's memory pool goes with it
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body()
            self.graph, self.key = graph, key
            self.captures += 1
        self.graph.replay()
        self.replays += 1

    def _fill(self, values: list[float]) -> None:
        """``coef[i] = values[i]`` with fill kernels (a scalar argument each: nothing copied from the host)."""
        distinct = sorted(set(values))
        if len(distinct) == 1:
            self.coef.fill_(distinct[0])
            return
        for v in distinct:
            which = tuple(i for i, x in enumerate(values) if x == v)
            idx = self._index.get(which)
            if idx is None:  # made once per set of groups (one small copy to the device)
                idx = self._index[which] = torch.tensor(which, dtype=torch.long, device=self.device)
            self.coef.index_fill_(0, idx, v)

    def _key(self) -> tuple:
        """Where the graph's tensors live: every parameter's and momentum buffer's address."""
        state = self.prox._optimizer.state
        out: list[int] = []
        for g in self.groups:
            for s in g.segments:
                buf = state.get(s.param, {}).get("momentum_buffer") if self.prox.reset_state else None
                out += [s.param.data_ptr(), buf.data_ptr() if isinstance(buf, Tensor) else 0]
        return (tuple(out), self.prox.reset_state)
