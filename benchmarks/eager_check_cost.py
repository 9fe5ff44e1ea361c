"""What the eager check (``graph/eager_check.py``) costs ``plan()``: CPU process time, one thread,
interleaved calls, with the check on and off on the same fresh models.

    python benchmarks/eager_check_cost.py --repeats 7

The check runs the traced graph beside the eager forward only where a static scan of the code
the forward reaches (``asks_what_values_are``) finds a question about what a value is. For
each model the script reports whether that gate fires, the gate's own time, and ``plan()``
with the check (``on``) against ``plan()`` with the gate answering no (``off``): the minimum
and the 25th percentile of ``--repeats`` rounds, and their ratio. ResNet-18 is the control
(the gate does not fire: ``on`` pays the scan only); the others fire it (EfficientNet and
ConvNeXt call ``stochastic_depth``, whose ``_log_api_usage_once`` reads ``obj.__class__``; every
Hugging Face model reaches ``transformers``' utilities). Each round makes a fresh model per call (construction
and ``gc.collect()`` untimed) and calls ``off`` and ``on`` in turn.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import sparsekit_graph as skg
import sparsekit_graph.graph.trace as trace_module
from sparsekit_graph.graph.eager_gate import asks_what_values_are
from sparsekit_graph.zoo import hf_model

Build = Callable[[], tuple[torch.nn.Module, Any]]


def _vision(name: str, res: int) -> Build:
    def build() -> tuple[torch.nn.Module, Any]:
        return getattr(torchvision.models, name)().eval(), torch.randn(1, 3, res, res)

    return build


def _hf(name: str) -> Build:
    def build() -> tuple[torch.nn.Module, Any]:
        torch.manual_seed(0)
        return hf_model(name)

    return build


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


def _spread(times: list[float]) -> tuple[float, float]:
    t = sorted(times)
    return t[0], t[len(t) // 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--res", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    models: dict[str, Build] = {
        "resnet18": _vision("resnet18", args.res),
        "efficientnet_b0": _vision("efficientnet_b0", args.res),
        "convnext_tiny": _vision("convnext_tiny", args.res),
        "hf:llama": _hf("llama"),
        "hf:gpt2": _hf("gpt2"),
        "hf:bert": _hf("bert"),
    }
    real_gate = trace_module.asks_what_values_are
    print(f"{'model':16} {'gate':>5} {'scan ms':>8} {'off s (min/p25)':>16} {'on s (min/p25)':>16} {'on/off':>11}")
    for name, build in models.items():
        model, x = build()
        fires = asks_what_values_are(model)
        scan = min(_timed(lambda: asks_what_values_are(model)) for _ in range(3))
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats + 1):  # the first round warms up
            for on in (False, True):
                trace_module.asks_what_values_are = real_gate if on else (lambda m: False)
                model, x = build()
                times[on].append(_timed(lambda: skg.plan(model, x)))
        trace_module.asks_what_values_are = real_gate
        off, on = _spread(times[False][1:]), _spread(times[True][1:])
        print(
            f"{name:16} {'yes' if fires else 'no':>5} {1e3 * scan:8.1f} {off[0]:7.2f}/{off[1]:<8.2f} "
            f"{on[0]:7.2f}/{on[1]:<8.2f} {on[0] / off[0]:5.2f}/{on[1] / off[1]:<5.2f}"
        )


if __name__ == "__main__":
    main()
