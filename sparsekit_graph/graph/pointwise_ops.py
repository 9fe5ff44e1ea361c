"""The elementwise torch functions: each output entry is made of the operands' entries at
its position (broadcast from the right). ``ops_tensor.pointwise`` links their axes;
``masked_values`` computes them on a masked channel."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

__all__ = ["POINTWISE_FUNCTIONS"]

POINTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg, operator.pos,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.pow, operator.ipow, operator.abs, operator.mod,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.pow, torch.sigmoid, torch.tanh, torch.relu, torch.clamp, torch.clamp_min, torch.clamp_max, torch.where, torch.maximum,
    torch.minimum, torch.erf, torch.sin, torch.cos, torch.square, torch.reciprocal, torch.sign, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.masked_fill, torch.log1p, torch.expm1, torch.exp2, torch.floor, torch.ceil, torch.round,
    torch.trunc, torch.frac, torch.fmod, torch.remainder, torch.nan_to_num, torch.sinh, torch.cosh, torch.atan,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.celu, F.mish,
    F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.logsigmoid,
    F.feature_alpha_dropout, torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout,
    F.softsign, F.relu_, F.threshold, F.tanhshrink, F.softshrink, F.hardshrink, F.rrelu, F.leaky_relu_,
    F.elu_, F.hardtanh_, F.rrelu_, torch.special.expit, torch.special.erf, torch.special.exp2, torch.special.expm1,
    torch.rsub, torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or,
    torch.logical_not, torch.logical_xor, torch.bitwise_and, torch.bitwise_or, torch.bitwise_not, torch.bitwise_xor,
    operator.and_, operator.or_, operator.xor, operator.invert, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, torch.isnan, torch.isinf, torch.isfinite,
    torch.log2, torch.log10, torch.erfc, torch.erfinv, torch.sinc, torch.logit, torch.sgn, torch.signbit,
    torch.rad2deg, torch.deg2rad, torch.asin, torch.acos, torch.tan, torch.asinh, torch.acosh, torch.atanh,
    torch.digamma, torch.lgamma, torch.i0, torch.positive, torch.fmax, torch.fmin, torch.hypot, torch.atan2,
    torch.copysign, torch.logaddexp, torch.logaddexp2, torch.xlogy, torch.floor_divide, torch.heaviside,
    torch.nextafter, torch.ldexp, torch.float_power, torch.isclose, torch.special.i1, torch.special.i0e,
    torch.special.i1e, torch.special.ndtr, torch.special.ndtri, torch.special.log_ndtr, torch.special.erfcx,
    torch.special.entr, torch.special.xlog1py, torch.selu, torch.celu, torch.real, torch.imag,
]  # fmt: skip
