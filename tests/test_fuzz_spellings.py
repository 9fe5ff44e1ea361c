# ruff: noqa: E501, B017  (tables of spellings read best one per line)
"""A fuzzer of spellings, not only of architectures (hypothesis).

``spelled_nets`` draws a small random CNN (+ MLP head) as a list of op descriptors and, for each
op, one of several equivalent spellings: positional vs keyword arguments, numpy aliases
(``axis=``, ``keepdims=``, ``x=``), method vs function vs module, in-place variants, parameters
used through views, and ops without a rule (which must pin). Two properties:

1. Same architecture and weights, two spelling vectors: the same outputs (the fuzzer checks
   itself) and the same plan (sizes, flags and members of every group).
2. Any spelling: ``skg.plan`` passes the DESIGN.md oracle (``check_oracle``).

Spellings known to give a different plan are kept out of property 1's strategy (property 2 draws
every spelling); each root cause is an explicit case in ``test_known_divergent_spelling``, a
strict xfail until fixed, then listed in ``_FIXED``. Ops whose result never reaches the output
are not run (fx cannot tell a dead ``a + b`` from ``a += b``: ``test_dead_add_operand_order``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel, check_oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import sparsekit_graph as skg

# -- ops and their spellings ----------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One op of the net; ``var`` and ``arg`` are kind-specific (activation name, pad amounts...)."""

    kind: str
    src: int
    other: int = -1
    out: int = 0
    k: int = 0
    var: str = ""
    arg: tuple = ()


class _C:
    """What a spelling sees: the input(s), the op's modules, and whether ``h`` may be mutated."""

    def __init__(self, net: SpellNet, i: int, ts: list[Tensor]) -> None:
        op = net.ops[i]
        self.op, self.h = op, ts[op.src]
        self.o = ts[op.other] if op.other >= 0 else None
        self.m = net.layers[str(i)] if str(i) in net.layers else None
        self.aux = net.aux[str(i)] if str(i) in net.aux else None
        self._mutable = net.mutable[i]
        self.nd = net.ranks[op.src]  # known statically: ``h.dim()`` is a Proxy under torch.fx

    def mut(self) -> Tensor:
        """``h`` itself where an in-place op cannot change anything else, else a copy."""
        return self.h if self._mutable else self.h.clone()


Spelling = tuple[str, Callable[[_C], Tensor]]


def _iadd(t: Tensor, o: Tensor) -> Tensor:
    t += o
    return t


def _imul(t: Tensor, s: float) -> Tensor:
    t *= s
    return t


def _unpack2(parts):
    a, b = parts
    return a, b


ACT_PURE: dict[str, list[Spelling]] = {
    "relu": [
        ("h.relu()", lambda c: c.h.relu()),
        ("torch.relu(h)", lambda c: torch.relu(c.h)),
        ("F.relu(h)", lambda c: F.relu(c.h)),
        ("F.relu(input=h)", lambda c: F.relu(input=c.h)),
        ("torch.relu(x=h)", lambda c: torch.relu(x=c.h)),
        ("nn.ReLU()", lambda c: c.aux["relu"](c.h)),
    ],
    "gelu": [
        ("F.gelu(h)", lambda c: F.gelu(c.h)),
        ("nn.GELU()", lambda c: c.aux["gelu"](c.h)),
        ("F.gelu(input=h)", lambda c: F.gelu(input=c.h)),
        ("F.gelu(h, approximate='none')", lambda c: F.gelu(c.h, approximate="none")),
    ],
    "silu": [
        ("F.silu(h)", lambda c: F.silu(c.h)),
        ("nn.SiLU()", lambda c: c.aux["silu"](c.h)),
        ("F.silu(input=h)", lambda c: F.silu(input=c.h)),
    ],
    "tanh": [
        ("torch.tanh(h)", lambda c: torch.tanh(c.h)),
        ("h.tanh()", lambda c: c.h.tanh()),
        ("F.tanh(h)", lambda c: F.tanh(c.h)),
        ("nn.Tanh()", lambda c: c.aux["tanh"](c.h)),
        ("torch.tanh(input=h)", lambda c: torch.tanh(input=c.h)),
    ],
    "sigmoid": [
        ("torch.sigmoid(h)", lambda c: torch.sigmoid(c.h)),
        ("h.sigmoid()", lambda c: c.h.sigmoid()),
        ("F.sigmoid(h)", lambda c: F.sigmoid(c.h)),
        ("nn.Sigmoid()", lambda c: c.aux["sigmoid"](c.h)),
        ("torch.sigmoid(input=h)", lambda c: torch.sigmoid(input=c.h)),
        ("torch.special.expit(h)", lambda c: torch.special.expit(c.h)),
    ],
    "hardswish": [
        ("F.hardswish(h)", lambda c: F.hardswish(c.h)),
        ("nn.Hardswish()", lambda c: c.aux["hardswish"](c.h)),
        ("F.hardswish(input=h)", lambda c: F.hardswish(input=c.h)),
    ],
    "leaky": [
        ("F.leaky_relu(h, 0.1)", lambda c: F.leaky_relu(c.h, 0.1)),
        ("F.leaky_relu(h, negative_slope=0.1)", lambda c: F.leaky_relu(c.h, negative_slope=0.1)),
        ("nn.LeakyReLU(0.1)", lambda c: c.aux["leaky"](c.h)),
        ("F.leaky_relu(input=h, negative_slope=0.1)", lambda c: F.leaky_relu(input=c.h, negative_slope=0.1)),
    ],
    "identity": [
        ("h", lambda c: c.h),
        ("nn.Identity()", lambda c: c.aux["identity"](c.h)),
    ],
}
ACT_INPLACE: dict[str, list[Spelling]] = {
    "relu": [
        ("h.relu_()", lambda c: c.mut().relu_()),
        ("F.relu(h, inplace=True)", lambda c: F.relu(c.mut(), inplace=True)),
        ("torch.relu_(h)", lambda c: torch.relu_(c.mut())),
        ("F.relu_(h)", lambda c: F.relu_(c.mut())),
        ("nn.ReLU(inplace=True)", lambda c: c.aux["relu_"](c.mut())),
    ],
    "gelu": [],
    "silu": [
        ("F.silu(h, inplace=True)", lambda c: F.silu(c.mut(), inplace=True)),
        ("nn.SiLU(inplace=True)", lambda c: c.aux["silu_"](c.mut())),
    ],
    "tanh": [("h.tanh_()", lambda c: c.mut().tanh_()), ("torch.tanh_(h)", lambda c: torch.tanh_(c.mut()))],
    "sigmoid": [("h.sigmoid_()", lambda c: c.mut().sigmoid_()), ("torch.sigmoid_(h)", lambda c: torch.sigmoid_(c.mut()))],
    "hardswish": [
        ("F.hardswish(h, inplace=True)", lambda c: F.hardswish(c.mut(), inplace=True)),
        ("nn.Hardswish(inplace=True)", lambda c: c.aux["hardswish_"](c.mut())),
    ],
    "leaky": [
        ("F.leaky_relu(h, 0.1, inplace=True)", lambda c: F.leaky_relu(c.mut(), 0.1, inplace=True)),
        ("F.leaky_relu_(h, 0.1)", lambda c: F.leaky_relu_(c.mut(), 0.1)),
        ("nn.LeakyReLU(0.1, inplace=True)", lambda c: c.aux["leaky_"](c.mut())),
    ],
}
ACTS = ["relu", "gelu", "silu", "tanh", "sigmoid", "hardswish", "leaky"]


def _aux_acts() -> dict[str, nn.Module]:
    return {
        "relu": nn.ReLU(), "relu_": nn.ReLU(inplace=True), "gelu": nn.GELU(), "silu": nn.SiLU(),
        "silu_": nn.SiLU(inplace=True), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "hardswish": nn.Hardswish(),
        "hardswish_": nn.Hardswish(inplace=True), "leaky": nn.LeakyReLU(0.1), "leaky_": nn.LeakyReLU(0.1, inplace=True),
        "identity": nn.Identity(),
    }  # fmt: skip


def _conv_padding(c: _C) -> int:
    return c.m.padding


