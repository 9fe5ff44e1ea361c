"""A fourth round of models written the ways strangers and big libraries write PyTorch, in areas
the other rounds leave out: LoRA / DoRA / weight standardisation written by hand, a Linear's
weight used as a 1x1 conv (and back), im2col convolutions, ViT / MAE patchify by ``unfold`` and
einsum, strided and indexed slice assignment, ``torch.nn.utils.prune`` masks, ``max_norm``
embeddings and spectral norms that write to the model in forward, losses and counts used as
values inside forward, edge-replicating pads of a channel axis, and spelling families (layer
scale, squeeze-excite) that must give one plan.

Each model: ``plan`` refuses with a ``SparseKitError``, or every group it marks prunable prunes
(uniform 0.5 and random keep counts) to a model that runs, zero-invariant groups pass the
masked-dense == pruned oracle, and the model is bitwise untouched. Each model also states the
outcome expected of its groups (``zi``: prunable and zero-invariant, ``prune``: prunable, ``pin``:
not prunable, ``refuse``: plan raises), so an over-pin fails as surely as a wrong plan.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as P
import torch.nn.utils.prune as tprune
from helpers import Body as StrangerBody
from helpers import assert_untouched, call, check_oracle, fingerprint, first_tensor
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.plan.ties import snap_tied

C = 8
X4 = (2, 3, 8, 8)
SEQ = (2, 5, 6)

Expect = dict[str, str]  # group name -> "zi" | "prune" | "pin" (or "zi|pin"); or {"*": "refuse" | "any"}


class Body(StrangerBody):
    """conv ``a`` (group ``a:out``, 8 channels) -> BN -> ReLU -> ``fn`` -> head ``b``."""

    example_shape = X4


def body(fn: Callable[..., Tensor], **extra: object) -> Callable[[], tuple[nn.Module, Tensor]]:
    return lambda: (Body(fn, **extra), torch.randn(*X4))  # type: ignore[arg-type]


def cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class MLP(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> head over (B, L, 6) tokens; ``fc1`` / ``fc2`` may be replaced."""

    def __init__(self, fc1: nn.Module | None = None, fc2: nn.Module | None = None) -> None:
        super().__init__()
        self.fc1 = fc1 if fc1 is not None else nn.Linear(6, 12)
        self.fc2 = fc2 if fc2 is not None else nn.Linear(12, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


# -- weights computed in forward ---------------------------------------------------------------


class LoRALinear(nn.Linear):
    """peft-style LoRA merged in forward: ``F.linear(x, W + B @ A * s, b)``."""

    def __init__(self, i: int, o: int, r: int = 3) -> None:
        super().__init__(i, o)
        self.lora_A, self.lora_B = nn.Parameter(torch.randn(r, i) * 0.3), nn.Parameter(torch.randn(o, r) * 0.3)
        self.scaling = 0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight + (self.lora_B @ self.lora_A) * self.scaling, self.bias)


class LoRABranch(nn.Module):
    """LoRA as a side branch: ``base(x) + up(down(dropout(x))) * s`` (loralib / peft unmerged)."""

    def __init__(self, i: int, o: int, r: int = 4) -> None:
        super().__init__()
        self.base, self.down, self.up = nn.Linear(i, o), nn.Linear(i, r, bias=False), nn.Linear(r, o, bias=False)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(self.drop(x))) * 0.5


class LoRAParam(nn.Module):
    """A ``parametrize`` LoRA: ``X + B @ A``."""

    def __init__(self, o: int, i: int, r: int = 3) -> None:
        super().__init__()
        self.A, self.B = nn.Parameter(torch.randn(r, i) * 0.3), nn.Parameter(torch.randn(o, r) * 0.3)

    def forward(self, X: Tensor) -> Tensor:
        return X + self.B @ self.A


def lora_parametrized() -> tuple[nn.Module, Tensor]:
    fc2 = nn.Linear(12, 10)
    P.register_parametrization(fc2, "weight", LoRAParam(10, 12))
    return MLP(fc2=fc2), torch.randn(*SEQ)


class DoRA(nn.Module):
    """DoRA: ``m * V / ||V||_row`` (an L2 norm over the input features, per output row)."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.v, self.m = nn.Parameter(torch.randn(o, i)), nn.Parameter(torch.rand(o, 1) + 0.5)
        self.bias = nn.Parameter(torch.zeros(o))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.m * self.v / self.v.norm(p=2, dim=1, keepdim=True), self.bias)


class WSConv(nn.Conv2d):
    """Weight standardisation by hand (BiT): mean and variance over each filter's fan-in."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), self.bias, self.stride, self.padding)


class WSNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.ws, self.b = nn.Conv2d(3, C, 3, padding=1), WSConv(C, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.ws(torch.relu(self.a(x)))))


class LinearAsConv(nn.Module):
    """A Linear layer's weight applied as a 1x1 conv on the feature map, and as a Linear on the pooled one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc, self.b = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 6), nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        y = F.conv2d(h, self.fc.weight[:, :, None, None], self.fc.bias)
        return self.b(torch.relu(y)) + self.fc(h.mean((2, 3)))[:, :4, None, None]


class ConvAsLinear(nn.Module):
    """A 1x1 conv's weight reused as a Linear on pooled features (``weight.flatten(1)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 6, 1), nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        pooled = F.linear(h.mean((2, 3)), self.c.weight.flatten(1), self.c.bias)
        return self.head(torch.relu(pooled) + self.c(h).amax((2, 3)))


class Im2Col(nn.Module):
    """A convolution written as ``W.view(O, -1) @ unfold(x)`` (im2col)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.w, self.b = nn.Conv2d(3, C, 3, padding=1), nn.Parameter(torch.randn(6, C, 3, 3) * 0.2), nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        B, _, H, W = h.shape
        cols = F.unfold(h, 3, padding=1)  # (B, C * 9, H * W)
        y = (self.w.view(self.w.shape[0], -1) @ cols).view(B, -1, H, W)
        return self.b(torch.relu(y))


class SoupConv(nn.Module):
    """Model-soup / EMA weights averaged in forward: ``stack([w1, w2]).mean(0)`` as a conv weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.w1, self.w2 = nn.Parameter(torch.randn(6, C, 3, 3) * 0.2), nn.Parameter(torch.randn(6, C, 3, 3) * 0.2)
        self.b = nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.stack([self.w1, self.w2]).mean(0)
        return self.b(torch.relu(F.conv2d(torch.relu(self.a(x)), w, padding=1)))


class BlockDiag(nn.Module):
    """A grouped Linear as ``F.linear(x, torch.block_diag(w1, w2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.w1, self.w2, self.head = (
            nn.Linear(6, 8),
            nn.Parameter(torch.randn(3, 4)),
            nn.Parameter(torch.randn(3, 4)),
            nn.Linear(6, 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(F.linear(torch.relu(self.fc1(x)), torch.block_diag(self.w1, self.w2))))


class ParamDict(nn.Module):
    """``nn.ParameterDict`` weights read by key and by attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.ParameterDict({"w1": nn.Parameter(torch.randn(12, 6) * 0.3), "b1": nn.Parameter(torch.zeros(12))})
        self.p["w2"] = nn.Parameter(torch.randn(4, 12) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(torch.relu(F.linear(x, self.p["w1"], self.p.b1)), self.p.w2)


class SharedSliced(nn.Module):
    """One weight used whole by one layer and sliced by another: ``F.linear(g, w[:, :6])``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(6, 6)
        self.w = nn.Parameter(torch.randn(5, 12) * 0.3)
        self.head = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        a = F.linear(torch.relu(self.fc1(x)), self.w)
        b = F.linear(torch.relu(self.fc2(x)), self.w[:, :6])
        return self.head(a + b)


# -- models that write to themselves in forward ----------------------------------------------


class MaxNormEmbed(nn.Module):
    """``nn.Embedding(max_norm=1)`` renormalises its weight rows in place at every lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, max_norm=1.0)
        with torch.no_grad():
            self.emb.weight.mul_(3.0)  # rows beyond the norm: every lookup would rewrite them
        self.fc, self.head = nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(self.emb(x))))


def spectral_train(new: bool) -> tuple[nn.Module, Tensor]:
    """A spectral-normalised conv in train mode: every forward steps its power iteration (buffers)."""
    sn = nn.utils.parametrizations.spectral_norm if new else nn.utils.spectral_norm
    model = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1), nn.ReLU(), sn(nn.Conv2d(C, 6, 3, padding=1)), nn.ReLU(), nn.Conv2d(6, 4, 1)
    )
    return model.train(), torch.randn(*X4)


