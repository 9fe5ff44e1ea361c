"""ATen operators (graphs from ``torch.export``) in the spelling rules are written for.

``aten.linear.default`` becomes ``F.linear``, ``aten.view.default`` ``torch.Tensor.view``,
``aten.add_.Tensor`` ``torch.add`` in place: the overload's package name is looked up in
``torch.nn.functional``, ``torch``, ``torch._C._nn`` and ``torch.Tensor``, in that order, after a short table of
names that differ. Arguments are bound against the overload's own schema, so a rule reads
``ctx.arg("dim")`` whichever graph the node came from. Ops without a torch-level name keep
their overload packet (``torch.ops.aten.slice``) as their canonical op.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NO_EFFECT_OPS", "OP_ALIASES", "aten_op", "is_aten"]

# Spellings of one op that torch exposes under several names.
OP_ALIASES: dict[Any, Any] = {
    torch.concat: torch.cat, torch.concatenate: torch.cat, torch.swapaxes: torch.transpose,
    torch.swapdims: torch.transpose, torch.subtract: torch.sub, torch.multiply: torch.mul,
    torch.divide: torch.div, torch.true_divide: torch.div, torch.clip: torch.clamp, torch.absolute: torch.abs,
    torch.negative: torch.neg, torch.nn.functional.sigmoid: torch.sigmoid, torch.nn.functional.tanh: torch.tanh,
    torch.greater: torch.gt, torch.less: torch.lt, torch.greater_equal: torch.ge, torch.less_equal: torch.le,
    torch.not_equal: torch.ne, torch.arctan2: torch.atan2, torch.fix: torch.trunc, torch.arcsin: torch.asin,
    torch.arccos: torch.acos, torch.arctan: torch.atan, torch.arcsinh: torch.asinh, torch.arccosh: torch.acosh,
    torch.arctanh: torch.atanh, torch.special.psi: torch.digamma, torch.special.digamma: torch.digamma,
    torch.special.gammaln: torch.lgamma, torch.special.erfc: torch.erfc, torch.special.erfinv: torch.erfinv,
    torch.special.logit: torch.logit, torch.special.i0: torch.i0, torch.special.sinc: torch.sinc,
    torch.special.log1p: torch.log1p, torch.special.round: torch.round, torch.special.xlogy: torch.xlogy,
    torch.special.logsumexp: torch.logsumexp,
    torch.narrow_copy: torch.narrow, torch.special.softmax: torch.softmax, torch.special.log_softmax: torch.log_softmax,
    torch._softmax: torch.softmax, torch._log_softmax: torch.log_softmax, torch.linalg.matmul: torch.matmul,
    torch.row_stack: torch.vstack, torch.ravel: torch.flatten, torch.layer_norm: F.layer_norm, torch.group_norm: F.group_norm,
    torch.batch_norm: F.batch_norm, torch.instance_norm: F.instance_norm, torch._convolution: torch.convolution,
    Tensor.nelement: torch.numel, Tensor.ndimension: Tensor.dim,
}  # fmt: skip
# ATen names of ops torch keeps in a submodule: ``linalg_vector_norm`` is ``torch.linalg.vector_norm``.
_SUBMODULES = {"linalg_": torch.linalg, "special_": torch.special, "fft_": torch.fft}

_ATEN_NAMES: dict[str, Hashable] = {
    "_to_copy": Tensor.to, "alias": torch.clone, "lift_fresh_copy": torch.clone, "sym_size": Tensor.size,
    "sym_numel": Tensor.numel, "__and__": operator.and_, "__or__": operator.or_, "__xor__": operator.xor,
    "split_with_sizes": torch.split, "view_copy": Tensor.view, "_unsafe_view": Tensor.view, "numpy_T": Tensor.T,
    "mT": Tensor.mT, "mH": Tensor.mH, "matrix_H": Tensor.mH, "fill": torch.fill_, "zero": torch.zero_, "copy": Tensor.copy_,
}  # fmt: skip
# Checks that export records in the graph; they compute nothing.
NO_EFFECT_OPS = ("_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range_for_size")


def is_aten(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload)


@cache
def aten_op(target: torch._ops.OpOverload | torch._ops.OpOverloadPacket) -> tuple[Hashable, bool]:
    """(canonical op, in place?) of an ATen overload (or of its packet, ``torch.ops.aten.add``)."""
    packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
    name = packet.__name__
    inplace = name.endswith("_") and not name.startswith("_") and not name.endswith("__")
    base = name[:-1] if inplace else name
    if base in _ATEN_NAMES:
        return _ATEN_NAMES[base], inplace
    for prefix, module in _SUBMODULES.items():
        fn = getattr(module, base.removeprefix(prefix), None) if base.startswith(prefix) else None
        if callable(fn):
            return OP_ALIASES.get(fn, fn), inplace
    for namespace in (F, torch, torch._C._nn):  # _nn: upsample_nearest2d and kin, what F.interpolate calls
        fn: Callable[..., Any] | None = getattr(namespace, base, None)
        if callable(fn) and not isinstance(fn, type):
            return OP_ALIASES.get(fn, fn), inplace
    method = getattr(Tensor, base, None)
    return (method if method is not None else packet), inplace
