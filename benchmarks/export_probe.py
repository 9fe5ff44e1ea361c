"""What the export probe (plan/probe.py) costs: ``plan()`` of small Hugging Face models (the
test configs, ``from_config``) with and without it, interleaved in one process at one thread,
and whether the plans are identical. Process time (CPU seconds), median of ``--repeat``.

    python benchmarks/export_probe.py [--models llama gpt2 bert qwen3 vit swin] [--repeat 5]
    python benchmarks/export_probe.py --llm llama2-7b   # one meta-device LLM config, one run each
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import sparsekit_graph as skg
from sparsekit_graph.plan import planner
from sparsekit_graph.plan.schema import Plan


def _without_probe(plan: Plan, *_: Any) -> Plan:
    return plan


def _timed(fn: Callable[[], Plan]) -> tuple[float, Plan]:
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def _plan(build: Callable[[], tuple[torch.nn.Module, Any]], probe: bool) -> tuple[float, Plan]:
    model, x = build()
    planner.probe_plan = _PROBE if probe else _without_probe
    try:
        return _timed(lambda: skg.plan(model, x))
    finally:
        planner.probe_plan = _PROBE


_PROBE = planner.probe_plan


def _hf(name: str) -> Callable[[], tuple[torch.nn.Module, Any]]:
    from sparsekit_graph.zoo import hf_model

    def build() -> tuple[torch.nn.Module, Any]:
        torch.manual_seed(0)
        return hf_model(name)

    return build


def _llm(name: str) -> Callable[[], tuple[torch.nn.Module, Any]]:
    import transformers
    from plan_llm_meta import CONFIGS  # benchmarks/ is on sys.path when run as a script

    def build() -> tuple[torch.nn.Module, Any]:
        family = "Mixtral" if name.startswith("mixtral") else "Llama"
        with torch.device("meta"):
            model = getattr(transformers, f"{family}ForCausalLM")(getattr(transformers, f"{family}Config")(**CONFIGS[name]))
        ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["llama", "gpt2", "bert", "qwen3", "vit", "swin"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--llm", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = [(n, _hf(n), args.repeat) for n in args.models] + [(n, _llm(n), 1) for n in args.llm]
    print(f"{'model':12} {'without s':>10} {'with s':>10} {'ratio':>6}  same plan  pinned by probe")
    for name, build, repeat in cases:
        _plan(build, False)  # warm-up (imports, caches)
        off, on = [], []
        for _ in range(repeat):
            t0, p0 = _plan(build, False)
            t1, p1 = _plan(build, True)
            off.append(t0)
            on.append(t1)
        a, b = statistics.median(off), statistics.median(on)
        pinned = [g.name for g in p1.groups if not g.prunable and "torch.export" in (g.reason or "")]
        print(f"{name:12} {a:10.2f} {b:10.2f} {b / a:6.2f}  {p0 == p1!s:9}  {pinned}", flush=True)


if __name__ == "__main__":
    main()