SPELL: dict[str, list[Spelling]] = {
    "conv": [
        ("m(h)", lambda c: c.m(c.h)),
        (
            "F.conv2d(h, w, b, padding=p, groups=g)",
            lambda c: F.conv2d(c.h, c.m.weight, c.m.bias, padding=c.m.padding, groups=c.m.groups),
        ),
        (
            "F.conv2d(input=, weight=, bias=, stride=1, ...)",
            lambda c: F.conv2d(
                input=c.h, weight=c.m.weight, bias=c.m.bias, stride=1, padding=c.m.padding, dilation=1, groups=c.m.groups
            ),
        ),
        ("m._conv_forward(h, w, b)", lambda c: c.m._conv_forward(c.h, c.m.weight, c.m.bias)),
        ("F.conv2d(h, w.detach(), ...)", lambda c: F.conv2d(c.h, c.m.weight.detach(), c.m.bias, 1, c.m.padding, 1, c.m.groups)),
        (
            "F.conv2d(h, w.transpose(0,1).transpose(0,1), ...)",
            lambda c: F.conv2d(c.h, c.m.weight.transpose(0, 1).transpose(0, 1), c.m.bias, padding=c.m.padding, groups=c.m.groups),
        ),
        ("torch.conv2d(h, w, b, 1, p, 1, g)", lambda c: torch.conv2d(c.h, c.m.weight, c.m.bias, 1, c.m.padding, 1, c.m.groups)),
        (
            "aten.convolution(h, w, b, s, p, d, False, [0, 0], g)",
            lambda c: torch.ops.aten.convolution(
                c.h, c.m.weight, c.m.bias, [1, 1], list(c.m.padding), [1, 1], False, [0, 0], c.m.groups
            ),
        ),
    ],
    "bn": [
        ("m(h)", lambda c: c.m(c.h)),
        (
            "F.batch_norm(h, rm, rv, w, b, training, 0.1, eps)",
            lambda c: F.batch_norm(c.h, c.m.running_mean, c.m.running_var, c.m.weight, c.m.bias, c.m.training, 0.1, c.m.eps),
        ),
        (
            "F.batch_norm(input=..., keywords)",
            lambda c: F.batch_norm(
                input=c.h,
                running_mean=c.m.running_mean,
                running_var=c.m.running_var,
                weight=c.m.weight,
                bias=c.m.bias,
                training=c.m.training,
                momentum=0.1,
                eps=c.m.eps,
            ),  # fmt: skip
        ),
        (
            "torch.batch_norm(h, w, b, rm, rv, training, 0.1, eps, False)",
            lambda c: torch.batch_norm(
                c.h, c.m.weight, c.m.bias, c.m.running_mean, c.m.running_var, c.m.training, 0.1, c.m.eps, False
            ),
        ),
    ],
    "scale": [
        ("h * 2", lambda c: c.h * 2),
        ("2 * h", lambda c: 2 * c.h),
        ("h.mul(2)", lambda c: c.h.mul(2)),
        ("torch.mul(h, 2)", lambda c: torch.mul(c.h, 2)),
        ("torch.mul(input=h, other=2)", lambda c: torch.mul(input=c.h, other=2)),
        ("torch.multiply(h, 2)", lambda c: torch.multiply(c.h, 2)),
        ("torch.mul(x1=h, x2=2)", lambda c: torch.mul(x1=c.h, x2=2)),
        ("h / 0.5", lambda c: c.h / 0.5),
        ("h.div(0.5)", lambda c: c.h.div(0.5)),
        ("torch.true_divide(h, 0.5)", lambda c: torch.true_divide(c.h, 0.5)),
        ("h.mul_(2)", lambda c: c.mut().mul_(2)),
        ("h *= 2", lambda c: _imul(c.mut(), 2)),
        ("h.div_(0.5)", lambda c: c.mut().div_(0.5)),
    ],
    "add": [
        ("a + b", lambda c: c.h + c.o),
        ("b + a", lambda c: c.o + c.h),
        ("torch.add(a, b)", lambda c: torch.add(c.h, c.o)),
        ("a.add(b)", lambda c: c.h.add(c.o)),
        ("torch.add(input=a, other=b)", lambda c: torch.add(input=c.h, other=c.o)),
        ("torch.add(x=a, other=b)", lambda c: torch.add(x=c.h, other=c.o)),
        ("torch.add(a, b, alpha=1)", lambda c: torch.add(c.h, c.o, alpha=1)),
        ("a.add(other=b)", lambda c: c.h.add(other=c.o)),
        ("a.add_(b)", lambda c: c.mut().add_(c.o)),
        ("a += b", lambda c: _iadd(c.mut(), c.o)),
    ],
    "cat": [
        ("torch.cat([a, b], 1)", lambda c: torch.cat([c.h, c.o], 1)),
        ("torch.cat([a, b], dim=1)", lambda c: torch.cat([c.h, c.o], dim=1)),
        ("torch.cat((a, b), axis=1)", lambda c: torch.cat((c.h, c.o), axis=1)),
        ("torch.concat([a, b], dim=1)", lambda c: torch.concat([c.h, c.o], dim=1)),
        ("torch.concatenate([a, b], axis=1)", lambda c: torch.concatenate([c.h, c.o], axis=1)),
        ("torch.cat(tensors=[a, b], dim=1)", lambda c: torch.cat(tensors=[c.h, c.o], dim=1)),
        ("torch.cat([a, b], dim=1-nd)", lambda c: torch.cat([c.h, c.o], dim=1 - c.nd)),
        ("torch.hstack([a, b])", lambda c: torch.hstack([c.h, c.o])),
        ("torch.column_stack([a, b])", lambda c: torch.column_stack([c.h, c.o])),
    ],
    "chunk": [
        ("h.chunk(2, 1)[k]", lambda c: c.h.chunk(2, 1)[c.op.k]),
        ("torch.chunk(h, 2, 1)[k]", lambda c: torch.chunk(c.h, 2, 1)[c.op.k]),
        ("h.chunk(chunks=2, dim=1)[k]", lambda c: c.h.chunk(chunks=2, dim=1)[c.op.k]),
        ("torch.chunk(input=h, chunks=2, axis=1)[k]", lambda c: torch.chunk(input=c.h, chunks=2, axis=1)[c.op.k]),
        ("h.chunk(2, dim=1-nd)[k]", lambda c: c.h.chunk(2, dim=1 - c.nd)[c.op.k]),
        ("a, b = h.chunk(2, 1)", lambda c: _unpack2(c.h.chunk(2, 1))[c.op.k]),
        ("h.tensor_split(2, dim=1)[k]", lambda c: c.h.tensor_split(2, dim=1)[c.op.k]),
        ("h.split(h.size(1) // 2, 1)[k]", lambda c: c.h.split(c.h.size(1) // 2, 1)[c.op.k]),
    ],
    "split": [  # literal sizes (a, b): the channel axis is pinned whatever the spelling
        ("torch.split(h, [a, b], 1)[k]", lambda c: torch.split(c.h, list(c.op.arg), 1)[c.op.k]),
        ("h.split([a, b], dim=1)[k]", lambda c: c.h.split(list(c.op.arg), dim=1)[c.op.k]),
        ("h.split_with_sizes([a, b], 1)[k]", lambda c: c.h.split_with_sizes(list(c.op.arg), 1)[c.op.k]),
        (
            "torch.split(tensor=h, split_size_or_sections=[a, b], dim=1)[k]",
            lambda c: torch.split(tensor=c.h, split_size_or_sections=list(c.op.arg), dim=1)[c.op.k],
        ),
        ("h.split(split_size=[a, b], dim=1)[k]", lambda c: c.h.split(split_size=list(c.op.arg), dim=1)[c.op.k]),
        ("h.tensor_split([a], dim=1)[k]", lambda c: c.h.tensor_split([c.op.arg[0]], dim=1)[c.op.k]),
        ("h[:, :a] / h[:, a:]", lambda c: c.h[:, : c.op.arg[0]] if c.op.k == 0 else c.h[:, c.op.arg[0] :]),
        ("h.narrow(1, start, n)", lambda c: c.h.narrow(1, c.op.k * c.op.arg[0], c.op.arg[c.op.k])),
    ],
    "perm": [
        ("h.permute(0,2,3,1).permute(0,3,1,2)", lambda c: c.h.permute(0, 2, 3, 1).permute(0, 3, 1, 2)),
        (
            "h.permute(dims=(0,2,3,1)).permute(dims=[0,3,1,2])",
            lambda c: c.h.permute(dims=(0, 2, 3, 1)).permute(dims=[0, 3, 1, 2]),
        ),
        ("torch.permute(h, (0,2,3,1)).permute(*(0,3,1,2))", lambda c: torch.permute(c.h, (0, 2, 3, 1)).permute(*(0, 3, 1, 2))),
        (
            "torch.permute(input=h, dims=...)",
            lambda c: torch.permute(input=torch.permute(input=c.h, dims=(0, 2, 3, 1)), dims=(0, 3, 1, 2)),
        ),
        ("permute + contiguous", lambda c: c.h.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).contiguous()),
        ("h.permute(0,-1,-3,-2)...", lambda c: c.h.permute(0, -1, -3, -2).permute(0, 2, 3, 1)),
        ("h.movedim(1, -1).movedim(-1, 1)", lambda c: c.h.movedim(1, -1).movedim(-1, 1)),
        ("torch.moveaxis(h, 1, 3).permute(0,3,1,2)", lambda c: torch.moveaxis(c.h, 1, 3).permute(0, 3, 1, 2)),
    ],
    "transp": [
        ("h.transpose(1,3).transpose(1,3)", lambda c: c.h.transpose(1, 3).transpose(1, 3)),
        ("torch.transpose(h,1,3).transpose(3,1)", lambda c: torch.transpose(c.h, 1, 3).transpose(3, 1)),
        ("h.swapaxes(1,2).swapaxes(1,2)", lambda c: c.h.swapaxes(1, 2).swapaxes(1, 2)),
        ("torch.swapdims(h,1,-1).transpose(-1,1)", lambda c: torch.swapdims(c.h, 1, -1).transpose(-1, 1)),
        (
            "torch.swapaxes(h, axis0=1, axis1=3)...",
            lambda c: torch.swapaxes(torch.swapaxes(c.h, axis0=1, axis1=3), axis0=3, axis1=1),
        ),
        ("h.transpose(dim0=1, dim1=3)...", lambda c: c.h.transpose(dim0=1, dim1=3).transpose(dim0=1, dim1=3)),
        ("h.mT.mT", lambda c: c.h.mT.mT),
        ("h.transpose(1,2).mT.permute(0,3,1,2)", lambda c: c.h.transpose(1, 2).mT.permute(0, 3, 1, 2)),
    ],
    "view": [
        (
            "h.contiguous().view(B, C, -1).view(h.shape)",
            lambda c: c.h.contiguous().view(c.h.size(0), c.h.size(1), -1).view(c.h.shape),
        ),
        (
            "h.reshape(shape=(B, C, -1)).reshape(h.shape)",
            lambda c: c.h.reshape(shape=(c.h.shape[0], c.h.shape[1], -1)).reshape(c.h.shape),
        ),
        ("h.flatten(2).view_as(h)", lambda c: c.h.flatten(2).view_as(c.h)),
        (
            "h.flatten(start_dim=2).unflatten(2, (H, W))",
            lambda c: c.h.flatten(start_dim=2).unflatten(2, (c.h.size(2), c.h.size(3))),
        ),
        (
            "torch.reshape(h, (B, -1, H*W)).reshape(h.size())",
            lambda c: torch.reshape(c.h, (c.h.size(0), -1, c.h.size(2) * c.h.size(3))).reshape(c.h.size()),
        ),
        (
            "h.contiguous().view(size=(B, C, -1)).reshape_as(h)",
            lambda c: c.h.contiguous().view(size=(c.h.size(0), c.h.size(1), -1)).reshape_as(c.h),
        ),
        (
            "torch.reshape(input=h, shape=...)",
            lambda c: torch.reshape(input=torch.reshape(input=c.h, shape=(c.h.size(0), c.h.size(1), -1)), shape=c.h.shape),
        ),
        (
            "h.contiguous().view(-1, C, H*W).view(B, C, H, W)",
            lambda c: (
                c.h.contiguous()
                .view(-1, c.h.size(1), c.h.size(2) * c.h.size(3))
                .view(c.h.size(0), c.h.size(1), c.h.size(2), c.h.size(3))
            ),
        ),
        (
            "h.contiguous().view(B, C, -1).view(*h.shape)",
            lambda c: c.h.contiguous().view(c.h.size(0), c.h.size(1), -1).view(*c.h.shape),
        ),
    ],
    "ident": [
        ("h", lambda c: c.h),
        ("h.detach()", lambda c: c.h.detach()),
        ("h.data", lambda c: c.h.data),
        ("h.clone()", lambda c: c.h.clone()),
        ("torch.clone(h)", lambda c: torch.clone(c.h)),
        ("h.contiguous()", lambda c: c.h.contiguous()),
        ("h[:, :]", lambda c: c.h[:, :]),
        ("h[...]", lambda c: c.h[...]),
        ("h.unsqueeze(0).squeeze(0)", lambda c: c.h.unsqueeze(0).squeeze(0)),
        ("h.to(torch.float32)", lambda c: c.h.to(torch.float32)),
        ("h.float()", lambda c: c.h.float()),
        ("h.detach().clone()", lambda c: c.h.detach().clone()),
        ("h.type_as(h)", lambda c: c.h.type_as(c.h)),
        ("h.data + h.detach() - h", lambda c: c.h.data + c.h.detach() - c.h),
    ],
    "t2": [
        ("h.T.T", lambda c: c.h.T.T),
        ("h.t().t()", lambda c: c.h.t().t()),
        ("h.mT.mT", lambda c: c.h.mT.mT),
        ("torch.t(h).T", lambda c: torch.t(c.h).T),
        ("h.transpose(0,1).transpose(1,0)", lambda c: c.h.transpose(0, 1).transpose(1, 0)),
        ("h.permute(1,0).permute(1,0)", lambda c: c.h.permute(1, 0).permute(1, 0)),
        ("h.mH.mH", lambda c: c.h.mH.mH),
        ("h.swapaxes(0,1).mT", lambda c: c.h.swapaxes(0, 1).mT),
        ("h.adjoint().adjoint()", lambda c: c.h.adjoint().adjoint()),
    ],
    "pad_sp": [
        ("F.pad(h, p)", lambda c: F.pad(c.h, c.op.arg)),
        ("F.pad(h, list(p), mode='constant', value=0.0)", lambda c: F.pad(c.h, list(c.op.arg), mode="constant", value=0.0)),
        ("F.pad(input=h, pad=p)", lambda c: F.pad(input=c.h, pad=c.op.arg)),
        ("nn.ZeroPad2d(p)", lambda c: c.aux["zero2d"](c.h)),
        ("nn.ConstantPad2d(p, 0.0)", lambda c: c.aux["const2d"](c.h)),
        ("F.pad(h, p + (0, 0))", lambda c: F.pad(c.h, c.op.arg + (0, 0))),
        ("F.pad(h, p, 'constant', 0)", lambda c: F.pad(c.h, c.op.arg, "constant", 0)),
        ("torch.constant_pad_nd(h, p)", lambda c: torch.constant_pad_nd(c.h, c.op.arg)),
    ],
    "pad_ch": [
        ("F.pad(h, (0,0,0,0,p0,p1))", lambda c: F.pad(c.h, (0, 0, 0, 0) + c.op.arg)),
        ("F.pad(h, [...], 'constant', 0.0)", lambda c: F.pad(c.h, [0, 0, 0, 0, *c.op.arg], "constant", 0.0)),
        ("F.pad(input=h, pad=..., value=0)", lambda c: F.pad(input=c.h, pad=(0, 0, 0, 0) + c.op.arg, value=0)),
        ("nn.ConstantPad3d((0,0,0,0,p0,p1), 0.0)", lambda c: c.aux["const3d"](c.h)),
        ("nn.ZeroPad3d((0,0,0,0,p0,p1))", lambda c: c.aux["zero3d"](c.h)),
        ("F.pad(h.transpose(1,3), (p0,p1)).transpose(1,3)", lambda c: F.pad(c.h.transpose(1, 3), c.op.arg).transpose(1, 3)),
        (
            "F.pad(h.permute(0,2,3,1), (p0,p1)).permute(0,3,1,2)",
            lambda c: F.pad(c.h.permute(0, 2, 3, 1), c.op.arg).permute(0, 3, 1, 2),
        ),
        ("torch.constant_pad_nd(h, (0,0,0,0,p0,p1))", lambda c: torch.constant_pad_nd(c.h, (0, 0, 0, 0) + c.op.arg)),
    ],
    "norule": [],  # filled below, per variant
    "pool": [],
    "cl_linear": [],
    "fc": [],
    "gate_sp": [],
    "gate_ch": [],
    "l2norm": [],
    "act": [],
    "flatten": [
        ("torch.flatten(h, 1)", lambda c: torch.flatten(c.h, 1)),
        ("h.flatten(1)", lambda c: c.h.flatten(1)),
        ("h.flatten(start_dim=1)", lambda c: c.h.flatten(start_dim=1)),
        ("torch.flatten(input=h, start_dim=1, end_dim=-1)", lambda c: torch.flatten(input=c.h, start_dim=1, end_dim=-1)),
        ("h.contiguous().view(h.size(0), -1)", lambda c: c.h.contiguous().view(c.h.size(0), -1)),
        ("h.reshape(h.shape[0], -1)", lambda c: c.h.reshape(c.h.shape[0], -1)),
        ("nn.Flatten()(h)", lambda c: c.aux["flatten"](c.h)),
        ("h.contiguous().view(-1, C*H*W)", lambda c: c.h.contiguous().view(-1, c.h.size(1) * c.h.size(2) * c.h.size(3))),
    ],
    "gpool": [
        ("F.adaptive_avg_pool2d(h, 1).flatten(1)", lambda c: F.adaptive_avg_pool2d(c.h, 1).flatten(1)),
        ("h.mean((2, 3))", lambda c: c.h.mean((2, 3))),
        ("h.mean(dim=[-1, -2])", lambda c: c.h.mean(dim=[-1, -2])),
        ("torch.mean(h, axis=(2, 3))", lambda c: torch.mean(c.h, axis=(2, 3))),
        ("nn.AdaptiveAvgPool2d(1)(h).view(h.size(0), -1)", lambda c: c.aux["gap"](c.h).view(c.h.size(0), -1)),
        ("h.flatten(2).mean(-1)", lambda c: c.h.flatten(2).mean(-1)),
        ("h.mean(3).mean(2)", lambda c: c.h.mean(3).mean(2)),
        ("h.mean((2,3), keepdim=True).squeeze(-1).squeeze(-1)", lambda c: c.h.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1)),
        ("F.adaptive_avg_pool2d(h, (1, 1))[:, :, 0, 0]", lambda c: F.adaptive_avg_pool2d(c.h, (1, 1))[:, :, 0, 0]),
        ("h.sum((2, 3)) / (H * W)", lambda c: c.h.sum((2, 3)) / (c.h.size(2) * c.h.size(3))),
    ],
}