def torch_pruned() -> tuple[nn.Module, Tensor]:
    """``torch.nn.utils.prune``: ``weight_orig`` + ``weight_mask`` and a pre-hook writing ``weight``."""
    model = nn.Sequential(cbr(3, C), nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1))
    tprune.ln_structured(model[1], "weight", amount=0.25, n=2, dim=0)
    tprune.l1_unstructured(model[3], "weight", amount=0.3)
    return model, torch.randn(*X4)


class BNTrainMomentumNone(nn.Module):
    """A model left in train mode whose BN keeps cumulative statistics (``momentum=None``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C, momentum=None), nn.ReLU())
        self.head = nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# -- layout -----------------------------------------------------------------------------------


class PatchifyUnfold(nn.Module):
    """ViT-from-scratch patches: ``x.unfold(2, p, p).unfold(3, p, p)`` -> (B, N, C * p * p) -> Linear."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        self.p, self.a, self.proj, self.head = p, nn.Conv2d(3, C, 3, padding=1), nn.Linear(C * p * p, 6), nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        B, Cc = h.shape[:2]
        t = h.unfold(2, self.p, self.p).unfold(3, self.p, self.p)  # (B, C, nh, nw, p, p)
        t = t.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, Cc * self.p * self.p)
        return self.head(torch.relu(self.proj(t)).mean(1))


class PatchifyMAE(nn.Module):
    """MAE's ``patchify``: ``einsum('nchpwq->nhwpqc')`` puts the channel innermost of each token."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        self.p, self.a, self.proj, self.head = p, nn.Conv2d(3, C, 3, padding=1), nn.Linear(C * p * p, 6), nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        p, n = self.p, h.shape[0]
        gh, gw = h.shape[2] // p, h.shape[3] // p
        t = h.reshape(n, h.shape[1], gh, p, gw, p)
        t = torch.einsum("nchpwq->nhwpqc", t).reshape(n, gh * gw, p * p * h.shape[1])
        return self.head(torch.relu(self.proj(t)).mean(1))


class UnpatchifyMAE(nn.Module):
    """MAE's ``unpatchify``: a Linear predicts (N, L, p * p * C), einsum back to an image, a conv reads it."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        self.p, self.pred, self.c = p, nn.Linear(6, p * p * 4), nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, 16, 6), a 4x4 grid of tokens
        p, n = self.p, x.shape[0]
        t = self.pred(x).reshape(n, 4, 4, p, p, 4)
        img = torch.einsum("nhwpqc->nchpwq", t).reshape(n, 4, 4 * p, 4 * p)
        return self.c(torch.relu(img))


