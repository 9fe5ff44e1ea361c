"""Output shapes on meta without running kernels: the shape pass's shortcuts for common layers
and broadcasting arithmetic (their meta kernels run Python reference code, ~0.1-0.4 ms each)."""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TraceError
from .ops_layers import SAME_SHAPE_MODULES
from .rules import inherits_forward

__all__ = ["broadcast_only", "broadcast_shape", "shape_only"]

# Layers whose output has their input's shape: no need to run them, even on meta.
_SAME_SHAPE = (*SAME_SHAPE_MODULES, nn.modules.batchnorm._BatchNorm)


# Arithmetic whose result is just the broadcast of its operands: meta kernels for these run
# through Python reference implementations (slow); the shape and dtype are all we need.
_BROADCAST_OPS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, "add", "sub", "mul"}
_BROADCAST_INPLACE = {operator.iadd, operator.isub, operator.imul, "add_", "sub_", "mul_"}


def broadcast_only(target: Any, args: Any, kwargs: Any) -> Tensor | None:
    """The result of a broadcasting add/sub/mul on meta tensors, without running it (or None)."""
    try:
        kind = "out" if target in _BROADCAST_OPS else "inplace" if target in _BROADCAST_INPLACE else None
    except TypeError:  # unhashable target
        return None
    if kind is None or kwargs or len(args) != 2 or not isinstance(args[0], Tensor):
        return None
    a, b = args
    if not isinstance(b, (Tensor, int, float)) or isinstance(b, bool):
        return None
    shape = broadcast_shape(a.shape, b.shape) if isinstance(b, Tensor) else a.shape
    if kind == "inplace":
        return a if shape == a.shape else None
    return torch.empty(shape, dtype=torch.result_type(a, b), device=_META_DEVICE)


def broadcast_shape(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for two shapes (which costs ~30 us a call)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def shape_only(mod: nn.Module, x: Tensor, target: str) -> Tensor | None:
    """The output of common layers from shapes alone, checking what the layer would check."""
    kind = _shape_kind(type(mod))
    if kind == "conv":
        return _conv_shape(mod, x, target)  # type: ignore[arg-type]
    if kind == "linear":
        if x.shape[-1:] != mod.weight.shape[1:]:
            raise TraceError(
                f"shape propagation failed at layer {target}: expected {mod.weight.shape[1]} features, got input {tuple(x.shape)}"
            )
        return _meta_empty((*x.shape[:-1], mod.weight.shape[0]), x)
    if kind == "layer_norm" and mod.weight is not None:
        width = tuple(mod.weight.shape)
        if tuple(x.shape[-len(width) :]) != width:
            raise TraceError(
                f"shape propagation failed at layer {target}: normalised shape {width} does not fit input {tuple(x.shape)}"
            )
        return _meta_empty(x.shape, x)
    if kind == "adaptive_pool" and not getattr(mod, "return_indices", False):
        return _adaptive_pool_shape(mod, x)
    if kind == "same":
        n = getattr(mod, "num_features", None)
        if n is not None and (x.ndim < 2 or x.shape[1] != n):
            raise _layer_error(target, f"expected {n} channels, got input {tuple(x.shape)}")
        return _meta_empty(x.shape, x)
    return None


@cache
def _shape_kind(cls: type) -> str | None:
    """Which shape shortcut a layer class takes: it runs that layer's ``forward`` unchanged."""
    if any(inherits_forward(cls, c) for c in _PLAIN_CONVS):
        return "conv"
    if inherits_forward(cls, nn.Linear):
        return "linear"
    if inherits_forward(cls, nn.LayerNorm):
        return "layer_norm"
    if any(inherits_forward(cls, c) for c in _ADAPTIVE_POOLS):
        return "adaptive_pool"
    return "same" if any(inherits_forward(cls, k) for k in _SAME_SHAPE) else None


def _meta_empty(shape: tuple[int, ...] | torch.Size, like: Tensor) -> Tensor:
    """A meta tensor of this shape and ``like``'s dtype (``empty_like`` on meta costs ~50x more)."""
    return torch.empty(shape, dtype=like.dtype, device=_META_DEVICE)


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_META_DEVICE = torch.device("meta")
_ADAPTIVE_POOLS = {
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}  # fmt: skip


def _conv_shape(mod: nn.modules.conv._ConvNd, x: Tensor, target: str) -> Tensor:
    """A convolution's output from its hyperparameters, with the checks the layer makes."""
    k = len(mod.kernel_size)
    if x.ndim not in (k + 1, k + 2) or x.shape[-k - 1] != mod.in_channels:
        raise _layer_error(target, f"expected {mod.in_channels} input channels, got input {tuple(x.shape)}")
    spatial = []
    for i, n in enumerate(x.shape[-k:]):
        span = mod.dilation[i] * (mod.kernel_size[i] - 1) + 1
        if mod.padding == "same":
            spatial.append(n)
            continue
        pad = 0 if mod.padding == "valid" else 2 * mod.padding[i]  # type: ignore[index]
        if n + pad < span:
            raise _layer_error(target, f"input {tuple(x.shape)} is smaller than the kernel")
        spatial.append((n + pad - span) // mod.stride[i] + 1)
    return _meta_empty((*x.shape[: -k - 1], mod.out_channels, *spatial), x)


def _adaptive_pool_shape(mod: nn.Module, x: Tensor) -> Tensor | None:
    """An adaptive pool's output, its ``output_size``; None for inputs the layer may refuse and
    sizes left to the input (``None``), which then run on meta (that kernel costs ~0.4 ms)."""
    k = next(k for c, k in _ADAPTIVE_POOLS.items() if inherits_forward(type(mod), c))
    size = mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size,) * k
    if x.ndim not in (k + 1, k + 2) or len(size) != k or 0 in x.shape or None in size:
        return None
    return _meta_empty((*x.shape[:-k], *size), x)


def _layer_error(target: str, detail: str) -> TraceError:
    return TraceError(f"shape propagation failed at layer {target}: {detail}")