_ACT_ALL = {a: ACT_PURE[a] + ACT_INPLACE[a] for a in ACTS}

_SPATIAL_MEAN: list[Spelling] = [
    ("h.mean((2,3), keepdim=True)", lambda c: c.h.mean((2, 3), keepdim=True)),
    ("h.mean(axis=(2,3), keepdims=True)", lambda c: c.h.mean(axis=(2, 3), keepdims=True)),
    ("torch.mean(input=h, dim=(2,3), keepdim=True)", lambda c: torch.mean(input=c.h, dim=(2, 3), keepdim=True)),
    ("F.adaptive_avg_pool2d(h, 1)", lambda c: F.adaptive_avg_pool2d(c.h, 1)),
    ("nn.AdaptiveAvgPool2d(1)(h)", lambda c: c.aux["gap"](c.h)),
    ("F.adaptive_avg_pool2d(h, (1, 1))", lambda c: F.adaptive_avg_pool2d(c.h, (1, 1))),
    ("h.mean(-1, keepdim=True).mean(-2, keepdim=True)", lambda c: c.h.mean(-1, keepdim=True).mean(-2, keepdim=True)),
    ("h.sum((2,3), keepdim=True) / (H*W)", lambda c: c.h.sum((2, 3), keepdim=True) / (c.h.size(2) * c.h.size(3))),
    ("h.flatten(2).mean(2)[:, :, None, None]", lambda c: c.h.flatten(2).mean(2)[:, :, None, None]),
    ("h.mean(dim=[-2, -1], keepdim=True)", lambda c: c.h.mean(dim=[-2, -1], keepdim=True)),
]

