"""Which arguments of an op take a number as a value, and which as a size.

A number the model's code made from a layer's size attribute (``size_values``: a ``SizeRead``
int, a ``SizeFloat``) changes when that layer is pruned. Where an op takes it as a value
(``h * (n ** -0.5)``, ``scaled_dot_product_attention(scale=1 / sqrt(n))``, ``dropout(p=1 / n)``)
the numbers change and the group only loses its zero-invariance; where the op takes it as a size
(``interpolate(scale_factor=n / 8)``, ``avg_pool2d(h, n // 4)``) the result's shape changes,
which no rule follows, so the group the attribute counts pins. Arguments are named as
``normalize`` binds them (torch's names), so every spelling of a call classifies alike:

- ``OPERANDS`` (any op): a number there is an operand of the computation (a value);
- ``SHAPING`` (any op) and ``SHAPING_BY_OP``: a number there shapes the result (a size); an int
  there pins too, since no rule models a literal in them;
- any other argument: a float there pins (fail closed: an unknown argument of an unknown op);
  an int is left to the rules, which match literals to attributes (``sizes.size_sources``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["OPERANDS", "SHAPING", "SHAPING_BY_OP", "ReadFloat", "SizeUse", "takes_as_size"]

# Arguments where a number is an operand, not a size (``length_uses`` leaves them to ``axis_lengths``).
OPERANDS = frozenset(
    {"input", "other", "exponent", "alpha", "beta", "value", "fill_value", "scalar", "min", "max", "scale", "data",
     "weight", "eps", "p"}
)  # fmt: skip
# More arguments where a float is a scalar of the computation: slopes, bounds, rates, norms.
_SCALARS = OPERANDS | frozenset(
    {"dropout_p", "negative_slope", "lambd", "threshold", "min_val", "max_val", "lower", "upper", "momentum",
     "norm_type", "max_norm", "nan", "posinf", "neginf", "tau", "margin", "label_smoothing", "rtol", "atol"}
)  # fmt: skip
# Arguments that shape an op's result wherever they appear; no rule follows a literal there.
SHAPING = frozenset(
    {"scale_factor", "scale_factors", "kernel_size", "stride", "padding", "dilation", "output_ratio", "output_padding"}
)  # fmt: skip
_RESAMPLE = (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
_ADAPTIVE = (
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d,
)  # fmt: skip
SHAPING_BY_OP: dict[Hashable, frozenset[str]] = {
    **{op: frozenset({"size"}) for op in _RESAMPLE},
    **{op: frozenset({"output_size"}) for op in _ADAPTIVE},
    torch.arange: frozenset({"start", "end", "step"}),
}


def takes_as_size(op: Hashable, arg: str, number: Any) -> bool | None:
    """Does ``op`` take ``number`` (an int or a float) passed as argument ``arg`` as a size?
    True: a size (the group pins); False: a value (zero-invariance lost); None: an int the
    rules judge (a shape, an index)."""
    from .tensor_data import DATA_OPS  # tensor_data -> size_values -> this module

    try:
        by_op, data = SHAPING_BY_OP.get(op, frozenset()), op in DATA_OPS
    except TypeError:  # an unhashable op: nothing is known of it
        by_op, data = frozenset(), False
    if arg in SHAPING or arg in by_op:
        return True
    if data:  # ``torch.scalar_tensor(n / 4)``: the number is the tensor's data
        return False
    if isinstance(number, float):
        return arg not in _SCALARS
    return None


@dataclass(frozen=True)
class SizeUse:
    """How an op took a number made from a layer size as a size, in words: ``argument
    scale_factor of node interpolate`` (torch.fx: the node; torch.export: the function)."""

    how: str

    def __str__(self) -> str:
        return self.how


class ReadFloat(float):
    """A float argument of a node that the model's code made from size attributes (``sites``,
    each (layer path, attribute)): classified by the argument it is (``takes_as_size``)."""

    sites: frozenset[tuple[str, str]]

    def __new__(cls, value: float, sites: frozenset[tuple[str, str]]) -> ReadFloat:
        obj = float.__new__(cls, value)
        obj.sites = sites
        return obj

    def __getnewargs__(self) -> tuple[float, frozenset[tuple[str, str]]]:  # copies and pickles keep the sites
        return float(self), self.sites
