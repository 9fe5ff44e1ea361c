"""``soft_threshold_all`` (Euclidean) with its weights spread over worker threads or not, in one process.

Interleaves, round by round (order reversed every other round): the call at ``--threads`` intra-op
threads with ``batch.SPLIT`` off (each kernel split by torch), with it on (weights spread over
worker threads, one intra-op thread each), the one-thread call, and an Adam(foreach) step at
``--threads``; weights (and Adam's state) restored before each. Checks first that the three give
the same bits. Prints per contender the median wall time (quartiles), median process CPU time
(all threads) and the ratio to Adam's median, and the median of the per-round ratio split/serial.
Layouts and state as ``engine.py`` (same seeds, its ``--malloc steady`` left to the caller's
environment: ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296``).

    python benchmarks/engine_threads.py [--layout bottleneck|plan] [--rounds 25] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import engine as E
import torch

from sparsekit_graph.engine import batch, soft_threshold_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("bottleneck", "plan"), default="bottleneck")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    opt, cond, lay = E._prepare(argparse.Namespace(adam_steps=2, no_dying=False), a.layout)
    bench = E.Bench(lay, cond, 1)

    def prox(split: bool, threads: int) -> tuple[float, float]:
        batch.SPLIT = split
        torch.set_num_threads(threads)
        bench.restore(lay.params)
        t0, c0 = time.perf_counter(), time.process_time()
        soft_threshold_all(lay.ours, bench.tau_e)
        return time.perf_counter() - t0, time.process_time() - c0

    outs = {}
    for key in [(False, 1), (False, a.threads), (True, a.threads)]:
        prox(*key)
        outs[key] = [p.detach().clone() for p in lay.params]
    for key, o in outs.items():
        same = all(torch.equal(x, y) for x, y in zip(o, outs[False, 1]))
        print(f"split {key[0]}, {key[1]} threads: bitwise equal to one thread: {same}")
    params = [p for g in opt.param_groups for p in g["params"]]
    snap = {p: p.detach().clone() for p in params}
    state = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in params}

    def adam() -> tuple[float, float]:
        torch.set_num_threads(a.threads)
        with torch.no_grad():
            for p in params:
                p.copy_(snap[p])
                for k, v in state[p].items():
                    opt.state[p][k].copy_(v)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    calls = {
        "serial": lambda: prox(False, a.threads),
        "split": lambda: prox(True, a.threads),
        "serial1": lambda: prox(False, 1),
        "adam": adam,
    }
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
    load0 = os.getloadavg()[0]
    for r in range(a.rounds):
        for name in list(calls) if r % 2 == 0 else list(calls)[::-1]:
            res[name].append(calls[name]())
    adam_ms = statistics.median(x[0] for x in res["adam"])
    for k, v in res.items():
        w = sorted(x[0] for x in v)
        c = statistics.median(x[1] for x in v)
        print(
            f"{a.layout:10s} {k:7s} wall med {statistics.median(w) * 1e3:7.2f} ms  (q1 {w[len(w) // 4] * 1e3:6.2f} "
            f"q3 {w[3 * len(w) // 4] * 1e3:6.2f})  cpu med {c * 1e3:7.2f} ms  x Adam {statistics.median(w) / adam_ms:.3f}"
        )
    pr = sorted(s[0] / t[0] for s, t in zip(res["split"], res["serial"]))
    print(
        f"paired split/serial wall ratio: median {statistics.median(pr):.3f}  q1 {pr[len(pr) // 4]:.3f} "
        f"q3 {pr[3 * len(pr) // 4]:.3f}; load {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