_SUM1: list[Callable[[Tensor, int], Tensor]] = [
    lambda g, nd: g.sum(1, keepdim=True),
    lambda g, nd: torch.sum(g, dim=1, keepdim=True),
    lambda g, nd: g.sum(axis=1, keepdims=True),
    lambda g, nd: torch.sum(input=g, dim=(1,), keepdim=True),
    lambda g, nd: g.sum(dim=[1], keepdim=True),
    lambda g, nd: g.sum(1 - nd, True),
    lambda g, nd: torch.sum(x=g, axis=1, keepdims=True),
    lambda g, nd: g.sum(1 - g.dim(), True),
]
_SUM1_NAMES = [
    "g.sum(1, keepdim=True)", "torch.sum(g, dim=1, keepdim=True)", "g.sum(axis=1, keepdims=True)",
    "torch.sum(input=g, dim=(1,), keepdim=True)", "g.sum(dim=[1], keepdim=True)", "g.sum(1-nd, True)",
    "torch.sum(x=g, axis=1, keepdims=True)", "g.sum(1 - g.dim(), True)",
]  # fmt: skip
_MEAN1: list[Callable[[Tensor, int], Tensor]] = [
    lambda g, nd: g.mean(1, keepdim=True),
    lambda g, nd: g.mean(axis=1, keepdims=True),
    lambda g, nd: torch.mean(g, 1, True),
    lambda g, nd: g.sum(1, keepdim=True) / g.size(1),
    lambda g, nd: g.sum(1, keepdim=True) / g.shape[1],
    lambda g, nd: torch.sum(g, dim=1, keepdim=True) / g.size(dim=1),
    lambda g, nd: g.mean(dim=[1], keepdim=True),
    lambda g, nd: g.mean(1 - nd, True),
]
_MEAN1_NAMES = [
    "g.mean(1, keepdim=True)", "g.mean(axis=1, keepdims=True)", "torch.mean(g, 1, True)",
    "g.sum(1, keepdim=True) / g.size(1)", "g.sum(1, keepdim=True) / g.shape[1]",
    "torch.sum(g, dim=1, keepdim=True) / g.size(dim=1)", "g.mean(dim=[1], keepdim=True)", "g.mean(1-nd, True)",
]  # fmt: skip

_NORM1: list[Spelling] = [
    ("h.norm(dim=1, keepdim=True)", lambda c: c.h.norm(dim=1, keepdim=True)),
    ("torch.norm(h, p=2, dim=1, keepdim=True)", lambda c: torch.norm(c.h, p=2, dim=1, keepdim=True)),
    ("torch.linalg.vector_norm(h, dim=1, keepdim=True)", lambda c: torch.linalg.vector_norm(c.h, dim=1, keepdim=True)),
    ("torch.linalg.norm(h, dim=1, keepdim=True)", lambda c: torch.linalg.norm(c.h, dim=1, keepdim=True)),
    ("h.norm(2, 1, True)", lambda c: c.h.norm(2, 1, True)),
    ("h.square().sum(1, keepdim=True).sqrt()", lambda c: c.h.square().sum(1, keepdim=True).sqrt()),
    ("(h * h).sum(1, keepdim=True).sqrt()", lambda c: (c.h * c.h).sum(1, keepdim=True).sqrt()),
    ("h.pow(2).sum(1, keepdim=True).sqrt()", lambda c: c.h.pow(2).sum(1, keepdim=True).sqrt()),
    ("(h ** 2).sum(axis=1, keepdims=True).sqrt()", lambda c: (c.h**2).sum(axis=1, keepdims=True).sqrt()),
    (
        "torch.sqrt(torch.sum(torch.square(h), dim=1, keepdim=True))",
        lambda c: torch.sqrt(torch.sum(torch.square(c.h), dim=1, keepdim=True)),
    ),
    ("h.abs().pow(2).sum(1, keepdim=True).sqrt()", lambda c: c.h.abs().pow(2).sum(1, keepdim=True).sqrt()),
]
SPELL["l2norm"] = [(f"h / torch.clamp({n}, min=1e-3)", lambda c, f=f: c.h / torch.clamp(f(c), min=1e-3)) for n, f in _NORM1] + [
    ("F.normalize(h, dim=1, eps=1e-3)", lambda c: F.normalize(c.h, dim=1, eps=1e-3)),
    ("F.normalize(h, p=2.0, dim=1, eps=1e-3)", lambda c: F.normalize(c.h, p=2.0, dim=1, eps=1e-3)),
    ("F.normalize(input=h, dim=1-nd, eps=1e-3)", lambda c: F.normalize(input=c.h, dim=1 - c.nd, eps=1e-3)),
]
SPELL["gate_sp"] = [(f"h * torch.sigmoid({n})", lambda c, f=f: c.h * torch.sigmoid(f(c))) for n, f in _SPATIAL_MEAN]