class FlattenTokens(nn.Module):
    """``nn.Flatten(start_dim=2)`` + a transpose module -> LayerNorm over channels -> token MLP."""

    class Transpose(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.transpose(-1, -2)

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            cbr(3, C), nn.Flatten(start_dim=2), self.Transpose(), nn.LayerNorm(C), nn.Linear(C, 12), nn.GELU(), nn.Linear(12, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x).mean(1)


def unflatten_seq() -> tuple[nn.Module, Tensor]:
    """A Linear decoder reshaped to a map by ``nn.Unflatten(1, (C, 1, 1))``, then upsampled and convolved."""
    model = nn.Sequential(
        nn.Linear(6, C), nn.ReLU(), nn.Unflatten(1, (C, 1, 1)), nn.Upsample(scale_factor=4), nn.Conv2d(C, 4, 3, padding=1)
    )
    return model, torch.randn(2, 6)


def unflatten_map_seq() -> tuple[nn.Module, Tensor]:
    """DCGAN's generator head: Linear to C * 2 * 2, ``nn.Unflatten(1, (C, 2, 2))``, BN, conv."""
    model = nn.Sequential(
        nn.Linear(6, C * 4), nn.Unflatten(-1, (C, 2, 2)), nn.BatchNorm2d(C), nn.ReLU(), nn.ConvTranspose2d(C, 4, 4, 2, 1)
    )
    return model, torch.randn(2, 6)


class Interleave(nn.Module):
    """Two branches interleaved by strided slice assignment into ``new_zeros``: ``out[:, 0::2] = a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, C), cbr(3, C), nn.Conv2d(2 * C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        out = a.new_zeros(a.shape[0], 2 * a.shape[1], *a.shape[2:])
        out[:, 0::2] = a
        out[:, 1::2] = b
        return self.c(out)


class IndexAssign(nn.Module):
    """Channels written through a list index: ``out[:, perm] = h`` into ``zeros_like``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = cbr(3, C), nn.Conv2d(C, 4, 1)
        self.perm = [1, 0, 3, 2, 5, 4, 7, 6]

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out = torch.zeros_like(h)
        out[:, self.perm] = h
        return self.c(out)


class HalvesIntoSlots(nn.Module):
    """Two convs written into halves of one buffer by ``index_copy`` with a tensor of indices."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 4), cbr(3, 4), nn.Conv2d(C, 4, 1)
        self.register_buffer("lo", torch.arange(4))
        self.register_buffer("hi", torch.arange(4, 8))

    def forward(self, x: Tensor) -> Tensor:
        a = self.a(x)
        out = a.new_zeros(a.shape[0], C, *a.shape[2:])
        out = out.index_copy(1, self.lo, a).index_copy(1, self.hi, self.b(x))
        return self.c(out)


class EdgePad(nn.Module):
    """A channel axis padded by edge replication / reflection (``F.pad`` over the last axis of (B, L, C))."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.fc1, self.fc2 = mode, nn.Linear(6, 12), nn.Linear(14, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x)).transpose(1, 2)  # (B, 12, L): pad wants a batch + channel axis before
        h = F.pad(h.transpose(1, 2), (1, 1), mode=self.mode)
        return self.fc2(h)


class ConstantPadSeq(nn.Module):
    """``nn.ConstantPad1d((0, 2), 0.0)`` on (B, L, C) pads the feature axis with zero features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.pad, self.fc2 = nn.Linear(6, 12), nn.ConstantPad1d((0, 2), 0.0), nn.Linear(14, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.pad(torch.relu(self.fc1(x))))


class GroupsFromShape(nn.Module):
    """A depthwise conv whose ``groups`` is read off the input: ``F.conv2d(h, w, groups=h.shape[1])``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.dw, self.b = cbr(3, C), nn.Parameter(torch.randn(C, 1, 3, 3) * 0.3), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(F.conv2d(h, self.dw, padding=1, groups=h.shape[1]))


class ExternalGate(nn.Module):
    """A second input gates the conv's channels: ``h * gate[:, :, None, None]`` (the gate is the user's)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:  # called with keyword inputs
        return self.b(self.a(x) * gate[:, :, None, None])


class ConvTOutputSize(nn.Module):
    """``ConvTranspose2d(h, output_size=skip.shape)`` in a UNet decoder step."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.down = cbr(3, C), nn.Conv2d(C, C, 3, 2, 1)
        self.up, self.out = nn.ConvTranspose2d(C, 6, 3, 2, 1), nn.Conv2d(6 + C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.enc(x)
        u = self.up(torch.relu(self.down(skip)), output_size=skip.shape)
        return self.out(torch.cat([u, skip], 1))


class EinsumSpatialAttn(nn.Module):
    """Non-local attention over positions with einsum contracting the channels (``bci,bcj->bij``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.q, self.k, self.v = cbr(3, C), nn.Conv2d(C, 6, 1), nn.Conv2d(C, 6, 1), nn.Conv2d(C, 5, 1)
        self.o = nn.Conv2d(5, C, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        q, k, v = self.q(h).flatten(2), self.k(h).flatten(2), self.v(h).flatten(2)
        att = torch.einsum("bci,bcj->bij", q, k).softmax(-1)
        y = torch.einsum("b i j, b c j -> b c i", att, v).view(v.shape[0], -1, *h.shape[2:])
        return h + self.o(y)


class EinsumBilinear(nn.Module):
    """A bilinear form of two branches by ``einsum('bi,oij,bj->bo')``."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.fb = nn.Linear(6, 8), nn.Linear(6, 7)
        self.W = nn.Parameter(torch.randn(4, 8, 7) * 0.2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bi,oij,bj->bo", torch.relu(self.fa(x)), self.W, torch.relu(self.fb(x)))


class FBilinear(nn.Module):
    """``F.bilinear`` with the weight and bias as raw parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.fb = nn.Linear(6, 8), nn.Linear(6, 7)
        self.W, self.bias = nn.Parameter(torch.randn(4, 8, 7) * 0.2), nn.Parameter(torch.zeros(4))

    def forward(self, x: Tensor) -> Tensor:
        return F.bilinear(torch.relu(self.fa(x)), torch.relu(self.fb(x)), self.W, self.bias)


class MultiDot(nn.Module):
    """``torch.linalg.multi_dot([x, W1, W2])``: a two-layer linear map in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(6, 12) * 0.3), nn.Parameter(torch.randn(12, 4) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.linalg.multi_dot([x, self.w1, self.w2])


class AddmmKw(nn.Module):
    """A Linear spelled ``torch.addmm(input=b, mat1=x, mat2=w.t(), beta=..., alpha=...)`` with keywords."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(12, 6) * 0.3), nn.Parameter(torch.randn(12) * 0.1)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.addmm(input=self.b1, mat1=x, mat2=self.w1.t(), beta=0.5, alpha=2.0)
        return self.fc2(torch.relu(h))


class NoGradHelper(nn.Module):
    """A ``@torch.no_grad()`` helper and a ``@torch.jit.ignore`` helper called from forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    @torch.no_grad()
    def _scale(self, h: Tensor) -> Tensor:
        return h.abs().amax(dim=(-2, -1), keepdim=True) + 1.0

    @torch.jit.ignore
    def _mix(self, h: Tensor) -> Tensor:
        return h + 0.5 * h.flip(-1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(self._mix(h / self._scale(h)))


def _fx_leaf(h: Tensor) -> Tensor:
    """A function ``torch.fx.wrap`` keeps opaque: the tracer never sees inside it."""
    return h * torch.sigmoid(h.sum(1, keepdim=True))


torch.fx.wrap("_fx_leaf")


class FxWrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(_fx_leaf(self.a(x)))


class Casts(nn.Module):
    """dtype round trips: ``.double()``, ``.to(dtype=...)``, ``.type_as(x)``, ``.float()``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.b = cbr(3, C), nn.Conv2d(C, 6, 1).double(), nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c(self.a(x).double())
        return self.b(torch.relu(h).to(dtype=torch.float32).type_as(x).float())


class LNOverCHW(nn.Module):
    """``nn.LayerNorm([C, H, W])`` on a feature map: a weight per channel and position, stats over all."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.b = nn.Conv2d(3, C, 3, padding=1), nn.LayerNorm([C, 8, 8]), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.ln(self.a(x))))


class RMSNormSeq(nn.Module):
    """``nn.RMSNorm`` over the features of (B, L, C), and a bias-free ``nn.LayerNorm``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 12), nn.RMSNorm(12), nn.Linear(12, 10)
        self.ln, self.head = nn.LayerNorm(10, bias=False), nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ln(self.fc2(torch.relu(self.norm(self.fc1(x))))))


class InstanceNorm1dSeq(nn.Module):
    """Conv1d -> ``nn.InstanceNorm1d(affine=True)`` -> ReLU -> Conv1d over (B, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n, self.c2 = nn.Conv1d(6, C, 3, padding=1), nn.InstanceNorm1d(C, affine=True), nn.Conv1d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c2(torch.relu(self.n(self.c1(x.transpose(1, 2)))))


class LerpBranches(nn.Module):
    """Two branches blended per channel: ``torch.lerp(a, b, sigmoid(alpha)[:, None, None])``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, C), cbr(3, C), nn.Conv2d(C, 4, 1)
        self.alpha = nn.Parameter(torch.randn(C))

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.lerp(self.a(x), self.b(x), torch.sigmoid(self.alpha)[:, None, None]))


class MaxOfBranches(nn.Module):
    """``torch.stack([a, b], dim=-1).amax(-1)``: the elementwise max of two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, C), cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.stack([self.a(x), self.b(x)], dim=-1).amax(-1))


class AddcmulAffine(nn.Module):
    """A per-channel affine as ``torch.addcmul(beta, h, gamma)`` with parameters as ``input``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, 4, 1)
        self.gamma, self.beta = nn.Parameter(torch.rand(C) + 0.5), nn.Parameter(torch.randn(C) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.addcmul(self.beta.view(1, -1, 1, 1), self.a(x), self.gamma.view(1, -1, 1, 1), value=1.0)
        return self.c(torch.relu(h))


class EmbBagWeighted(nn.Module):
    """``nn.EmbeddingBag(mode='sum')`` with ``per_sample_weights`` and offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.bag, self.fc, self.head = nn.EmbeddingBag(20, 8, mode="sum"), nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten()
        offsets = torch.arange(0, flat.numel(), x.shape[1])
        w = torch.linspace(0.5, 1.5, flat.numel())
        return self.head(torch.relu(self.fc(self.bag(flat, offsets, per_sample_weights=w))))


# -- bodies: values a removed channel still changes --------------------------------------------


def _sum1(f: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """``h * f(h).sum(1)``: the channel sum of ``f(h)`` gates every channel."""
    return lambda s, h: h * f(h).sum(1, keepdim=True)


BODY_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    # f(0) != 0 inside a channel sum: not zero-invariant
    "threshold_value": (body(_sum1(lambda h: F.threshold(h, 0.1, 2.0))), {"a:out": "prune"}),
    "hardtanh_min": (body(_sum1(lambda h: F.hardtanh(h, min_val=0.1, max_val=2.0))), {"a:out": "prune"}),
    "pow_zero": (body(_sum1(lambda h: h.pow(0))), {"a:out": "prune"}),
    "logsigmoid": (body(_sum1(F.logsigmoid)), {"a:out": "prune"}),
    "hardsigmoid": (body(_sum1(F.hardsigmoid)), {"a:out": "prune"}),
    "logical_not": (body(_sum1(lambda h: torch.logical_not(h).float())), {"a:out": "prune"}),
    "one_minus": (body(_sum1(lambda h: 1 - h)), {"a:out": "prune"}),
    "where_keep_buffer": (
        body(_sum1(lambda h: torch.where(h > 0.2, h, -1.0))),
        {"a:out": "prune"},
    ),
    "softmin_channels": (body(lambda s, h: F.softmin(h, dim=-3)), {"a:out": "prune"}),
    "special_softmax": (body(lambda s, h: torch.special.softmax(h, 1)), {"a:out": "prune"}),
    # a count of the channels in disguise: the result depends on the axis length
    "ones_like_count": (
        body(lambda s, h: h * h.sum(1, keepdim=True) / torch.ones_like(h).sum(1, keepdim=True)),
        {"a:out": "prune"},
    ),
    "ge_zero_count": (body(lambda s, h: h * h.sum(1, keepdim=True) / (h >= 0).sum(1, keepdim=True)), {"a:out": "prune"}),
    "nanmean": (body(lambda s, h: h * torch.nanmean(h, dim=1, keepdim=True)), {"a:out": "prune"}),
    "std_mean": (body(lambda s, h: h * torch.std_mean(h, dim=1, keepdim=True)[1]), {"a:out": "prune"}),
    "var_correction0": (body(lambda s, h: h / (torch.var(h, dim=-3, correction=0, keepdim=True) + 1)), {"a:out": "prune"}),
    "mse_loss_scale": (body(lambda s, h: h * F.mse_loss(h, 0.5 * h)), {"a:out": "pin"}),  # no rule: pinned
    "l1_loss_scale": (body(lambda s, h: h * F.l1_loss(h, torch.zeros_like(h))), {"a:out": "pin"}),
    "adaptive_pool_channels": (
        body(lambda s, h: h * F.adaptive_avg_pool3d(h.unsqueeze(1), (1, None, None)).squeeze(1)),
        {"a:out": "pin"},  # a pooled axis is spatial to the rule
    ),
    "cummax_channels": (body(lambda s, h: torch.cummax(h, dim=1).values), {"a:out": "prune"}),
    "logcumsumexp": (body(lambda s, h: torch.logcumsumexp(h, dim=-3)), {"a:out": "prune"}),
    "kthvalue": (body(lambda s, h: h * h.kthvalue(2, dim=1, keepdim=True).values), {"a:out": "prune"}),
    # exact: a removed channel adds exactly zero, no length read
    "count_nonzero": (
        body(lambda s, h: h * torch.count_nonzero(h, dim=1)[:, None].float()),
        {"a:out": "prune"},
    ),  # exact, not claimed
    "sum_neg_dims": (body(lambda s, h: h * torch.sum(h, dim=-3, keepdim=True)), {"a:out": "zi"}),
    "cosine_proto": (
        body(
            lambda s, h: h * F.cosine_similarity(h, s.proto[None, :, None, None], dim=1)[:, None],
            proto=nn.Parameter(torch.randn(C)),
        ),
        {"a:out": "zi"},  # cosine similarity over the channels, the prototype a member: exact (round 23's rule)
    ),
    # layout over the channel axis
    "neg_slice_channels": (body(lambda s, h: torch.cat([h[:, -3:], h[:, :-3]], dim=1)), {"a:out": "pin"}),  # literal bounds
    "swap_halves_unflatten": (
        body(lambda s, h: h.unflatten(1, (2, -1)).flip(1).flatten(1, 2)),
        {"a:out": "zi|pin"},
    ),  # exact either way
    "take_along_dim": (
        body(
            lambda s, h: torch.take_along_dim(h, s.idx.view(1, -1, 1, 1).expand_as(h), dim=1),
            idx=torch.tensor([7, 6, 5, 4, 3, 2, 1, 0]),
        ),
        {"a:out": "pin"},
    ),
    "diff_channels": (body(lambda s, h: torch.diff(h, dim=1)), {"a:out": "pin"}),
    "tensor_split_sections": (
        body(lambda s, h: torch.cat(torch.tensor_split(h, 3, dim=-3)[::-1], -3)),
        {"a:out": "pin"},
    ),  # 3, 3, 2
    "einsum_spaces_ellipsis": (
        body(lambda s, h: torch.einsum("... c h w, o c -> ... o h w", h, s.w), w=nn.Parameter(torch.randn(6, C))),
        {"a:out": "zi"},
    ),
    "einsum_channels_last": (
        body(lambda s, h: s.fc(torch.einsum("bchw->bhwc", h)).mean((1, 2)), fc=nn.Linear(C, 6)),
        {"a:out": "zi"},
    ),
    "tensordot_int_dims": (
        body(
            lambda s, h: torch.tensordot(h.permute(0, 2, 3, 1), s.w, dims=1).permute(0, 3, 1, 2),
            w=nn.Parameter(torch.randn(C, 6)),
        ),
        {"w:0": "zi"},
    ),
    "where_channel_mask": (
        body(lambda s, h: torch.where(s.keep[:, None, None], h, torch.zeros(())), keep=torch.tensor([True, False] * 4)),
        {"a:out": "zi"},  # a buffer indexed in forward: ops on the buffer (``graph/buffer_views``)
    ),
    "hardtanh_gate_conv": (body(lambda s, h: F.hardtanh(h, min_val=0.1)), {"a:out": "zi"}),
}

MODEL_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    "lora_merged": (lambda: (MLP(fc1=LoRALinear(6, 12)), torch.randn(*SEQ)), {"fc1:out": "zi", "fc2:out": "zi"}),
    "lora_branch": (lambda: (MLP(fc1=LoRABranch(6, 12)), torch.randn(*SEQ)), {"fc1.down:out": "zi", "fc1.base:out": "zi"}),
    "lora_parametrize": (lora_parametrized, {"fc1:out": "zi"}),  # traced: W + B @ A, a column of both
    "dora": (lambda: (MLP(fc2=DoRA(12, 10)), torch.randn(*SEQ)), {"fc1:out": "zi", "fc2.v:0": "prune"}),  # a zeroed row is 0 / 0
    "ws_conv_by_hand": (
        lambda: (WSNet(), torch.randn(*X4)),
        {"a:out": "prune", "ws:out": "zi"},
    ),  # a masked filter standardises to 0 / sqrt(0 + eps) = 0; the fan-in statistics change with a:out
    "linear_as_conv": (lambda: (LinearAsConv(), torch.randn(*X4)), {"a:out": "zi", "fc:out": "pin"}),
    "conv_as_linear": (lambda: (ConvAsLinear(), torch.randn(*X4)), {"a:out": "zi", "c:out": "zi"}),  # zeros survive the mean
    "im2col": (lambda: (Im2Col(), torch.randn(*X4)), {"a:out": "pin"}),  # F.unfold has no rule
    "soup_weights": (lambda: (SoupConv(), torch.randn(*X4)), {"a:out": "zi"}),
    "block_diag": (lambda: (BlockDiag(), torch.randn(*SEQ)), {"fc1:out": "pin"}),
    "parameter_dict": (lambda: (ParamDict(), torch.randn(*SEQ)), {"p.w1:0": "zi"}),
    "shared_sliced_weight": (lambda: (SharedSliced(), torch.randn(*SEQ)), {"fc1:out": "pin", "w:0": "zi"}),  # w[:, :6]: literal
    "max_norm_embedding": (lambda: (MaxNormEmbed(), torch.randint(0, 20, (2, 5))), {"fc:out": "zi"}),
    "spectral_norm_train": (lambda: spectral_train(False), {"0:out": "pin"}),  # hooks are not traced
    "spectral_param_train": (lambda: spectral_train(True), {"0:out": "zi"}),  # u, v sliced with the weight
    "torch_prune_masks": (torch_pruned, {"0.0:out": "pin"}),
    "bn_train_momentum_none": (lambda: (BNTrainMomentumNone().train(), torch.randn(*X4)), {"body.0:out": "zi"}),
    "patchify_unfold": (lambda: (PatchifyUnfold(), torch.randn(*X4)), {"a:out": "zi", "proj:out": "zi"}),
    "patchify_mae": (lambda: (PatchifyMAE(), torch.randn(*X4)), {"proj:out": "zi"}),
    "unpatchify_mae": (lambda: (UnpatchifyMAE(), torch.randn(2, 16, 6)), {"pred:out": "pin"}),
    "flatten_tokens_seq": (lambda: (FlattenTokens(), torch.randn(*X4)), {"seq.0.0:out": "prune", "seq.4:out": "zi"}),
    "unflatten_linear_to_map": (unflatten_seq, {"0:out": "zi"}),  # surgery lowers unflattened_size[0]
    "unflatten_dcgan": (unflatten_map_seq, {"0:out": "zi"}),
    "interleave_slice_assign": (lambda: (Interleave(), torch.randn(*X4)), {"a.0:out": "pin", "b.0:out": "pin"}),
    "index_assign_list": (lambda: (IndexAssign(), torch.randn(*X4)), {"a.0:out": "pin"}),
    "index_copy_halves": (lambda: (HalvesIntoSlots(), torch.randn(*X4)), {"a.0:out": "pin"}),
    "pad_replicate_features": (lambda: (EdgePad("replicate"), torch.randn(*SEQ)), {"fc1:out": "pin"}),
    "pad_reflect_features": (lambda: (EdgePad("reflect"), torch.randn(*SEQ)), {"fc1:out": "pin"}),
    "pad_circular_features": (lambda: (EdgePad("circular"), torch.randn(*SEQ)), {"fc1:out": "pin"}),
    "constant_pad_features": (lambda: (ConstantPadSeq(), torch.randn(*SEQ)), {"fc1:out": "zi"}),
    "groups_from_shape": (lambda: (GroupsFromShape(), torch.randn(*X4)), {"dw:0": "zi"}),  # groups follows h
    "external_gate": (lambda: (ExternalGate(), {"x": torch.randn(*X4), "gate": torch.rand(2, C)}), {"a.0:out": "pin"}),
    "convT_output_size": (lambda: (ConvTOutputSize(), torch.randn(*X4)), {"up.bias:0": "zi", "enc.0:out": "zi"}),
    "einsum_spatial_attention": (lambda: (EinsumSpatialAttn(), torch.randn(*X4)), {"q:out": "zi", "v:out": "zi"}),  # flatten(2)
    "einsum_bilinear": (lambda: (EinsumBilinear(), torch.randn(2, 6)), {"fa:out": "zi", "fb:out": "zi"}),
    "f_bilinear": (lambda: (FBilinear(), torch.randn(2, 6)), {"fa:out": "zi", "fb:out": "zi"}),
    "multi_dot": (lambda: (MultiDot(), torch.randn(2, 6)), {"*": "any"}),
    "addmm_keywords": (lambda: (AddmmKw(), torch.randn(2, 6)), {"w1:0": "zi"}),
    "no_grad_jit_ignore_helpers": (lambda: (NoGradHelper(), torch.randn(*X4)), {"a.0:out": "zi"}),
    "fx_wrapped_leaf": (lambda: (FxWrapped(), torch.randn(*X4)), {"a.0:out": "pin"}),
    "dtype_casts": (lambda: (Casts(), torch.randn(*X4)), {"a.0:out": "zi", "c:out": "zi"}),
    "layer_norm_chw": (lambda: (LNOverCHW(), torch.randn(*X4)), {"a:out": "prune"}),
    "rms_norm_module": (lambda: (RMSNormSeq(), torch.randn(*SEQ)), {"fc1:out": "prune", "fc2:out": "prune"}),
    "instance_norm_1d": (lambda: (InstanceNorm1dSeq(), torch.randn(*SEQ)), {"c1:out": "zi"}),
    "lerp_branches": (lambda: (LerpBranches(), torch.randn(*X4)), {"a.0:out": "zi"}),
    "max_of_branches": (lambda: (MaxOfBranches(), torch.randn(*X4)), {"a.0:out": "zi"}),
    "addcmul_affine": (lambda: (AddcmulAffine(), torch.randn(*X4)), {"a:out": "zi"}),
    "embedding_bag_weighted": (lambda: (EmbBagWeighted(), torch.randint(0, 20, (2, 5))), {"fc:out": "zi"}),
}

CASES = {**BODY_CASES, **MODEL_CASES}


# -- the property -------------------------------------------------------------------------------


def _status(group: skg.Group) -> str:
    return "pin" if not group.prunable else ("zi" if group.zero_invariant else "prune")


def _random_keeps(model: nn.Module, plan: skg.Plan, x: object, seed: int) -> None:
    """Every prunable group at a random keep count (at least one channel kept) prunes to a model that runs."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in plan.prunable:
        keep = int(torch.randint(1, g.size + 1, (1,), generator=gen))
        m = torch.ones(g.size, dtype=torch.bool)
        m[torch.randperm(g.size, generator=gen)[:keep]] = False
        masks[g.name] = m
    masks = snap_tied(plan, masks, {n: torch.rand(len(m), generator=gen) for n, m in masks.items()})
    small, full = skg.prune(model, plan, masks=masks).model, skg.prune(model, plan, masks={}).model
    with torch.no_grad():
        want = first_tensor(call(full.eval(), x)).shape
        assert first_tensor(call(small.eval(), x)).shape == want
        small.train()
        call(small, x)


def check_case(name: str, tmp_path: Path) -> None:
    """Plan as the model comes (train mode included): untouched; the expected outcome per group;
    then prune at random keep counts and the DESIGN.md oracle."""
    factory, expect = CASES[name]
    model, x = factory()
    before = fingerprint(model)
    try:
        plan = skg.plan(model, x)
    except skg.SparseKitError:
        assert_untouched(model, before, "refused plan")
        assert expect.get("*") in ("refuse", "any"), f"{name}: plan refused, expected {expect}"
        return
    assert_untouched(model, before, "plan")
    assert expect.get("*") != "refuse", f"{name}: planned, expected a refusal"
    got = {g.name: _status(g) for g in plan.groups}
    for group, want in expect.items():
        if group != "*":
            assert group in got, f"{name}: no group {group!r} in {sorted(got)}"
            assert got[group] in want.split("|"), f"{name}: {group} is {got[group]} ({plan.group(group).reason}), expected {want}"
    skg.prune(model, plan, ratio=0.5)
    assert_untouched(model, before, "prune")
    _random_keeps(model, plan, x, seed=0)
    _random_keeps(model, plan, x, seed=1)
    assert_untouched(model, before, "prune at random keeps")
    check_oracle(model, x, tmp_path, min_drop=0.0, require=False)


# -- two producers meeting in a layer that groups channels ----------------------------------------


class Meet(nn.Module):
    """``a`` (``na`` channels) and ``b`` (``nb``) concatenated, then ``join(self, ab)``, then a head."""

    def __init__(self, na: int, nb: int, join: Callable[..., Tensor], out: int, **extra: nn.Module | nn.Parameter) -> None:
        super().__init__()
        self.a, self.b, self.join = cbr(3, na), cbr(3, nb), join
        for k, v in extra.items():
            setattr(self, k, v)
        self.head = nn.Conv2d(out, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.join(self, torch.cat([self.a(x), self.b(x)], dim=1)))


def meet(
    na: int, nb: int, join: Callable[..., Tensor], out: int, **extra: nn.Module | nn.Parameter
) -> Callable[[], tuple[nn.Module, Tensor]]:
    return lambda: (Meet(na, nb, join, out, **extra), torch.randn(*X4))


class MaskedWeight(nn.Module):
    """A hand-pruned conv: ``F.conv2d(h, self.weight * self.mask)`` with a mask buffer of the weight's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(6, 4, 1)
        self.weight = nn.Parameter(torch.randn(6, C, 3, 3) * 0.2)
        self.register_buffer("mask", (torch.rand(6, C, 3, 3) > 0.3).float())

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(F.conv2d(self.a(x), self.weight * self.mask, padding=1)))


class FakeQuant(nn.Module):
    """QAT by hand: per-channel fake-quantised weights (scale buffer on axis 0), per-tensor activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(6, 4, 1)
        self.weight = nn.Parameter(torch.randn(6, C, 3, 3) * 0.2)
        self.register_buffer("scale", torch.full((6,), 0.02))
        self.register_buffer("zero_point", torch.zeros(6, dtype=torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.fake_quantize_per_tensor_affine(self.a(x), 0.05, 0, -128, 127)
        w = torch.fake_quantize_per_channel_affine(self.weight, self.scale, self.zero_point, 0, -128, 127)
        return self.b(torch.relu(F.conv2d(h, w, padding=1)))


MEET_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    # GroupNorm / grouped conv / pixel shuffle over a concat: every group of the layer keeps one count
    "cat_group_norm_aligned": (meet(8, 8, lambda s, h: torch.relu(s.gn(h)), 16, gn=nn.GroupNorm(2, 16)), {"a.0:out": "prune"}),
    "cat_group_norm_misaligned": (
        meet(6, 10, lambda s, h: torch.relu(s.gn(h)), 16, gn=nn.GroupNorm(4, 16)),
        {"a.0:out": "prune"},
    ),
    "cat_grouped_conv_aligned": (
        meet(8, 8, lambda s, h: torch.relu(s.gc(h)), 8, gc=nn.Conv2d(16, 8, 3, padding=1, groups=2)),
        {"a.0:out": "zi"},
    ),
    "cat_grouped_conv_misaligned": (
        meet(6, 10, lambda s, h: torch.relu(s.gc(h)), 8, gc=nn.Conv2d(16, 8, 3, padding=1, groups=2)),
        {"a.0:out": "zi"},
    ),
    "cat_pixel_shuffle": (meet(4, 12, lambda s, h: F.pixel_shuffle(h, 2), 4), {"a.0:out": "zi"}),
    "cat_channel_shuffle_grouped": (
        meet(8, 8, lambda s, h: torch.relu(s.gc(F.channel_shuffle(h, 2))), 8, gc=nn.Conv2d(16, 8, 1, groups=2)),
        {"a.0:out": "zi"},
    ),
    # a concat cut again by a count that is not its parts'
    "cat_then_chunk": (meet(8, 8, lambda s, h: (lambda u, v: u * torch.sigmoid(v))(*h.chunk(2, dim=1)), 8), {"a.0:out": "zi"}),
    "cat_then_chunk_uneven": (
        meet(6, 10, lambda s, h: (lambda u, v: u * torch.sigmoid(v))(*h.chunk(2, dim=1)), 8),
        {"a.0:out": "zi", "b.0:out": "zi"},
    ),
    "cat_glu": (meet(8, 8, lambda s, h: F.glu(h, dim=1), 8), {"a.0:out": "zi"}),
    "cat_view_sum": (meet(8, 8, lambda s, h: h.view(h.shape[0], 2, -1, *h.shape[2:]).sum(1), 8), {"a.0:out": "zi"}),
    "cat_view_sum_uneven": (
        meet(6, 10, lambda s, h: h.view(h.shape[0], 2, -1, *h.shape[2:]).sum(1), 8),
        {"a.0:out": "zi", "b.0:out": "zi"},
    ),
    "cat_split_literal": (meet(6, 10, lambda s, h: h.split(8, 1)[0] + h.split(8, 1)[1], 8), {"a.0:out": "pin"}),
    "cat_depthwise": (
        meet(6, 10, lambda s, h: torch.relu(s.dw(h)), 16, dw=nn.Conv2d(16, 16, 3, padding=1, groups=16)),
        {"a.0:out": "zi"},
    ),
    "stack_interleave_two": (
        lambda: (StackTwo(), torch.randn(*X4)),
        {"a.0:out": "zi"},
    ),
}


class StackTwo(nn.Module):
    """``torch.stack([a, b], 2).flatten(1, 2)``: two producers interleaved channel by channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, C), cbr(3, C), nn.Conv2d(2 * C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.stack([self.a(x), self.b(x)], 2).flatten(1, 2))


MODEL_CASES.update(
    {
        "masked_weight_buffer": (lambda: (MaskedWeight(), torch.randn(*X4)), {"a.0:out": "zi", ":out": "zi"}),
        "fake_quant": (lambda: (FakeQuant(), torch.randn(*X4)), {"*": "refuse"}),  # no meta kernel: a clean TraceError
    }
)
CASES.update(MEET_CASES)
CASES.update({k: MODEL_CASES[k] for k in ("masked_weight_buffer", "fake_quant")})


# -- forwards that write to the model; tensors that are not members ------------------------------


class ClipInForward(nn.Module):
    """WGAN-style weight clipping written into forward: ``p.data.clamp_(-c, c)`` on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)
        with torch.no_grad():
            self.b.weight.mul_(10.0)

    def forward(self, x: Tensor) -> Tensor:
        self.b.weight.data.clamp_(-0.05, 0.05)
        return self.b(self.a(x))


class FreezeInForward(nn.Module):
    """A forward that freezes its stem and puts its BN in eval mode (``requires_grad_`` / ``.eval()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.a[0].weight.requires_grad_(False)
        self.a[1].eval()
        return self.b(self.a(x))


class FEmbedMaxNorm(nn.Module):
    """``F.embedding(idx, self.table, max_norm=1.0)``: the table's rows renormalised in place."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(20, 8) * 3)
        self.fc, self.head = nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(F.embedding(x, self.table, max_norm=1.0))))


class SpatialLN(nn.Module):
    """LayerNorm over (H, W) of each channel (bias over positions, not channels), then a channel sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.b = nn.Conv2d(3, C, 3, padding=1), nn.LayerNorm([8, 8]), nn.Conv2d(C, 4, 1)
        with torch.no_grad():
            self.ln.bias.uniform_(0.5, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(torch.relu(self.a(x)))
        return self.b(h * h.sum(1, keepdim=True))


class NonPersistent(nn.Module):
    """A per-channel shift kept in a non-persistent buffer (not in ``state_dict``), then a channel sum."""

    def __init__(self, reduce: bool) -> None:
        super().__init__()
        self.reduce = reduce
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)
        self.register_buffer("shift", torch.rand(C) + 0.5, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x) * self.shift[:, None, None]
        return self.b(h * h.sum(1, keepdim=True) if self.reduce else h)


class PlainTensorAttr(nn.Module):
    """A per-channel scale stored as a plain tensor attribute and a weight in a plain Python list."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)
        self.scale = torch.rand(C) + 0.5
        self.extra = [nn.Parameter(torch.randn(4, C, 1, 1) * 0.3)]

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x) * self.scale.view(1, -1, 1, 1)
        return self.b(h) + F.conv2d(h, self.extra[0])


def _shift_sum(make: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """``g = h + make(h)`` (a constant per channel), then ``h * g.sum(1)``."""
    return lambda s, h: h * (h + make(h)).sum(1, keepdim=True)


BODY_CASES.update(
    {
        "ones_of_size_shift": (body(_shift_sum(lambda h: torch.ones(h.shape[1])[:, None, None])), {"a:out": "prune"}),
        "new_full_shift": (body(_shift_sum(lambda h: h.new_full((h.shape[1], 1, 1), 0.3))), {"a:out": "prune"}),
        "full_like_shift": (body(_shift_sum(lambda h: torch.full_like(h, 0.1))), {"a:out": "prune"}),
        "norm_minus_const": (body(lambda s, h: h / (1 + (h - 0.5).norm(dim=1, keepdim=True))), {"a:out": "prune"}),
    }
)
WRITE_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    "weight_clip_in_forward": (lambda: (ClipInForward(), torch.randn(*X4)), {"a.0:out": "zi"}),
    "freeze_in_forward": (lambda: (FreezeInForward().train(), torch.randn(*X4)), {"a.0:out": "zi"}),
    "f_embedding_max_norm": (lambda: (FEmbedMaxNorm(), torch.randint(0, 20, (2, 5))), {"fc:out": "zi"}),
    "spatial_layer_norm_sum": (lambda: (SpatialLN(), torch.randn(*X4)), {"a:out": "prune"}),
    "non_persistent_scale": (lambda: (NonPersistent(False), torch.randn(*X4)), {"a.0:out": "zi"}),
    "non_persistent_scale_sum": (lambda: (NonPersistent(True), torch.randn(*X4)), {"a.0:out": "zi"}),
    "plain_tensor_attribute": (lambda: (PlainTensorAttr(), torch.randn(*X4)), {"a.0:out": "pin"}),
}
MODEL_CASES.update(WRITE_CASES)
CASES.update(WRITE_CASES)
CASES.update({k: BODY_CASES[k] for k in ("ones_of_size_shift", "new_full_shift", "full_like_shift", "norm_minus_const")})


def _zero_first(s: nn.Module, h: Tensor) -> Tensor:
    h = h.clone()
    h[:, 0] = 0.0  # the first channel, whichever it is after pruning
    return h


def _scale_last(s: nn.Module, h: Tensor) -> Tensor:
    h = h.clone()
    h[:, -1] *= 2.0
    return h


def _cat_by_sizes(s: nn.Module, h: Tensor) -> Tensor:
    g = torch.sigmoid(h)
    out = h.new_zeros(h.shape[0], h.shape[1] + g.shape[1], *h.shape[2:])
    out[:, : h.shape[1]] = h
    out[:, h.shape[1] :] = g
    return out


def _glu_by_slices(s: nn.Module, h: Tensor) -> Tensor:
    half = h.shape[1] // 2
    return h[:, :half] * torch.sigmoid(h[:, half:])


def _copy_half(s: nn.Module, h: Tensor) -> Tensor:
    out = h.clone()
    out[:, :4] = out[:, 4:]
    return out


MORE_BODIES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    "zero_first_channel": (body(_zero_first), {"a:out": "pin"}),
    "scale_last_channel": (body(_scale_last), {"a:out": "pin"}),
    "slice_assign_cat_by_sizes": (body(_cat_by_sizes), {"a:out": "pin"}),  # copy_ has no rule
    "glu_by_size_slices": (body(_glu_by_slices), {"a:out": "zi"}),
    "copy_half_over_half": (body(_copy_half), {"a:out": "pin"}),
    "select_channel": (body(lambda s, h: h * h.select(1, 0).unsqueeze(1)), {"a:out": "pin"}),
    "bool_list_index": (
        body(lambda s, h: h[:, [True, False] * 4]),
        {"a:out": "pin"},
    ),  # a fixed-length mask over the channels (nonzero: export)  # noqa: E501
    "softmax_over_flat": (body(lambda s, h: h.flatten(1).softmax(-1).view_as(h)), {"a:out": "prune"}),
    "einsum_square_sum": (body(lambda s, h: h * torch.einsum("bchw,bchw->bhw", h, h)[:, None]), {"a:out": "zi"}),
    "einsum_square_residual": (
        body(lambda s, h: h + torch.einsum("bchw,cd->bdhw", h, s.sq), sq=nn.Parameter(torch.randn(C, C) * 0.3)),
        {"sq:0": "zi"},
    ),
    "diag_param_scale": (
        body(lambda s, h: torch.einsum("bchw,cd->bdhw", h, torch.diag(s.g)), g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "pin"},
    ),
    "flip_param_scale": (
        body(lambda s, h: h * s.g.flip(0)[:, None, None], g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "pin"},
    ),  # negative stride
    "roll_param_scale": (
        body(lambda s, h: h * s.g.roll(2, 0)[:, None, None], g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "pin"},
    ),
    "cumsum_param_scale": (
        body(lambda s, h: h * s.g.cumsum(0)[:, None, None], g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "zi"},
    ),
    "softmax_param_scale": (
        body(lambda s, h: h * s.g.softmax(0)[:, None, None], g=nn.Parameter(torch.randn(C))),
        {"a:out": "prune"},
    ),
    "param_over_its_sum": (
        body(lambda s, h: h * (s.g / s.g.sum())[:, None, None], g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "zi"},
    ),
    "param_over_its_mean": (
        body(lambda s, h: h * (s.g / s.g.mean())[:, None, None], g=nn.Parameter(torch.rand(C) + 0.5)),
        {"a:out": "prune"},
    ),
}
CASES.update(MORE_BODIES)


# ``*`` unpacking of a split (traced by torch.fx now; was torch.export, where split sizes are literals)
# and halves sliced by ``t.shape[1] // 2`` (chunk(2)'s halves, tied; other slices pin)
STAR_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    "unbind_star_sum": (body(lambda s, h: h * sum([*h.unbind(1)]).unsqueeze(1)), {"a:out": "pin"}),
    "unbind_star_reverse": (body(lambda s, h: torch.stack([*h.unbind(1)][::-1], 1)), {"a:out": "pin"}),
    "chunk_star_swap": (body(lambda s, h: torch.cat([*h.chunk(2, 1)][::-1], 1)), {"a:out": "zi"}),
    "chunk_star_max": (body(lambda s, h: torch.maximum(*h.chunk(2, 1))), {"a:out": "zi"}),
    "split_star_three": (body(lambda s, h: torch.cat([*h.split(3, 1)][1:], 1)), {"a:out": "pin"}),
    "tensor_split_star_kw": (body(lambda s, h: torch.mul(*torch.tensor_split(h, 2, dim=-3))), {"a:out": "zi"}),
    "half_slice_first_only": (body(lambda s, h: h[:, : h.shape[1] // 2]), {"a:out": "zi"}),
    "half_slice_two_axes": (body(lambda s, h: h[:, : h.shape[1] // 2, : h.shape[2] // 2]), {"a:out": "zi"}),
    "half_of_another_axis": (body(lambda s, h: h[:, : h.shape[2] // 2]), {"a:out": "pin"}),
    "half_slices_of_a_cat": (
        body(lambda s, h: (lambda g: g[:, : g.shape[1] // 2] - g[:, g.shape[1] // 2 :])(torch.cat([h, h.sigmoid()], 1))),
        {"a:out": "zi"},
    ),
    "half_slices_odd": (
        lambda: (Meet(3, 4, lambda s, h: h[:, : h.shape[1] // 2] * h[:, h.shape[1] // 2 + 1 :], 3), torch.randn(*X4)),
        {"a.0:out": "pin"},
    ),
}
CASES.update(STAR_CASES)

# -- spelling families: one computation over the same parameters gives one plan -------------------


def _key(plan: skg.Plan) -> list[tuple]:
    """Every group's size, flags and members (names aside), in a canonical order."""
    return sorted(
        (g.size, g.prunable, g.zero_invariant, tuple(sorted((m.param, m.axis, m.start, m.stop, m.block) for m in g.members)))
        for g in plan.groups
    )


class LayerScale(nn.Module):
    """conv -> BN -> ReLU -> ``spell(h, gamma)`` -> conv."""

    def __init__(self, spell: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.spell = cbr(3, C), nn.Conv2d(C, 4, 1), spell
        self.gamma = nn.Parameter(1e-1 * torch.rand(C) + 0.05)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.spell(self.a(x), self.gamma))


LAYER_SCALES: list[Callable[[Tensor, Tensor], Tensor]] = [
    lambda h, g: h * g[:, None, None],
    lambda h, g: g.view(-1, 1, 1) * h,
    lambda h, g: torch.mul(h, g.reshape(1, -1, 1, 1)),
    lambda h, g: h * g[..., None, None],
    lambda h, g: h.mul(g.unsqueeze(-1).unsqueeze(-1)),
    lambda h, g: torch.einsum("bchw,c->bchw", h, g),
    lambda h, g: (h.permute(0, 2, 3, 1) * g).permute(0, 3, 1, 2),
    lambda h, g: h.mul_(g[None, :, None, None]),
    lambda h, g: h * g.expand(1, -1).unsqueeze(-1).unsqueeze(-1),
]


class SE(nn.Module):
    """conv -> BN -> ReLU -> squeeze-excite (``pool`` spelling, 1x1 convs) -> conv."""

    def __init__(self, pool: Callable[[Tensor], Tensor], gate: Callable[[Tensor], Tensor] = torch.sigmoid) -> None:
        super().__init__()
        self.a, self.b, self.pool, self.gate = cbr(3, C), nn.Conv2d(C, 4, 1), pool, gate
        self.fc1, self.fc2 = nn.Conv2d(C, 4, 1), nn.Conv2d(4, C, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(h * self.gate(self.fc2(torch.relu(self.fc1(self.pool(h))))))


SE_POOLS: list[Callable[[Tensor], Tensor]] = [
    lambda h: F.adaptive_avg_pool2d(h, 1),
    lambda h: h.mean((2, 3), keepdim=True),
    lambda h: torch.mean(h, dim=[-1, -2], keepdim=True),
    lambda h: F.avg_pool2d(h, kernel_size=h.shape[2:]),
    lambda h: h.flatten(2).mean(-1)[..., None, None],
    lambda h: h.view(h.size(0), h.size(1), -1).mean(dim=2).view(h.size(0), h.size(1), 1, 1),
    lambda h: h.sum(dim=(2, 3), keepdim=True) / (h.shape[2] * h.shape[3]),
    lambda h: nn.AdaptiveAvgPool2d((1, 1))(h),
]
SE_GATES: list[Callable[[Tensor], Tensor]] = [torch.sigmoid, F.hardsigmoid, lambda t: t.sigmoid(), nn.Sigmoid()]


class GLUSpell(nn.Module):
    """conv to 2C -> BN -> ReLU -> GLU over the channels (``spell``) -> conv."""

    def __init__(self, spell: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.spell = cbr(3, 2 * C), nn.Conv2d(C, 4, 1), spell
        self.glu = nn.GLU(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.spell(self.a(x)) if self.spell is not None else self.glu(self.a(x)))


def _glu_slices(h: Tensor) -> Tensor:
    n = h.shape[1] // 2
    return h[:, :n] * torch.sigmoid(h[:, n:])


GLUS: list[Callable[[Tensor], Tensor] | None] = [
    lambda h: F.glu(h, dim=1),
    None,  # nn.GLU(dim=1)
    lambda h: (lambda u, v: u * torch.sigmoid(v))(*h.chunk(2, dim=1)),
    lambda h: (lambda u, v: u * v.sigmoid())(*torch.split(h, h.shape[1] // 2, dim=-3)),
    _glu_slices,
    lambda h: torch.tensor_split(h, 2, dim=1)[0] * torch.sigmoid(torch.tensor_split(h, 2, dim=1)[1]),
]


def _plans(models: list[nn.Module]) -> list[list[tuple]]:
    return [_key(skg.plan(m, torch.randn(*X4))) for m in models]


@pytest.mark.parametrize(
    ("family", "build", "group"),
    [
        pytest.param("layer_scale", lambda: [LayerScale(s) for s in LAYER_SCALES], "a.0:out", id="layer_scale"),
        pytest.param("se_pool", lambda: [SE(p) for p in SE_POOLS], "a.0:out", id="se_pool"),
        pytest.param("se_gate", lambda: [SE(SE_POOLS[0], g) for g in SE_GATES], "a.0:out", id="se_gate"),
        pytest.param("glu", lambda: [GLUSpell(s) for s in GLUS], "a.0:out", id="glu"),
    ],
)
def test_spelling_families_give_one_plan(family: str, build: Callable[[], list[nn.Module]], group: str) -> None:
    """Every spelling plans like the first, whose ``group`` is prunable and zero-invariant."""
    models = build()
    for m in models:  # the same parameters in every spelling
        m.load_state_dict(models[0].state_dict())
    first = skg.plan(models[0], torch.randn(*X4)).group(group)
    assert first.prunable and first.zero_invariant, first
    keys = _plans(models)
    diverging = [i for i, k in enumerate(keys) if k != keys[0]]
    assert not diverging, f"{family}: spellings {diverging} plan differently from spelling 0"


# -- one computation, two spellings, one plan ------------------------------------------------------


class Shift(nn.Module):
    """conv -> BN -> ReLU -> a per-channel buffer scale, as ``buf[:, None, None]`` or a (1, C, 1, 1) buffer."""

    def __init__(self, indexed: bool) -> None:
        super().__init__()
        self.a, self.b, self.indexed = cbr(3, C), nn.Conv2d(C, 4, 1), indexed
        self.register_buffer("scale", torch.rand(C) + 0.5 if indexed else torch.rand(1, C, 1, 1) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x) * (self.scale[:, None, None] if self.indexed else self.scale))


class ToMap(nn.Module):
    """Linear -> ReLU -> (B, C, 1, 1) by ``nn.Unflatten(1, (C, 1, 1))`` or ``view(B, -1, 1, 1)`` -> conv."""

    def __init__(self, module: bool) -> None:
        super().__init__()
        self.fc, self.c, self.module = nn.Linear(6, C), nn.Conv2d(C, 4, 1), module
        self.unflatten = nn.Unflatten(1, (C, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        return self.c(self.unflatten(h) if self.module else h.view(h.shape[0], -1, 1, 1))


class Depthwise(nn.Module):
    """A depthwise conv as a layer, or as ``F.conv2d(h, layer.weight, groups=h.shape[1])``."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.a, self.dw, self.b, self.functional = (
            cbr(3, C),
            nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False),
            nn.Conv2d(C, 4, 1),
            functional,
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(F.conv2d(h, self.dw.weight, padding=1, groups=h.shape[1]) if self.functional else self.dw(h))


@pytest.mark.parametrize(
    ("build", "x", "group"),
    [
        pytest.param(Shift, X4, "a.0:out", id="buffer-indexed"),
        pytest.param(ToMap, (2, 6), "fc:out", id="nn-unflatten"),
        pytest.param(Depthwise, X4, "a.0:out", id="groups-read"),
    ],
)  # fmt: skip
def test_two_spellings_of_one_layer_give_one_plan(
    build: Callable[[bool], nn.Module], x: tuple[int, ...], group: str, tmp_path: Path
) -> None:
    """The second spelling plans like the first, whose ``group`` is prunable and zero-invariant,
    and passes the oracle."""
    plain, other = build(False), build(True)
    shapes = {k: v.shape for k, v in other.state_dict().items()}  # a buffer may be (C,) in one, (1, C, 1, 1) in the other
    other.load_state_dict({k: v.reshape(shapes[k]) for k, v in plain.state_dict().items() if k in shapes}, strict=False)
    first = skg.plan(plain, torch.randn(*x))
    assert first.group(group).prunable and first.group(group).zero_invariant, first.group(group)
    second = skg.plan(other, torch.randn(*x)).group(group)
    assert second.prunable, f"the other spelling pins: {second.reason}"
    assert second.zero_invariant and second.size == first.group(group).size
    check_oracle(other.eval(), torch.randn(*x), tmp_path, min_drop=0.0)


class FBilinearBuffer(nn.Module):
    """``F.bilinear`` with a buffer weight: a masked ``sigmoid`` feature still adds 0.5 * W (not zero-invariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.fb = nn.Linear(6, 8), nn.Linear(6, 7)
        self.register_buffer("W", torch.randn(4, 8, 7) * 0.2)

    def forward(self, x: Tensor) -> Tensor:
        return F.bilinear(torch.sigmoid(self.fa(x)), torch.relu(self.fb(x)), self.W)


CASES["f_bilinear_buffer_weight"] = (lambda: (FBilinearBuffer(), torch.randn(2, 6)), {"fa:out": "prune", "fb:out": "zi"})


# -- layer subclasses that keep ``forward`` but change what it computes ---------------------------


class MaskedConv(nn.Conv2d):
    """SparseML-style: ``_conv_forward`` multiplies the weight by a mask buffer (``forward`` is Conv2d's).
    Given Conv2d's rule, the mask was no member and the pruned model failed (mask of 8 rows, weight of 5)."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", (torch.rand_like(self.weight) > 0.3).float())

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return super()._conv_forward(input, weight * self.mask, bias)


class FlipConv(nn.Conv2d):
    """``_conv_forward`` reverses the input channels: given Conv2d's rule, zero-invariance was claimed falsely."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return super()._conv_forward(input.flip(1), weight, bias)


class FrozenBN(nn.BatchNorm2d):
    """Detection code's frozen BatchNorm: ``train()`` keeps it in eval mode (its computation is BatchNorm's)."""

    def train(self, mode: bool = True) -> FrozenBN:
        return super().train(False)


class _Fusable:
    """A mixin with a method ``forward`` never calls."""

    def fuse(self) -> None:
        return None


class FusableConv(_Fusable, nn.Conv2d):
    pass


class Sub(nn.Module):
    """cbr ``a`` -> ``layer`` (C -> 6) -> ReLU -> conv ``b``; ``norm`` after ``a``'s conv."""

    def __init__(self, layer: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.a, self.norm, self.c, self.b = nn.Conv2d(3, C, 3, padding=1), norm or nn.BatchNorm2d(C), layer, nn.Conv2d(6, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.c(torch.relu(self.norm(self.a(x))))))


SUBCLASS_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], Expect]] = {
    "masked_conv_subclass": (lambda: (Sub(MaskedConv(C, 6, 3, padding=1)), torch.randn(*X4)), {"a:out": "zi", "c:out": "zi"}),
    "flip_conv_subclass": (lambda: (Sub(FlipConv(C, 6, 3, padding=1)), torch.randn(*X4)), {"a:out": "pin", "c:out": "zi"}),
    "frozen_bn_subclass": (lambda: (Sub(nn.Conv2d(C, 6, 1), FrozenBN(C)).train(), torch.randn(*X4)), {"a:out": "zi"}),
    "mixin_conv_subclass": (lambda: (Sub(FusableConv(C, 6, 3, padding=1)), torch.randn(*X4)), {"a:out": "zi", "c:out": "zi"}),
}


def instance_forward(kind: str) -> tuple[nn.Module, Tensor]:
    """A conv whose ``forward`` is replaced on the instance (LoRA-injection style): it reverses its
    input channels, or multiplies its weight by a mask buffer. Conv2d's rule was used for it."""
    model = Sub(nn.Conv2d(C, 6, 3, padding=1))
    conv = model.c
    if kind == "flip":

        def forward(self: nn.Conv2d, x: Tensor) -> Tensor:
            return self._conv_forward(x.flip(1), self.weight, self.bias)

    else:
        conv.register_buffer("mask", (torch.rand_like(conv.weight) > 0.3).float())

        def forward(self: nn.Conv2d, x: Tensor) -> Tensor:
            return self._conv_forward(x, self.weight * self.mask, self.bias)

    conv.forward = types.MethodType(forward, conv)
    return model, torch.randn(*X4)


SUBCLASS_CASES.update(
    {
        "instance_forward_flip": (lambda: instance_forward("flip"), {"a:out": "pin", "c:out": "zi"}),
        "instance_forward_mask": (lambda: instance_forward("mask"), {"a:out": "zi", "c:out": "zi"}),
    }
)
CASES.update(SUBCLASS_CASES)

# The default run checks these (one per family, the ones that found bugs first); ``-m slow`` the rest.
QUICK = {
    "glu_by_size_slices", "special_softmax", "f_bilinear", "cat_then_chunk_uneven", "cat_group_norm_misaligned",
    "lora_merged", "dora", "max_norm_embedding", "weight_clip_in_forward",
    "freeze_in_forward", "spectral_norm_train", "bn_train_momentum_none", "patchify_mae", "pad_replicate_features",
    "threshold_value", "ones_like_count", "param_over_its_mean", "external_gate", "half_slices_of_a_cat",
    "masked_conv_subclass", "flip_conv_subclass", "instance_forward_mask",
    "torch_prune_masks", "spatial_layer_norm_sum", "flatten_tokens_seq",
}  # fmt: skip


@pytest.mark.parametrize("name", [pytest.param(n, id=n, marks=() if n in QUICK else pytest.mark.slow) for n in sorted(CASES)])
def test_stranger_models(name: str, tmp_path: Path) -> None:
    check_case(name, tmp_path)


def test_cases_are_many_and_named() -> None:
    """At least 40 models, each with an expected outcome; every quick case exists."""
    assert len(CASES) >= 40 and QUICK <= set(CASES)
    assert all(expect for _, expect in CASES.values())


def test_a_subclass_with_an_unused_method_plans_like_its_parent() -> None:
    """Traced through (it overrides a method), ``FusableConv`` gives the plan ``nn.Conv2d`` gets by its rule."""
    plain, mixed = Sub(nn.Conv2d(C, 6, 3, padding=1)), Sub(FusableConv(C, 6, 3, padding=1))
    assert _key(skg.plan(plain, torch.randn(*X4))) == _key(skg.plan(mixed, torch.randn(*X4)))