_NORULE = {
    "cumsum": [
        ("torch.cumsum(h, d)", lambda c: torch.cumsum(c.h, c.op.k)),
        ("h.cumsum(d)", lambda c: c.h.cumsum(c.op.k)),
        ("h.cumsum(dim=d)", lambda c: c.h.cumsum(dim=c.op.k)),
        ("torch.cumsum(input=h, dim=d)", lambda c: torch.cumsum(input=c.h, dim=c.op.k)),
        ("torch.cumsum(h, axis=d)", lambda c: torch.cumsum(c.h, axis=c.op.k)),
    ],
    "flip": [
        ("torch.flip(h, [d])", lambda c: torch.flip(c.h, [c.op.k])),
        ("h.flip(d)", lambda c: c.h.flip(c.op.k)),
        ("h.flip(dims=(d,))", lambda c: c.h.flip(dims=(c.op.k,))),
        ("torch.flip(input=h, dims=[d])", lambda c: torch.flip(input=c.h, dims=[c.op.k])),
    ],
    "roll": [
        ("torch.roll(h, 1, d)", lambda c: torch.roll(c.h, 1, c.op.k)),
        ("h.roll(1, d)", lambda c: c.h.roll(1, c.op.k)),
        ("h.roll(shifts=1, dims=d)", lambda c: c.h.roll(shifts=1, dims=c.op.k)),
        ("torch.roll(h, shifts=(1,), dims=(d,))", lambda c: torch.roll(c.h, shifts=(1,), dims=(c.op.k,))),
    ],
}
_POOL = {
    "max": [
        ("F.max_pool2d(h, 2)", lambda c: F.max_pool2d(c.h, 2)),
        ("nn.MaxPool2d(2)(h)", lambda c: c.aux["maxpool"](c.h)),
        ("F.max_pool2d(h, kernel_size=2, stride=2)", lambda c: F.max_pool2d(c.h, kernel_size=2, stride=2)),
        ("F.max_pool2d(input=h, kernel_size=(2, 2))", lambda c: F.max_pool2d(input=c.h, kernel_size=(2, 2))),
        ("F.max_pool2d(h, 2, return_indices=False)", lambda c: F.max_pool2d(c.h, 2, return_indices=False)),
        ("torch.max_pool2d(h, 2)", lambda c: torch.max_pool2d(c.h, 2)),
    ],
    "avg": [
        ("F.avg_pool2d(h, 2)", lambda c: F.avg_pool2d(c.h, 2)),
        ("nn.AvgPool2d(2)(h)", lambda c: c.aux["avgpool"](c.h)),
        ("F.avg_pool2d(h, kernel_size=2, stride=2)", lambda c: F.avg_pool2d(c.h, kernel_size=2, stride=2)),
        ("F.avg_pool2d(input=h, kernel_size=(2, 2))", lambda c: F.avg_pool2d(input=c.h, kernel_size=(2, 2))),
        ("F.adaptive_avg_pool2d(h, H // 2)", lambda c: F.adaptive_avg_pool2d(c.h, c.h.size(2) // 2)),
    ],
}
_LINEAR: list[tuple[str, Callable[[Tensor, nn.Linear], Tensor]]] = [
    ("m(h)", lambda h, m: m(h)),
    ("F.linear(h, w, b)", lambda h, m: F.linear(h, m.weight, m.bias)),
    ("F.linear(input=h, weight=w, bias=b)", lambda h, m: F.linear(input=h, weight=m.weight, bias=m.bias)),
    ("F.linear(h, w.T.T, b)", lambda h, m: F.linear(h, m.weight.T.T, m.bias)),
    ("F.linear(h, w.t().t(), b)", lambda h, m: F.linear(h, m.weight.t().t(), m.bias)),
    ("F.linear(h, w.mT.mT, b)", lambda h, m: F.linear(h, m.weight.mT.mT, m.bias)),
    ("F.linear(h, w.detach(), b.data)", lambda h, m: F.linear(h, m.weight.detach(), m.bias.data)),
    ("h @ w.T + b", lambda h, m: h @ m.weight.T + m.bias),
    ("torch.matmul(h, w.t()) + b", lambda h, m: torch.matmul(h, m.weight.t()) + m.bias),
]
_LINEAR_2D = [("torch.addmm(b, h, w.t())", lambda h, m: torch.addmm(m.bias, h, m.weight.t()))]
_TO_LAST: list[tuple[str, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = [
    ("permute(0,2,3,1)", lambda h: h.permute(0, 2, 3, 1), lambda h: h.permute(0, 3, 1, 2)),
    ("permute(dims=...)", lambda h: h.permute(dims=(0, 2, 3, 1)), lambda h: torch.permute(h, (0, 3, 1, 2))),
    ("transpose(1,3)", lambda h: h.transpose(1, 3), lambda h: h.transpose(1, 3)),
    ("movedim(1,-1)", lambda h: h.movedim(1, -1), lambda h: h.movedim(-1, 1)),
]


def _spellings(op: Op) -> list[Spelling]:
    """Every spelling of ``op`` (index 0 is the plainest; hypothesis shrinks towards it)."""
    if op.kind == "act":
        return _ACT_ALL[op.var]
    if op.kind == "norule":
        return _NORULE[op.var]
    if op.kind == "pool":
        return _POOL[op.var]
    if op.kind in ("fc", "cl_linear"):
        lins = _LINEAR + (_LINEAR_2D if op.kind == "fc" else [])
        if op.kind == "fc":
            return [(n, lambda c, f=f: f(c.h, c.m)) for n, f in lins]
        return [
            (f"{n} on {pn}", lambda c, f=f, to=to, back=back: back(f(to(c.h), c.m))) for pn, to, back in _TO_LAST for n, f in lins
        ]
    if op.kind == "gate_ch":
        f_name, red = op.var.split(":")
        reds, red_names = (_SUM1, _SUM1_NAMES) if red == "sum" else (_MEAN1, _MEAN1_NAMES)
        return [
            (f"h * {rn} of g = {fn}", lambda c, f=f, r=r: c.h * r(f(c), c.nd))
            for fn, f in ACT_PURE[f_name]
            for rn, r in zip(red_names, reds)
        ]
    return SPELL[op.kind]


# -- the net -------------------------------------------------------------------------------

# Kinds whose output is a new tensor (an in-place op on it changes nothing else once it is dead).
_FRESH = {
    "conv",
    "bn",
    "act",
    "scale",
    "add",
    "cat",
    "pad_sp",
    "pad_ch",
    "gate_sp",
    "gate_ch",
    "l2norm",
    "norule",
    "pool",
    "cl_linear",
    "fc",
}


class SpellNet(nn.Module):
    """Applies ``ops`` in order to a growing list of tensors, each in its chosen spelling."""

    def __init__(self, ops: tuple[Op, ...], spells: tuple[int, ...], in_ch: int = 3) -> None:
        super().__init__()
        self.ops = ops
        self.spell_fns = [_spellings(op)[s % len(_spellings(op))][1] for op, s in zip(ops, spells)]
        self.layers = nn.ModuleDict()
        self.aux = nn.ModuleDict()
        # Ops whose result never reaches the output are skipped (their layers still exist): fx
        # cannot tell a dead ``a + b`` from ``a += b``, see ``test_dead_add_operand_order``.
        self.live = {len(ops)}
        for i in reversed(range(len(ops))):
            if i + 1 in self.live:
                self.live |= {ops[i].src, ops[i].other} - {-1}
        chans = [in_ch]
        uses = [0] * (len(ops) + 1)
        for i, op in enumerate(ops):
            c = chans[op.src]
            if i + 1 in self.live:
                uses[op.src] += 1
                if op.other >= 0:
                    uses[op.other] += 1
            if op.kind == "conv":
                self.layers[str(i)] = nn.Conv2d(c, op.out, op.k, padding=op.k // 2, groups=op.arg[0], bias=op.arg[1])
            elif op.kind == "bn":
                self.layers[str(i)] = nn.BatchNorm2d(c)
            elif op.kind in ("fc", "cl_linear"):
                self.layers[str(i)] = nn.Linear(c, op.out)
            aux = _aux_acts()
            if op.kind == "pad_sp":
                aux.update(zero2d=nn.ZeroPad2d(op.arg), const2d=nn.ConstantPad2d(op.arg, 0.0))
            elif op.kind == "pad_ch":
                aux.update(const3d=nn.ConstantPad3d((0, 0, 0, 0) + op.arg, 0.0), zero3d=nn.ZeroPad3d((0, 0, 0, 0) + op.arg))
            aux.update(gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), maxpool=nn.MaxPool2d(2), avgpool=nn.AvgPool2d(2))
            self.aux[str(i)] = nn.ModuleDict(aux)
            chans.append(op.out)
        uses[-1] += 1  # the output
        self.ranks = [4]
        for op in ops:
            self.ranks.append(2 if op.kind in ("gpool", "flatten") else self.ranks[op.src])
        fresh = [False] + [op.kind in _FRESH for op in ops]
        self.mutable = [op.src > 0 and fresh[op.src] and uses[op.src] == 1 for op in ops]

    def forward(self, x: Tensor) -> Tensor:
        ts = [x]
        for i, fn in enumerate(self.spell_fns):
            ts.append(fn(_C(self, i, ts)) if i + 1 in self.live else None)
        return ts[-1]


@dataclass(frozen=True)
class NetSpec:
    """A random architecture, printable (hypothesis shows it when a net fails)."""

    ops: tuple[Op, ...]
    size: int = 6

    def build(self, spells: tuple[int, ...]) -> tuple[SpellNet, Tensor]:
        torch.manual_seed(0)
        model = SpellNet(self.ops, spells)
        x = torch.randn(2, 3, self.size, self.size, generator=torch.Generator().manual_seed(1))
        return model, x

    def describe(self, spells: tuple[int, ...]) -> list[str]:
        return [f"{op.kind}[{op.var}]: {_spellings(op)[s % len(_spellings(op))][0]}" for op, s in zip(self.ops, spells)]


# -- strategies ----------------------------------------------------------------------------

_KINDS4 = [
    "conv", "conv", "dwconv", "bn", "act", "act", "scale", "add", "cat", "chunk", "split", "perm", "transp", "view",
    "ident", "pad_sp", "pad_ch", "gate_sp", "gate_ch", "l2norm", "norule", "pool", "cl_linear",
]  # fmt: skip
_KINDS2 = ["fc", "fc", "act", "scale", "add", "cat", "chunk", "ident", "t2", "gate_ch", "l2norm", "norule"]
_WIDTHS = [4, 6, 8]


@st.composite
def architectures(draw: st.DrawFn, max_conv_ops: int = 8, max_mlp_ops: int = 3) -> NetSpec:
    """conv stem -> random 4-D ops -> flatten or global pool -> random 2-D ops -> Linear(., 5)."""
    size = 6
    shapes: list[tuple[int, int]] = [(3, size)]  # (channels, spatial); spatial 0 = a 2-D tensor
    ops: list[Op] = []

    def add(op: Op, c: int, s: int) -> None:
        ops.append(Op(op.kind, op.src, op.other, c, op.k, op.var, op.arg))
        shapes.append((c, s))

    out = draw(st.sampled_from(_WIDTHS))
    add(Op("conv", 0, k=draw(st.sampled_from([1, 3])), arg=(1, True)), out, size)
    for stage, kinds, n in (("4d", _KINDS4, max_conv_ops), ("2d", _KINDS2, max_mlp_ops)):
        if stage == "2d":
            c, s = shapes[-1]
            head = draw(st.sampled_from(["gpool", "flatten"])) if c * s * s <= 128 else "gpool"
            add(Op(head, len(shapes) - 1), c if head == "gpool" else c * s * s, 0)
        for _ in range(draw(st.integers(0 if stage == "2d" else 1, n))):
            cands = [i for i, sh in enumerate(shapes) if i > 0 and (sh[1] == 0) == (stage == "2d")]
            src = draw(st.sampled_from(cands[-4:]))
            c, s = shapes[src]
            same = [i for i in cands if shapes[i] == (c, s) and i != src]
            same_s = [i for i in cands if shapes[i][1] == s and shapes[i][0] + c <= 24]
            kind = draw(st.sampled_from(kinds))
            if kind == "conv":
                add(
                    Op("conv", src, k=draw(st.sampled_from([1, 3])), arg=(1, draw(st.booleans()))),
                    draw(st.sampled_from(_WIDTHS)),
                    s,
                )
            elif kind == "dwconv":
                add(Op("conv", src, k=3, arg=(c, False)), c * draw(st.sampled_from([1, 2])) if c <= 8 else c, s)
            elif kind == "bn":
                add(Op("bn", src), c, s)
            elif kind == "act":
                add(Op("act", src, var=draw(st.sampled_from(ACTS))), c, s)
            elif kind == "add" and same:
                add(Op("add", src, other=draw(st.sampled_from(same))), c, s)
            elif kind == "cat" and same_s:
                o = draw(st.sampled_from(same_s))
                add(Op("cat", src, other=o), c + shapes[o][0], s)
            elif kind == "chunk" and c % 2 == 0 and c >= 4:
                add(Op("chunk", src, k=draw(st.integers(0, 1))), c // 2, s)
            elif kind == "split" and c >= 2:  # 1-channel parts too: see ``one-channel-pad-transposed``
                a = draw(st.integers(1, c - 1))
                k = draw(st.integers(0, 1))
                add(Op("split", src, k=k, arg=(a, c - a)), (a, c - a)[k], s)
            elif kind in ("perm", "transp", "view", "ident", "t2", "scale", "gate_sp", "l2norm"):
                add(Op(kind, src), c, s)
            elif kind == "pad_sp" and s <= 6:
                p = draw(st.sampled_from([(1, 1, 1, 1), (0, 2, 2, 0), (2, 0, 1, 1), (0, 1, 1, 0)]))  # H and W grow alike
                add(Op("pad_sp", src, arg=p), c, s + p[0] + p[1])
            elif kind == "pad_ch" and c <= 16:
                p = draw(st.sampled_from([(1, 1), (0, 2), (2, 0), (1, 0)]))
                add(Op("pad_ch", src, arg=p), c + sum(p), s)
            elif kind == "gate_ch":
                f = draw(st.sampled_from(["identity", "relu", "sigmoid", "tanh", "gelu"]))
                add(Op("gate_ch", src, var=f + ":" + draw(st.sampled_from(["sum", "mean"]))), c, s)
            elif kind == "norule":
                d = 1 if s == 0 else draw(st.sampled_from([1, 2]))
                add(Op("norule", src, k=d, var=draw(st.sampled_from(sorted(_NORULE)))), c, s)
            elif kind == "pool" and s >= 2 and s % 2 == 0:  # F.adaptive_avg_pool2d(h, H // 2) differs on odd sizes
                add(Op("pool", src, var=draw(st.sampled_from(["max", "avg"]))), c, s // 2)
            elif kind in ("cl_linear", "fc"):
                add(Op(kind, src), draw(st.sampled_from(_WIDTHS)), s)
            else:
                add(Op("act", src, var="relu"), c, s)
    add(Op("fc", len(shapes) - 1), 5, 0)
    return NetSpec(tuple(ops))


def spellings_for(spec: NetSpec) -> st.SearchStrategy[tuple[int, ...]]:
    """One spelling index per op, among the spellings not known to diverge in this net."""
    return st.tuples(*[st.sampled_from(_allowed(op, _zero_sensitive(spec))) for op in spec.ops])


def _zero_sensitive(spec: NetSpec) -> bool:
    """The net sums or L2-normalises over channels: zero-invariance depends on the producers."""
    return any(op.kind == "l2norm" or (op.kind == "gate_ch" and op.var.endswith(":sum")) for op in spec.ops)


def _allowed(op: Op, zero_sensitive: bool) -> list[int]:
    bad = _DIVERGENT_PATTERNS + (_ZERO_WALK_PATTERNS if zero_sensitive else ())
    if op.kind == "conv" and op.arg[0] > 1:
        bad += _GROUPED_CALL_PATTERNS
    names = [n for n, _ in _spellings(op)]
    return [i for i, n in enumerate(names) if not any(b in n for b in bad)]


# Spellings known to give a plan other than the plainest spelling's (all conservative: more
# pinned or fewer zero-invariant groups, never a wrong one): kept out of property 1's strategy,
# each root cause a strict xfail in ``test_known_divergent_spelling``. Property 2 draws them all.
_DIVERGENT_PATTERNS: tuple[str, ...] = (
    "tensor_split(2", "h.split(h.size(1) // 2", "split_with_sizes", "h[:, :a]", "narrow", "*h.shape",
    # ``h * 2``: fx writes ``h * self.fc.out_features`` as a literal too, so a whole-number scale
    # equal to a layer's size costs that layer's zero-invariance; ``h / 0.5`` cannot be a size.
    "0.5",
)  # fmt: skip
# A grouped conv called through the layer's own ``_conv_forward``: torch's code reads
# ``self.groups`` unrecorded (``graph/size_reads.py`` records only the model's code), so the
# count is a literal of the call, kept, and channels are pruned by their position in each group
# (safe, coarser than the layer's plan). ``F.conv2d(..., groups=self.conv.groups)`` plans like the layer.
_GROUPED_CALL_PATTERNS: tuple[str, ...] = ("m._conv_forward",)
# ... and those that only lose zero-invariance where a channel sum / L2 norm follows them.
_ZERO_WALK_PATTERNS: tuple[str, ...] = (
    "a.add_(b)", "F.conv2d(", "m._conv_forward", "torch.conv2d(", "movedim", "moveaxis", "F.leaky_relu_(", "torch.addmm(",
    "F.normalize(",
)  # fmt: skip


# -- properties ----------------------------------------------------------------------------


def _key(plan: skg.Plan) -> list[tuple]:
    """Every group's size, flags and members (names aside), in a canonical order."""
    keys = []
    for g in plan.groups:
        members = tuple(
            (m.param, m.axis, m.start, m.stop, m.block, None if m.indices is None else tuple(m.indices)) for m in g.members
        )
        keys.append((g.size, g.prunable, g.zero_invariant, members))
    return sorted(keys, key=repr)


def _names(plan: skg.Plan) -> list[tuple]:
    return sorted((g.name, g.size, tuple((m.param, m.axis, m.start) for m in g.members)) for g in plan.groups)


def _same_plan(spec: NetSpec, s1: tuple[int, ...], s2: tuple[int, ...]) -> None:
    m1, x = spec.build(s1)
    m2, _ = spec.build(s2)
    m1.eval(), m2.eval()
    with torch.no_grad():
        y1, y2 = m1(x.clone()), m2(x.clone())
    assert_close_rel(y1, y2)  # the two spellings compute the same function (the fuzzer's own check)
    p1, p2 = skg.plan(m1, x), skg.plan(m2, x)
    k1, k2 = _key(p1), _key(p2)
    assert k1 == k2, "\n".join(
        ["plans differ", *spec.describe(s1), "vs", *spec.describe(s2), "only in 1:", *map(str, [k for k in k1 if k not in k2])]
        + ["only in 2:", *map(str, [k for k in k2 if k not in k1])]
    )
    assert _names(p1) == _names(p2), f"group names differ: {[g.name for g in p1.groups]} vs {[g.name for g in p2.groups]}"


def _oracle(spec: NetSpec, spells: tuple[int, ...]) -> None:
    model, x = spec.build(spells)
    try:
        check_oracle(model, x, Path(tempfile.mkdtemp()), min_drop=0.0, require=False)
    except skg.TraceError:
        with pytest.raises(Exception):  # acceptable only where torch.fx cannot trace the model either
            torch.fx.symbolic_trace(model)


@st.composite
def two_spellings(draw: st.DrawFn) -> tuple[NetSpec, tuple[int, ...], tuple[int, ...]]:
    spec = draw(architectures())
    return spec, draw(spellings_for(spec)), draw(spellings_for(spec))


@st.composite
def spelled_nets(draw: st.DrawFn) -> tuple[NetSpec, tuple[int, ...]]:
    """Any spelling, the divergent ones included: a conservative plan must still be exact."""
    spec = draw(architectures())
    return spec, draw(st.tuples(*[st.integers(0, len(_spellings(op)) - 1) for op in spec.ops]))


SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@settings(max_examples=40, **SETTINGS)
@given(two_spellings())
def test_two_spellings_give_one_plan(case) -> None:
    _same_plan(*case)


@settings(max_examples=40, **SETTINGS)
@given(spelled_nets())
def test_spelled_nets_pass_the_oracle(case) -> None:
    _oracle(*case)


@pytest.mark.slow
@settings(max_examples=1200, **SETTINGS)
@given(two_spellings())
def test_two_spellings_give_one_plan_sweep(case) -> None:
    _same_plan(*case)


@pytest.mark.slow
@settings(max_examples=1000, **SETTINGS)
@given(spelled_nets())
def test_spelled_nets_pass_the_oracle_sweep(case) -> None:
    _oracle(*case)


# -- known divergences, minimised ----------------------------------------------------------

_PRE = [Op("conv", 0, out=8, k=3, arg=(1, True)), Op("bn", 1, out=8), Op("act", 2, out=8, var="relu")]


def _four(op: Op, then: Op | None = None) -> tuple[Op, ...]:
    """conv-BN-ReLU -> ``op`` (index 3) [-> ``then``] -> global pool -> Linear."""
    ops = [*_PRE, op] + ([then] if then else [])
    c = ops[-1].out
    return (*ops, Op("gpool", len(ops), out=c), Op("fc", len(ops) + 1, out=5))


_MLP = [*_PRE, Op("gpool", 3, out=8), Op("fc", 4, out=6)]  # the Linear at index 4

# (id, ops, index of the op under test, substring of its spelling's name, why the plan differs)
_KNOWN = [
    (
        "conv-functional",
        _four(Op("conv", 3, out=6, k=3, arg=(1, True))),
        3,
        "F.conv2d(h, w, b",
        "kernel axes listed as pinned groups",
    ),
    ("float", _four(Op("ident", 3, out=8)), 3, "h.float()", "arguments of float could not be read: pinned"),
    (
        "dim-from-g.dim()",
        _four(Op("gate_ch", 3, out=8, var="relu:sum")),
        3,
        "1 - g.dim(), True) of g = h.relu()",
        "reduce rule: Node % int",
    ),
    ("l2-pow", _four(Op("l2norm", 3, out=8)), 3, "h.pow(2)", "pow not known to keep zeros: not zero-invariant"),
    ("l2-**2", _four(Op("l2norm", 3, out=8)), 3, "(h ** 2)", "pow not known to keep zeros: not zero-invariant"),
    ("tensor_split-2", _four(Op("chunk", 3, k=0, out=4)), 3, "tensor_split(2", "equal parts pinned like fixed sizes"),
    ("split-size//2", _four(Op("chunk", 3, k=1, out=4)), 3, "h.split(h.size(1) // 2", "equal parts pinned like fixed sizes"),
    (
        "split_with_sizes",
        _four(Op("split", 3, k=1, out=5, arg=(3, 5))),
        3,
        "split_with_sizes",
        "no rule: one pinned group, not 3+5",
    ),
    ("slice", _four(Op("split", 3, k=1, out=5, arg=(3, 5))), 3, "h[:, :a]", "slicing: one pinned group, not 3+5"),
    ("narrow", _four(Op("split", 3, k=1, out=5, arg=(3, 5))), 3, "narrow", "no rule: one pinned group, not 3+5"),
    ("expit", _four(Op("act", 3, out=8, var="sigmoid")), 3, "expit", "no rule for torch.special.expit"),
    ("leaky_relu_", _four(Op("act", 3, out=8, var="leaky")), 3, "F.leaky_relu_(", "no rule for F.leaky_relu_"),
    ("hstack", _four(Op("cat", 3, other=1, out=16)), 3, "torch.hstack", "no rule for torch.hstack"),
    ("movedim", _four(Op("perm", 3, out=8)), 3, "h.movedim", "no rule for movedim"),
    ("moveaxis", _four(Op("perm", 3, out=8)), 3, "torch.moveaxis", "no rule for moveaxis"),
    ("constant_pad_nd", _four(Op("pad_ch", 3, out=10, arg=(1, 1))), 3, "torch.constant_pad_nd", "no rule for constant_pad_nd"),
    ("torch.max_pool2d", _four(Op("pool", 3, out=8, var="max")), 3, "torch.max_pool2d", "no rule for torch.max_pool2d"),
    (
        "adjoint",
        (*_MLP, Op("act", 5, out=6, var="relu"), Op("t2", 6, out=6), Op("fc", 7, out=5)),
        6,
        "adjoint",
        "no rule for adjoint",
    ),
    (
        "view-*shape",
        _four(Op("view", 3, out=8)),
        3,
        "*h.shape",
        "TraceError: fx cannot unpack a Proxy (fixed: torch.export fallback)",
    ),
    (
        "F.linear-then-l2",
        (*_MLP, Op("l2norm", 5, out=6), Op("fc", 6, out=5)),
        4,
        "F.linear(h, w, b)",
        "zero walk stops at F.linear",
    ),
    ("matmul-then-l2", (*_MLP, Op("l2norm", 5, out=6), Op("fc", 6, out=5)), 4, "h @ w.T + b", "zero walk stops at matmul"),
    (
        "F.batch_norm-then-sum",
        (_PRE[0], Op("bn", 1, out=8), Op("gate_ch", 2, out=8, var="relu:sum"), Op("gpool", 3, out=8), Op("fc", 4, out=5)),
        1,
        "F.batch_norm(h",
        "zero walk stops at F.batch_norm",
    ),  # fmt: skip
    (
        "detach-then-sum",
        _four(Op("ident", 3, out=8), Op("gate_ch", 4, out=8, var="relu:sum")),
        3,
        "h.detach()",
        "h.detach() is torch.detach",
    ),
    (
        "getitem-then-sum",
        _four(Op("ident", 3, out=8), Op("gate_ch", 4, out=8, var="relu:sum")),
        3,
        "h[:, :]",
        "zero walk stops at getitem",
    ),
    (
        "unsqueeze-then-sum",
        _four(Op("ident", 3, out=8), Op("gate_ch", 4, out=8, var="relu:sum")),
        3,
        "unsqueeze(0).squeeze(0)",
        "zero walk stops at unsqueeze",
    ),  # fmt: skip
    (
        "pin-reason-order",
        (
            Op("conv", 0, out=4, k=1, arg=(1, True)),
            Op("conv", 1, out=4, k=1, arg=(1, False)),
            Op("split", 2, out=3, k=1, arg=(1, 3)),
            Op("gpool", 3, out=3),
            Op("norule", 4, out=3, k=1, var="cumsum"),
            Op("fc", 5, out=5),
        ),
        3,
        "h.mean((2, 3))",
        "pinned channels grouped by their first pin reason in node-name order",
    ),  # fmt: skip
    (
        "depthwise-functional",
        _four(Op("conv", 3, out=8, k=3, arg=(8, False))),
        3,
        "F.conv2d(h, w, b",
        "a group count read off the layer is a literal of the call: kept, channels by position",
    ),
    (
        "conv-weight-detach",
        _four(Op("conv", 3, out=6, k=3, arg=(1, True))),
        3,
        "F.conv2d(h, w.detach()",
        "kernel axes listed as groups",
    ),
    (
        "conv-weight-transpose",
        _four(Op("conv", 3, out=6, k=3, arg=(1, True))),
        3,
        "F.conv2d(h, w.transpose(0,1)",
        "kernel axes listed as groups",
    ),  # fmt: skip
    (
        "F.conv2d-then-sum",
        _four(Op("conv", 3, out=6, k=1, arg=(1, True)), Op("gate_ch", 4, out=6, var="relu:sum")),
        3,
        "F.conv2d(h, w, b",
        "zero walk stops at F.conv2d",
    ),  # fmt: skip
    (
        "movedim-then-sum",
        _four(Op("perm", 3, out=8), Op("gate_ch", 4, out=8, var="relu:sum")),
        3,
        "h.movedim",
        "zero walk stops at movedim",
    ),
    (
        "leaky_relu_-then-sum",
        (
            _PRE[0],
            Op("act", 1, out=8, var="leaky"),
            Op("gate_ch", 2, out=8, var="relu:sum"),
            Op("gpool", 3, out=8),
            Op("fc", 4, out=5),
        ),
        1,
        "F.leaky_relu_(",
        "zero walk stops at F.leaky_relu_",
    ),  # fmt: skip
    ("addmm-then-l2", (*_MLP, Op("l2norm", 5, out=6), Op("fc", 6, out=5)), 4, "torch.addmm", "zero walk stops at addmm"),
    (
        "normalize-then-sum",
        _four(Op("l2norm", 3, out=8), Op("gate_ch", 4, out=8, var="identity:sum")),
        3,
        "F.normalize(h, dim=1",
        "zero walk stops at F.normalize",
    ),  # fmt: skip
    (
        "one-channel-pad-transposed",
        (
            Op("conv", 0, out=4, k=1, arg=(1, True)),
            Op("split", 1, out=1, k=0, arg=(1, 3)),
            Op("conv", 2, out=1, k=3, arg=(1, False)),
            Op("pad_ch", 3, out=3, arg=(1, 1)),
            Op("gpool", 4, out=3),
            Op("fc", 5, out=5),
        ),
        3,
        "F.pad(h.transpose(1,3)",
        "a size-1 channel axis is not linked through a permutation: group lost",
    ),  # fmt: skip
    (
        "add_-then-sum",
        _four(Op("add", 3, other=1, out=8), Op("gate_ch", 4, out=8, var="relu:sum")),
        3,
        "a.add_(b)",
        "in-place add breaks zeros",
    ),
]


# Divergences found by this fuzzer and since fixed: they must now give one plan.
_FIXED = {
    "conv-functional", "float", "dim-from-g.dim()", "l2-pow", "l2-**2", "expit", "leaky_relu_", "hstack", "movedim", "moveaxis",
    "constant_pad_nd", "torch.max_pool2d", "adjoint", "F.linear-then-l2", "matmul-then-l2", "F.batch_norm-then-sum",
    "detach-then-sum", "getitem-then-sum", "unsqueeze-then-sum", "pin-reason-order", "view-*shape", "slice", "narrow",
    "add_-then-sum", "F.conv2d-then-sum", "movedim-then-sum", "leaky_relu_-then-sum", "addmm-then-l2", "normalize-then-sum",
    "tensor_split-2", "split-size//2", "split_with_sizes", "conv-weight-detach", "conv-weight-transpose",
    "one-channel-pad-transposed", "depthwise-functional",
}  # fmt: skip


@pytest.mark.parametrize(
    "ops, target, spelling",
    [
        pytest.param(
            ops,
            t,
            n,
            id=i,
            marks=pytest.mark.xfail(strict=True, reason=r, raises=skg.TraceError if "TraceError" in r else AssertionError)
            if i not in _FIXED
            else (),
        )
        for i, ops, t, n, r in _KNOWN
    ],  # fmt: skip
)
def test_known_divergent_spelling(ops: tuple[Op, ...], target: int, spelling: str) -> None:
    """The plainest spelling and ``spelling`` of op ``target`` give one plan (xfail: they do not)."""
    names = [n for n, _ in _spellings(ops[target])]
    index = next(i for i, n in enumerate(names) if spelling in n)
    spells = [0] * len(ops)
    spells[target] = index
    _same_plan(NetSpec(ops), (0,) * len(ops), tuple(spells))


@pytest.mark.parametrize("ops, target, spelling", [pytest.param(ops, t, n, id=i) for i, ops, t, n, _ in _KNOWN])
def test_known_divergent_spelling_is_still_exact(ops: tuple[Op, ...], target: int, spelling: str) -> None:
    """Each divergent spelling is conservative: the oracle holds (or fx cannot trace it at all)."""
    names = [n for n, _ in _spellings(ops[target])]
    spells = [0] * len(ops)
    spells[target] = next(i for i, n in enumerate(names) if spelling in n)
    _oracle(NetSpec(ops), tuple(spells))


class _DeadAdd(nn.Module):
    """An unused ``h + g`` vs ``g + h``: fx traces ``g += h`` as an unused ``operator.add``, so
    the planner takes any unused ``a + b`` for an in-place write into ``a``."""

    def __init__(self, swap: bool) -> None:
        super().__init__()
        self.conv, self.fc, self.swap = nn.Conv2d(3, 4, 1), nn.Linear(4, 5), swap

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        g = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        _ = g + h if self.swap else h + g  # dead
        g = g / torch.clamp(g.norm(dim=1, keepdim=True), min=1e-3)
        return self.fc(g.mean((2, 3)))


def test_dead_add_operand_order() -> None:
    """Fixed: an in-place add of a value that keeps zeros keeps them, whichever operand it writes."""
    x = torch.randn(2, 3, 6, 6)
    assert _key(skg.plan(_DeadAdd(False), x)) == _key(skg.plan(_DeadAdd(True), x))


class _ViewedWeight(nn.Module):
    """conv -> ReLU -> conv (weight reached through ``view``) -> Linear (weight through ``lview``)."""

    def __init__(self, view: Callable[[Tensor], Tensor], lview: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 5)
        self.view, self.lview = view, lview

    def forward(self, x: Tensor) -> Tensor:
        h = F.conv2d(torch.relu(self.a(x)), self.view(self.b.weight), self.b.bias, padding=1)
        return F.linear(torch.relu(h).mean((2, 3)), self.lview(self.fc.weight), self.fc.bias)


_WEIGHT_VIEWS = {
    "data": (lambda w: w.data, lambda w: w.data),
    "detach.contiguous": (lambda w: w.detach().contiguous(), lambda w: w.detach()),
    "permute-twice": (lambda w: w.permute(1, 0, 3, 2).permute(1, 0, 3, 2), lambda w: w.t().t()),
    "movedim-back": (lambda w: w.movedim(0, 3).movedim(3, 0), lambda w: w.T.T),
    "to-float": (lambda w: w.to(torch.float32), lambda w: w.mT.mT),
}


@pytest.mark.parametrize("views", list(_WEIGHT_VIEWS.values()), ids=list(_WEIGHT_VIEWS))
def test_a_weight_reached_through_views_plans_like_the_weight(views) -> None:
    """A parameter used through ``.data``/``.detach()``/transposes has the parameter's own axes:
    the conv's kernel axes stay out of the plan, exactly as when the weight is used directly."""
    x = torch.randn(2, 3, 6, 6)
    plain, viewed = _ViewedWeight(lambda w: w, lambda w: w), _ViewedWeight(*views)
    viewed.load_state_dict(plain.state_dict())
    p1, p2 = skg.plan(plain, x), skg.plan(viewed, x)
    assert _key(p1) == _key(p2)
    assert not [m for g in p2.groups for m in g.members if m.axis >= 2], "kernel axes listed as groups"
    check_oracle(viewed, x, Path(tempfile.mkdtemp()), min_drop=0.0, require=False)
