"""More models written the ways strangers write PyTorch (blocks lifted from timm, torchvision,
YOLO, UNet, SENet and friends; stateful layers, parametrisations, hooks, odd containers).

Each goes through the DESIGN.md oracle (``check_oracle``): plan, round trip, prune at 0.5,
masked dense == pruned on every zero-invariant group, the model bitwise untouched. ``plan`` may
refuse only with a ``SparseKitError``. See ``test_strangers.py`` for the first round.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as ckpt
from helpers import Body as StrangerBody
from helpers import assert_untouched, check_oracle, fingerprint, oracle_or_refusal
from torch import Tensor, nn

import sparsekit_graph as skg

C = 8
X4 = (2, 3, 8, 8)


def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """timm's drop_path, verbatim in spirit."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    return x * random_tensor / keep_prob


def make_divisible(v: float, divisor: int = 4) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


# -- timm / torchvision style blocks --------------------------------------------------------


class PatchEmbed(nn.Module):
    """timm PatchEmbed -> LayerNorm -> MLP -> token mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 12, 2, 2)
        self.norm = nn.LayerNorm(12)
        self.fc1, self.act, self.fc2 = nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = self.norm(x)
        if torch.jit.is_scripting():
            x = x + self.fc2(self.act(self.fc1(x)))
        else:
            x = x + drop_path(self.fc2(self.act(self.fc1(x))), 0.1, self.training)
        return self.head(x.mean(1))


class LayerScaleBlock(nn.Module):
    """ConvNeXt block: dwconv, channels-last LayerNorm, MLP, ``x.mul_(gamma)``, residual."""

    def __init__(self, dim: int = C) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-1 * torch.ones(dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        x.mul_(self.gamma)
        x = x.permute(0, 3, 1, 2)
        x = shortcut + drop_path(x, 0.0, self.training)
        return self.head(x.mean([-2, -1]))


class LayerNorm2dCF(nn.Module):
    """ConvNeXt's channels_first LayerNorm written by hand."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class LN2dPermute(nn.LayerNorm):
    """timm LayerNorm2d: permute, F.layer_norm, permute back."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SEtimm(nn.Module):
    def __init__(self, c: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd = make_divisible(c * rd_ratio)
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, rd, 1), nn.ReLU(inplace=True), nn.Conv2d(rd, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.fc1(x_se)))
        return x * x_se.sigmoid()


class SEHu(nn.Module):
    """The original SENet code: AdaptiveAvgPool2d, view(b, c), Linear, view(b, c, 1, 1), expand_as."""

    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(c, c // r, bias=False), nn.ReLU(inplace=True), nn.Linear(c // r, c, bias=False), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class ECA(nn.Module):
    """ECA: a conv1d across the channel axis (neighbouring channels mix)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        y = y.view(x.shape[0], -1, 1, 1).sigmoid()
        return x * y.expand_as(x)


class CBAMSpatial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * self.conv(s).sigmoid()


class CBAMChannel(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // 2), nn.ReLU(), nn.Linear(c // 2, c))

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3))))
        mx = self.mlp(F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3))))
        scale = torch.sigmoid(avg + mx).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class Ghost(nn.Module):
    """GhostNet module: ``torch.cat([x1, x2], 1)[:, :self.oup]`` with an odd ``oup``."""

    def __init__(self, inp: int, oup: int, ratio: int = 2) -> None:
        super().__init__()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = cbr(inp, init_channels, 1)
        self.cheap_operation = cbr(init_channels, new_channels, 3, g=init_channels)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.oup, :, :]


class ShuffleUnit(nn.Module):
    def __init__(self, c: int = C, how: str = "fn") -> None:
        super().__init__()
        self.stem, self.a, self.b, self.how = cbr(3, c), cbr(c, c, 1, g=2), cbr(c, c, 3, g=c), how
        self.shuffle = nn.ChannelShuffle(2)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.a(x)
        y = channel_shuffle(y, 2) if self.how == "fn" else self.shuffle(y)
        return self.head(x + self.b(y))


class Res2(nn.Module):
    """Res2Net bottle2neck: ``torch.split(x, width, 1)`` and a running ``torch.cat``."""

    def __init__(self, width: int = 4, scale: int = 3) -> None:
        super().__init__()
        self.width, self.nums = width, scale - 1
        self.conv1 = cbr(3, width * scale, 1)
        self.convs = nn.ModuleList(cbr(width, width) for _ in range(self.nums))
        self.conv3 = nn.Conv2d(width * scale, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        spx = torch.split(out, self.width, 1)
        sp = spx[0]
        for i in range(self.nums):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = self.convs[i](sp)
            out = sp if i == 0 else torch.cat((out, sp), 1)
        out = torch.cat((out, spx[self.nums]), 1)
        return self.conv3(out)


class Dense(nn.Module):
    """DenseNet block: a list of features and ``torch.cat(features, 1)``."""

    def __init__(self, growth: int = 4, n: int = 3) -> None:
        super().__init__()
        self.stem = cbr(3, 6)
        self.layers = nn.ModuleList(cbr(6 + i * growth, growth) for i in range(n))
        self.head = nn.Conv2d(6 + n * growth, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return self.head(torch.cat(features, 1))


class MobileViTLike(nn.Module):
    """MobileViT unfolding into patches with reshape/transpose and folding back."""

    def __init__(self, c: int = C, p: int = 2) -> None:
        super().__init__()
        self.p = p
        self.local = cbr(3, c)
        self.proj_in = nn.Conv2d(c, 12, 1)
        self.attn = nn.TransformerEncoderLayer(12, 2, 24, dropout=0.0, batch_first=True)
        self.proj_out = nn.Conv2d(12, c, 1)
        self.fuse = nn.Conv2d(2 * c, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.local(x)
        y = self.proj_in(x)
        B, Cc, H, W = y.shape
        p = self.p
        nh, nw = H // p, W // p
        y = y.reshape(B * Cc * nh, p, nw, p).transpose(1, 2)
        y = y.reshape(B, Cc, nh * nw, p * p).transpose(1, 3).reshape(B * p * p, nh * nw, Cc)
        y = self.attn(y)
        y = y.contiguous().view(B, p * p, nh * nw, Cc).transpose(1, 3).reshape(B * Cc * nh, nw, p, p)
        y = y.transpose(1, 2).reshape(B, Cc, nh * p, nw * p)
        return self.fuse(torch.cat([x, self.proj_out(y)], 1))


class NonLocal(nn.Module):
    def __init__(self, c: int = C, inter: int = 4) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.inter = inter
        self.g, self.theta, self.phi = nn.Conv2d(c, inter, 1), nn.Conv2d(c, inter, 1), nn.Conv2d(c, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(b, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter, -1)
        f = F.softmax(torch.matmul(theta_x, phi_x), dim=-1)
        y = torch.matmul(f, g_x).permute(0, 2, 1).contiguous()
        y = y.view(b, self.inter, *x.size()[2:])
        return self.head(self.W(y) + x)


class CoordAtt(nn.Module):
    def __init__(self, c: int = C, mip: int = 4) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.pool_h, self.pool_w = nn.AdaptiveAvgPool2d((None, 1)), nn.AdaptiveAvgPool2d((1, None))
        self.conv1, self.bn1, self.act = nn.Conv2d(c, mip, 1), nn.BatchNorm2d(mip), nn.Hardswish()
        self.conv_h, self.conv_w = nn.Conv2d(mip, c, 1), nn.Conv2d(mip, c, 1)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h, a_w = self.conv_h(x_h).sigmoid(), self.conv_w(x_w).sigmoid()
        return self.head(identity * a_w * a_h)


class SK(nn.Module):
    """Selective kernel: stack branches, sum, squeeze, per-branch logits, softmax over branches."""

    def __init__(self, c: int = C, m: int = 2) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.convs = nn.ModuleList(cbr(c, c, 3 + 2 * i) for i in range(m))
        self.fc = nn.Linear(c, 4)
        self.fcs = nn.ModuleList(nn.Linear(4, c) for _ in range(m))
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # (B, M, C, H, W)
        s = feats.sum(dim=1).mean(-1).mean(-1)
        z = self.fc(s)
        att = torch.stack([fc(z) for fc in self.fcs], dim=1).softmax(dim=1)
        v = (feats * att.unsqueeze(-1).unsqueeze(-1)).sum(dim=1)
        return self.head(v)


class SPPF(nn.Module):
    """YOLOv5 SPPF and Focus."""

    def __init__(self) -> None:
        super().__init__()
        self.focus = cbr(12, C, 3)
        self.cv1, self.cv2 = cbr(C, 4, 1), cbr(16, 6, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.focus(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class C2f(nn.Module):
    """YOLOv8 C2f: ``list(chunk)``, ``extend`` with a generator, cat."""

    def __init__(self, c1: int = 3, c2: int = 6, n: int = 2) -> None:
        super().__init__()
        self.c = 4
        self.cv1 = cbr(c1, 2 * self.c, 1)
        self.cv2 = cbr((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(cbr(self.c, self.c) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fSplit(C2f):
    """The same block, the ``forward_split`` spelling."""

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class RepVGG(nn.Module):
    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.head(F.relu(self.dense(x) + self.one(x) + self.identity(x)))


class PatchMerging(nn.Module):
    """Swin patch merging on (B, H, W, C)."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(3, c)
        self.norm, self.reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
        self.head = nn.Linear(2 * c, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        x0, x1, x2, x3 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        return self.head(self.reduction(self.norm(x)).mean((1, 2)))


class Mixer(nn.Module):
    """MLP-Mixer: token mixing on the transposed sequence."""

    def __init__(self, n: int = 16, c: int = C) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, c, 2, 2)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.tok = nn.Sequential(nn.Linear(n, 12), nn.GELU(), nn.Linear(12, n))
        self.ch = nn.Sequential(nn.Linear(c, 12), nn.GELU(), nn.Linear(12, c))
        self.head = nn.Linear(c, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.tok(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.ch(self.norm2(x))
        return self.head(x.mean(dim=1))


class AttnPool(nn.Module):
    """CLIP AttentionPool2d: flatten, permute, prepend the mean, positional embedding,
    ``F.multi_head_attention_forward`` with separate projections."""

    def __init__(self, c: int = C, heads: int = 2, out: int = 5) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.positional_embedding = nn.Parameter(torch.randn(17, c) / c**0.5)
        self.k_proj, self.q_proj, self.v_proj = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.c_proj, self.num_heads = nn.Linear(c, out), heads

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(self.stem(x), 2)
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False,
        )  # fmt: skip
        return x.squeeze(0)


class UNetUp(nn.Module):
    """UNet ``Up``: upsample, pad to the skip's size, cat, double conv."""

    def __init__(self) -> None:
        super().__init__()
        self.inc, self.down = cbr(3, 6), nn.Sequential(nn.MaxPool2d(2), cbr(6, 8))
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv = nn.Sequential(cbr(10, 6), cbr(6, 6))
        self.outc = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x2 = self.inc(x)
        x1 = self.up(self.down(x2))
        diffY, diffX = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        return self.outc(self.conv(torch.cat([x2, x1], dim=1)))


class BoT(nn.Module):
    """BoTNet-style MHSA on a conv map with one qkv conv and einsum."""

    def __init__(self, c: int = C, heads: int = 2) -> None:
        super().__init__()
        self.stem, self.heads = cbr(3, c), heads
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        self.proj = nn.Conv2d(c, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        B, Cc, H, W = x.shape
        q, k, v = self.qkv(x).reshape(B, 3, self.heads, Cc // self.heads, H * W).unbind(1)
        attn = torch.einsum("bhdi,bhdj->bhij", q, k).softmax(-1)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(B, Cc, H, W)
        return self.proj(out)


class PoolFormer(nn.Module):
    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.stem, self.norm = cbr(3, c), nn.GroupNorm(1, c)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.layer_scale = nn.Parameter(torch.full((c,), 0.5))
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.norm(x)
        x = x + self.layer_scale.unsqueeze(-1).unsqueeze(-1) * (self.pool(y) - y)
        return self.head(x)


class GCBlock(nn.Module):
    """GCNet context block: attention pooling via matmul of (B, 1, C, HW) and (B, 1, HW, 1)."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.stem = cbr(3, c)
        self.conv_mask = nn.Conv2d(c, 1, 1)
        self.channel_add = nn.Sequential(nn.Conv2d(c, 4, 1), nn.LayerNorm([4, 1, 1]), nn.ReLU(), nn.Conv2d(4, c, 1))
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, c, h, w = x.size()
        input_x = x.view(b, c, h * w).unsqueeze(1)
        mask = self.conv_mask(x).view(b, 1, h * w).softmax(2).unsqueeze(-1)
        context = torch.matmul(input_x, mask).view(b, c, 1, 1)
        return self.head(x + self.channel_add(context))


class Maxout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C // 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        B, Cc, H, W = h.shape
        return self.b(h.view(B, Cc // 2, 2, H, W).max(2)[0])


class Highway(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, C)
        self.h, self.t = nn.Linear(C, C), nn.Linear(C, C)
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.inp(x))
        t = torch.sigmoid(self.t(x))
        return self.head(F.relu(self.h(x)) * t + x * (1 - t))


# -- sequences ------------------------------------------------------------------------------


class ConvRNN(nn.Module):
    """CRNN: conv features, height pooled, (B, W, C) into a recurrent layer."""

    def __init__(self, rnn: nn.Module, hid: int) -> None:
        super().__init__()
        self.cnn, self.rnn, self.fc = cbr(3, C), rnn, nn.Linear(hid, 5)

    def forward(self, x: Tensor) -> Tensor:
        f = self.cnn(x).mean(2).permute(0, 2, 1)  # (B, W, C)
        out, _ = self.rnn(f)
        return self.fc(out[:, -1])


class SeqFirstRNN(nn.Module):
    """(T, B, C) as torch's recurrent layers default to."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn, self.rnn, self.fc = cbr(3, C), nn.LSTM(C, 6, num_layers=2), nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        f = self.cnn(x).mean(2).permute(2, 0, 1)  # (W, B, C)
        out, (h, c) = self.rnn(f)
        return self.fc(h[-1])


class MHAkv(nn.Module):
    """nn.MultiheadAttention with kdim/vdim and the default (L, B, E) layout."""

    def __init__(self) -> None:
        super().__init__()
        self.q_in, self.kv_in = nn.Linear(6, C), nn.Linear(6, 10)
        self.mha = nn.MultiheadAttention(C, 2, kdim=10, vdim=10)
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = x.transpose(0, 1)  # (L, B, 6)
        q, kv = F.relu(self.q_in(s)), F.relu(self.kv_in(s))
        out, _ = self.mha(q, kv, kv, need_weights=False)
        return self.head(out).transpose(0, 1)


class MHASelf(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.bf = batch_first
        self.inp = nn.Linear(6, C)
        self.mha = nn.MultiheadAttention(C, 2, batch_first=batch_first)
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h if self.bf else h.transpose(0, 1)
        out = self.mha(h, h, h)[0]
        out = out if self.bf else out.transpose(0, 1)
        return self.head(out + h if self.bf else out + h.transpose(0, 1))


class PreNormEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, C)
        self.enc = nn.TransformerEncoderLayer(C, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.enc(self.inp(x)))


class EmbBag(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, C, padding_idx=0)
        self.bag = nn.EmbeddingBag(20, C, mode=mode)
        self.fc, self.head = nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids).mean(1) + self.bag(ids)
        return self.head(F.relu(self.fc(h)))


class FEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(20, C))
        self.fc, self.head = nn.Linear(C, 6), nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = F.embedding(ids, self.table, padding_idx=0, max_norm=None)
        return self.head(F.relu(self.fc(h)))


class TiedLM(nn.Module):
    """Tied input/output embeddings: logits ``h @ emb.weight.T`` and ``F.linear(h, emb.weight)``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.emb, self.how = nn.Embedding(20, C), how
        self.fc = nn.Linear(C, C)

    def forward(self, ids: Tensor) -> Tensor:
        h = F.relu(self.fc(self.emb(ids)))
        return h @ self.emb.weight.T if self.how == "matmul" else F.linear(h, self.emb.weight)


class Bil(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, C), nn.Linear(6, 5)
        self.bil = nn.Bilinear(C, 5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bil(F.relu(self.a(x)), F.relu(self.b(x)))


# -- parameters used in odd ways ------------------------------------------------------------


class CatWeights(nn.Module):
    """Weights concatenated in forward: ``F.linear(x, torch.cat([w1, w2]))``."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4, 6))
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(F.linear(x, torch.cat([self.w1, self.w2]))))


class ParamList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(C, 6) * 0.4), nn.Parameter(torch.randn(C, C) * 0.4)])
        self.bs = nn.ParameterList([nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))])
        self.head = nn.Linear(C, 3)

    def forward(self, x: Tensor) -> Tensor:
        for w, b in zip(self.ws, self.bs):
            x = F.relu(F.linear(x, w, b))
        return self.head(x)


class ModDictLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({"c1": cbr(3, C), "c2": cbr(C, C), "c3": nn.Conv2d(C, 3, 1)})

    def forward(self, x: Tensor) -> Tensor:
        for _, m in self.blocks.items():
            x = m(x)
        return x


Conv3 = functools.partial(nn.Conv2d, kernel_size=3, padding=1, bias=False)
BN = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


class PartialLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.c2 = Conv3(3, C), BN(C), Conv3(C, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.c2(F.relu6(self.b1(self.c1(x))))


class Scale2(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return w * 2.0


class RowNorm(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return w / w.norm(dim=1, keepdim=True)


class Symmetric(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return w.triu() + w.triu(1).transpose(-1, -2)


def parametrized(p: nn.Module) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, C), nn.Linear(C, C), nn.Linear(C, 3)
            torch.nn.utils.parametrize.register_parametrization(self.b, "weight", p)

        def forward(self, x: Tensor) -> Tensor:
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    return Net()


class OldWeightNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.a = nn.utils.weight_norm(nn.Conv2d(3, C, 3, padding=1))
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.relu(self.a(x)))


class SlicedConvWeight(nn.Module):
    """A conv reading only the first input channels of its weight: ``F.conv2d(x, w[:, :k])``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C + 4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return F.conv2d(h, self.b.weight[:, : h.shape[1]], self.b.bias)


class MaskBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)
        self.register_buffer("mask", (torch.arange(C) % 3 != 0).float().view(1, C, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x) * self.mask)


class IndexBuffer(nn.Module):
    """``x[:, self.idx]`` with a buffer of channel indices (a fixed permutation)."""

    def __init__(self, perm: bool) -> None:
        super().__init__()
        self.a = cbr(3, C)
        idx = torch.randperm(C, generator=torch.Generator().manual_seed(3)) if perm else torch.tensor([0, 2, 3, 5])
        self.register_buffer("idx", idx)
        self.b = nn.Conv2d(len(idx), 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x)[:, self.idx])


class GatherChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)
        self.register_buffer("idx", torch.tensor([1, 0, 3, 2, 5, 4, 7, 6]))

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        idx = self.idx.view(1, -1, 1, 1).expand(h.shape[0], -1, h.shape[2], h.shape[3])
        return self.b(torch.gather(h, 1, idx))


class StraightThrough(nn.Module):
    """Quantisation with a straight-through estimator, a no_grad statistic and dtype casts."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        with torch.no_grad():
            scale = h.abs().amax((2, 3), keepdim=True) + 1e-3
        q = h + ((h / scale * 4).round() * scale / 4 - h).detach()
        q = q.half().float().to(x.dtype).type_as(x)
        return self.b(q)


class AutocastOff(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        with torch.autocast("cpu", enabled=False):
            h = h.float() * 2
        return self.b(h)


class InplaceResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c1, self.c2, self.b = cbr(3, C), cbr(C, C), nn.Conv2d(C, C, 1), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.a(x)
        y = self.c2(self.c1(x))
        y += x
        y.relu_()
        return self.b(y)


class SliceWriteCat(nn.Module):
    """``out = x.new_zeros(...); out[:, :c] = a; out[:, c:] = b`` instead of ``torch.cat``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = cbr(3, 4), cbr(3, 4), nn.Conv2d(C, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        out = x.new_zeros(x.shape[0], 8, x.shape[2], x.shape[3])
        out[:, :4] = a
        out[:, 4:] = b
        return self.head(out)


class MyConv(nn.Conv2d):
    """A conv subclass whose forward calls ``super().forward`` and scales."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 0.5


class SuperForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = MyConv(3, C, 3, padding=1), nn.BatchNorm2d(C), MyConv(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.relu(self.bn(self.a(x))))


class ActMixin:
    def act(self, x: Tensor) -> Tensor:
        return F.hardswish(x)


@dataclasses.dataclass(frozen=True)
class Cfg:
    width: int = C
    classes: int = 3


class Configured(ActMixin, nn.Module):
    def __init__(self, cfg: Cfg = Cfg()) -> None:
        super().__init__()
        self.cfg = cfg
        self.a, self.bn, self.b = (
            nn.Conv2d(3, cfg.width, 3, padding=1),
            nn.BatchNorm2d(cfg.width),
            nn.Conv2d(cfg.width, cfg.classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.act(self.bn(self.a(x))))


class CallOverride(nn.Module):
    """A submodule overriding ``__call__`` (some wrappers do)."""

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(C, C, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x)

        def __call__(self, x: Tensor) -> Tensor:
            return super().__call__(x) + x

    def __init__(self) -> None:
        super().__init__()
        self.a, self.inner, self.b = cbr(3, C), self.Inner(), nn.Conv2d(C, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.relu(self.inner(self.a(x))))


class CoordConv(nn.Module):
    """CoordConv: coordinate channels from ``torch.linspace`` (made on the CPU) concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, C), nn.Conv2d(C + 2, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        B, _, H, W = h.shape
        yy = torch.linspace(-1, 1, H).view(1, 1, H, 1).expand(B, 1, H, W)
        xx = torch.linspace(-1, 1, W).view(1, 1, 1, W).expand(B, 1, H, W)
        return self.b(torch.cat([h, xx, yy], 1))


def with_forward_hook() -> tuple[nn.Module, Tensor]:
    model = nn.Sequential(cbr(3, C), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, 4, 1))
    model[1].register_forward_hook(lambda m, i, o: o.flip(1))
    return model, torch.randn(*X4)


class LazyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc, self.head = cbr(3, C), nn.LazyLinear(6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.fc(torch.flatten(F.adaptive_avg_pool2d(self.a(x), 1), start_dim=1))))


def lazy() -> tuple[nn.Module, Tensor]:
    model, x = LazyNet(), torch.randn(*X4)
    model(x)
    return model, x


# -- more stateful, tied and wrapped models ------------------------------------------------


class BNNoAffine(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C, affine=False)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.a(x))))


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.blk = cbr(C, C)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        x = self.a(x)
        x = ckpt.checkpoint(self.blk, x, use_reentrant=False) + x
        return self.b(x)


class SegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = cbr(3, C)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.dec = nn.Conv2d(C, 3, 3, padding=1)

    def forward(self, x):
        h = self.enc(x)
        p, idx = self.pool(h)
        return self.dec(self.unpool(p, idx, output_size=h.size()))


class FPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = cbr(3, 6)
        self.c2 = cbr(6, 8, s=2)
        self.l1 = nn.Conv2d(6, 4, 1)
        self.l2 = nn.Conv2d(8, 4, 1)
        self.out = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        p2 = self.l2(f2)
        p1 = self.l1(f1) + F.interpolate(p2, size=f1.shape[-2:], mode="nearest")
        return [self.out(p1), self.out(p2)]


class QuantStubs(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.ao.quantization.QuantStub()
        self.dq = torch.ao.quantization.DeQuantStub()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.ff = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x):
        x = self.q(x)
        h = self.a(x)
        h = self.ff.add(h, h)
        return self.dq(self.b(h))


class NoGradForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)

    @torch.no_grad()
    def forward(self, x):
        return self.b(self.a(x))


class FrozenBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        for p in self.a.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.b(self.a(x))


class BorrowedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        h = self.a(x)
        h = F.relu(
            F.conv2d(
                h, self.conv.weight, self.conv.bias, self.conv.stride, self.conv.padding, self.conv.dilation, self.conv.groups
            )
        )
        h = F.relu(self.conv._conv_forward(h, self.conv.weight, self.conv.bias))
        return self.b(h)


class Interleave(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 4)
        self.c = cbr(3, 4)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(torch.stack([self.a(x), self.c(x)], dim=2).flatten(1, 2))


class PadModes(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.a = cbr(3, C)
        self.conv = nn.Conv2d(C, C, 3, padding=1, padding_mode=mode)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.conv(self.a(x))))


class ChunkUneven(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(2, 4, 1)

    def forward(self, x):
        p, q, r = self.a(x).chunk(3, 1)
        return self.b(p) + self.b(q) + self.c(r)


class TensorSplitIdx(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        p, q, r = torch.tensor_split(self.a(x), [2, 5], dim=1)
        return self.b(p) + self.c(q) + self.c(r)


class RepeatView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(3 * C, 4, 1)

    def forward(self, x):
        h = self.a(x)
        B, Cc, H, W = h.shape
        return self.b(h.unsqueeze(1).repeat(1, 3, 1, 1, 1).view(B, -1, H, W))


class DWTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.up = nn.ConvTranspose2d(C, C, 2, stride=2, groups=C)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.up(self.a(x))))


class Rotary(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, C)
        self.k = nn.Linear(6, C)
        self.v = nn.Linear(6, C)
        self.o = nn.Linear(C, 3)
        inv = 1.0 / (10000 ** (torch.arange(0, C, 2).float() / C))
        t = torch.arange(5).float()
        fr = torch.outer(t, inv)
        emb = torch.cat((fr, fr), -1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    @staticmethod
    def rot(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = q * self.cos + self.rot(q) * self.sin
        k = k * self.cos + self.rot(k) * self.sin
        a = (
            (q @ k.transpose(-1, -2) * C**-0.5)
            .masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
            .softmax(-1)
        )
        return self.o(a @ v)


class ClsToken(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, C, 2, 2)
        self.cls = nn.Parameter(torch.zeros(1, 1, C))
        self.pos = nn.Parameter(torch.randn(1, 17, C) * 0.02)
        self.fc1 = nn.Linear(C, 12)
        self.fc2 = nn.Linear(12, C)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1) + self.pos
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


class MaskedAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(6, 3 * C)
        self.proj = nn.Linear(C, 3)
        self.h = 2

    def forward(self, x, mask=None):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (C // self.h) ** -0.5
        if mask is not None:
            attn = attn.masked_fill(mask == 0, float("-inf"))
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class OrderedSeq(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(3, C, 3, padding=1)),
                    ("bn", nn.BatchNorm2d(C)),
                    ("act", nn.ReLU(True)),
                    ("out", nn.Conv2d(C, 4, 1)),
                ]
            )
        )

    def forward(self, x):
        return self.f(x)


class MultiOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.c = nn.Linear(C, 2)

    def forward(self, x):
        h = self.a(x)
        return {"seg": self.b(h), "cls": self.c(h.mean((2, 3)))}


class SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.c = nn.Conv2d(3, C, 1)
        self.bn = nn.BatchNorm2d(C)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.a(x))) + F.relu(self.bn(self.c(x))))


class InstTrack(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.n = nn.InstanceNorm2d(C, affine=True, track_running_stats=True)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.n(self.a(x))))


class HelperMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)

    def forward_features(self, x):
        return self.a(x)

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.b(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class ScaleAttr(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.scale = C**-0.5

    def forward(self, x):
        return self.b(self.a(x) * self.scale)


class Conv1dSeq(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, C)
        self.c1 = nn.Conv1d(C, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.c2 = nn.Conv1d(6, 6, 3, padding=2, dilation=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        h = self.emb(ids).transpose(1, 2)
        h = F.relu(self.bn(self.c1(h)))
        h = F.relu(self.c2(h))
        return self.fc(F.adaptive_max_pool1d(h, 1).squeeze(-1))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(3, C, 3, padding=1)
        self.bn = nn.BatchNorm3d(C)
        self.b = nn.Conv3d(C, 4, (1, 3, 3), padding=(0, 1, 1), groups=4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.b(F.relu(self.bn(self.a(x))))
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


class EmbBagOffsets(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(20, C))
        self.fc = nn.Linear(C, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, ids):
        flat = ids.flatten()
        off = torch.arange(0, flat.numel(), ids.shape[1])
        return self.head(F.relu(self.fc(F.embedding_bag(flat, self.w, off, mode="sum"))))


class AdaptiveMaxIdx(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.p = nn.AdaptiveMaxPool2d(2, return_indices=True)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(self.p(self.a(x))[0])


class Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.feats = {}
        self.a.register_forward_hook(lambda m, i, o: self.feats.__setitem__("a", o))

    def forward(self, x):
        return self.b(self.a(x))


class FeatureHookScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.b.register_forward_pre_hook(lambda m, i: (i[0] * 2,))

    def forward(self, x):
        return self.b(self.a(x))


def dp():
    m = nn.DataParallel(nn.Sequential(cbr(3, C), nn.Conv2d(C, 4, 1)))
    return m, torch.randn(*X4)


class TiedConvAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, C, 3, padding=1)
        self.mid = nn.Conv2d(C, C, 1)

    def forward(self, x):
        h = F.relu(self.mid(F.relu(self.enc(x))))
        return F.conv_transpose2d(h, self.enc.weight, padding=1)


class TiedMLPAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, C)
        self.mid = nn.Linear(C, C)

    def forward(self, x):
        h = F.relu(self.mid(F.relu(self.enc(x))))
        return F.linear(h, self.enc.weight.t())


class Accum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 1) for _ in range(2))
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        h = self.a(x)
        acc = torch.zeros(h.shape[0], self.convs[0].out_channels, h.shape[2], h.shape[3])
        for c in self.convs:
            acc += F.relu(c(h))
        return self.b(acc)


class CoordConvB(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C + 2, 4, 1)

    def forward(self, x):
        h = self.a(x)
        B, _, H, W = h.shape
        yy = torch.linspace(-1, 1, H).view(1, 1, H, 1).expand(B, 1, H, W)
        xx = torch.linspace(-1, 1, W).view(1, 1, 1, W).expand(B, 1, H, W)
        return self.b(torch.cat([h, xx, yy], 1))


class LearnedExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.extra = nn.Parameter(torch.randn(1, 2, 1, 1))
        self.b = nn.Conv2d(C + 2, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, self.extra.expand(h.shape[0], -1, h.shape[2], h.shape[3])], 1))


class EMABuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.register_buffer("ema", torch.zeros(C))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        h = self.a(x)
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(h.mean((0, 2, 3)), alpha=0.1)
                self.steps += 1
        return self.b(h - self.ema.view(1, -1, 1, 1))


class TrainBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.aux = nn.Conv2d(C, 2, 1)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        h = self.a(x)
        out = self.b(h)
        if self.training:
            return out, self.aux(h)
        return out


class DropBlockish(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.p = 0.1

    def forward(self, x):
        h = self.a(x)
        if not self.training or self.p == 0:
            return self.b(h)
        mask = (torch.rand(h.shape[0], 1, h.shape[2], h.shape[3]) > self.p).float()
        return self.b(h * mask * mask.numel() / mask.sum())


class VQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = cbr(3, C)
        self.codebook = nn.Embedding(16, C)
        self.dec = nn.Conv2d(C, 3, 1)

    def forward(self, x):
        z = self.enc(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.weight.t() + self.codebook.weight.pow(2).sum(1)
        idx = d.argmin(1)
        q = self.codebook(idx).view(z.shape[0], z.shape[2], z.shape[3], C).permute(0, 3, 1, 2)
        q = z + (q - z).detach()
        return self.dec(q)


class StatefulCounter(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.b = nn.Conv2d(C, 4, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.b(self.a(x))


class ParamAsActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.q = nn.Parameter(torch.randn(5, C))
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x).flatten(2)  # (B, C, HW)
        att = torch.softmax(self.q @ h, -1)  # (B, 5, HW)
        return self.head((att @ h.transpose(1, 2)).sum(-1))


class SliceParamByAttr(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.w = nn.Parameter(torch.randn(4, C, 1, 1))
        self.k = 4

    def forward(self, x):
        h = self.a(x)
        return F.conv2d(h, self.w[: self.k])


class GroupedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.heads = nn.ModuleList(nn.Conv2d(C // 2, 2, 1) for _ in range(2))

    def forward(self, x):
        h = self.a(x)
        return torch.cat([m(p) for m, p in zip(self.heads, h.chunk(2, 1))], 1)


class IdentityInit(nn.Module):
    """Dirac-initialised conv plus residual: a plain conv in disguise."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.c = nn.Conv2d(C, C, 3, padding=1)
        nn.init.dirac_(self.c.weight)
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(F.relu(self.c(h)) + h)


class NormInLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, C)
        self.ln = nn.LayerNorm([C, 8, 8])
        self.b = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.b(self.ln(self.a(x)))


# -- body spellings: conv-BN-ReLU (8 channels) -> body -> 1x1 conv -----------------------


class Body(StrangerBody):
    example_shape = X4


def _cdist(s, h):
    feats = h.mean((2, 3))  # (B, C)
    return -torch.cdist(feats, s.protos)  # (B, K)


def _cos(s, h):
    return h * F.cosine_similarity(h, s.q.view(1, -1, 1, 1).expand_as(h), dim=1).unsqueeze(1)


def _cos_pair(s, h):
    return h * F.cosine_similarity(h, h.flip(-1), dim=1)[:, None]


def _sort_channels(s, h):
    return torch.sort(h, dim=1, descending=True).values


def _bucket(s, h):
    return h * torch.bucketize(h, s.edges).to(h.dtype)


def _grid(s, h):
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).unsqueeze(0).expand(h.shape[0], -1, -1)
    grid = F.affine_grid(theta, list(h.shape), align_corners=False)
    return F.grid_sample(h, grid, align_corners=False)


def _expand_reshape(s, h):
    B, Cc, H, W = h.shape
    return h[:, :, None].expand(B, Cc, 2, H, W).reshape(B, Cc * 2, H, W)


def _unflatten_groups(s, h):
    return h.unflatten(1, (2, -1)).sum(1)


def _unflatten_mean(s, h):
    return h.unflatten(1, (2, -1)).mean(2)


def _inplace_add_buffer(s, h):
    g = h.clone()
    g += s.shift.view(1, -1, 1, 1)
    return g


def _new_zeros_add(s, h):
    z = h.new_zeros(h.shape)
    z.add_(h)
    return z


def _index_add(s, h):
    out = torch.zeros_like(h)
    return out.index_add(1, torch.arange(h.shape[1]), h)


def _scatter_channels(s, h):
    out = torch.zeros_like(h)
    idx = torch.arange(h.shape[1]).view(1, -1, 1, 1).expand_as(h)
    return out.scatter(1, idx, h)


def _channel_pool3d(s, h):
    return F.max_pool3d(h.unsqueeze(1), (2, 1, 1)).squeeze(1)


def _avgpool_channels(s, h):
    B, Cc, H, W = h.shape
    return F.avg_pool1d(h.permute(0, 2, 3, 1).reshape(B * H * W, 1, Cc), 2).reshape(B, H, W, Cc // 2).permute(0, 3, 1, 2)


def _mm_flat(s, h):
    B = h.shape[0]
    return torch.mm(h.mean((2, 3)).view(B, -1), s.w)


def _addmm_flat(s, h):
    return torch.addmm(s.bias, h.mean((2, 3)), s.w)


def _outer_gram(s, h):
    B, Cc = h.shape[:2]
    f = h.reshape(B, Cc, -1)
    return torch.bmm(f, f.transpose(1, 2)).reshape(B, Cc * Cc)


def _lrn_fn(s, h):
    return F.local_response_norm(h, 3)


def _einsum_perm(s, h):
    return torch.einsum("bhwc,cd->bdhw", h.permute(0, 2, 3, 1), s.w)


def _einsum_upper(s, h):
    return torch.einsum("NCHW,KC->NKHW", h, s.w)


def _einsum_implicit(s, h):
    return torch.einsum("bchw,dc", h, s.w)  # implicit output: "bdhw"


def _einsum_diag_scale(s, h):
    return torch.einsum("bchw,cc->bchw", h, s.sq)


def _einsum_sublist(s, h):
    return torch.einsum(h, [0, 1, 2, 3], s.w, [4, 1], [0, 4, 2, 3])


def _matmul_chlast(s, h):
    return (h.permute(0, 2, 3, 1) @ s.w).permute(0, 3, 1, 2)


def _conv_weight_cat(s, h):
    return F.conv2d(h, torch.cat([s.w1, s.w2], 0), padding=1)


def _pad_channels_both(s, h):
    return F.pad(h, (0, 0, 0, 0, 1, 2), value=0.0)


def _pad_replicate_spatial(s, h):
    return F.pad(h, (1, 1, 1, 1), mode="replicate")


def _pad_reflect_module(s, h):
    return s.pad(h)


def _chunk_swap(s, h):
    a, b = torch.chunk(h, 2, dim=1)
    return torch.cat((b, a), dim=1)


def _std_sq(s, h):
    return h * h.std(1)[:, None]


def _group_norm_fn_cc(s, h):
    return F.group_norm(h, h.shape[1])


def _instance_norm_fn(s, h):
    return F.instance_norm(h, weight=s.w, bias=s.bb)


def _normalize_scale(s, h):
    return F.normalize(h, dim=1) * s.scale


def _norm_div(s, h):
    return h / h.norm(dim=1, keepdim=True).clamp_min(1e-6)


def _logsumexp_pool(s, h):
    return torch.logsumexp(h, 1, keepdim=True) * h


def _cumsum_rev(s, h):
    return h.flip(1).cumsum(1).flip(1)


def _topk_idx(s, h):
    return h.topk(3, dim=1).indices.to(h.dtype)


def _mean_size(s, h):
    return h * (h.sum(1, keepdim=True) / h.size()[1])


def _sum_div_len(s, h):
    return h * h.sum(1, keepdim=True) / len(s.bn.weight)


def _rms_norm(s, h):
    return h * torch.rsqrt(h.pow(2).mean(1, keepdim=True) + 1e-6) * s.g.view(1, -1, 1, 1)


def _softplus_sum(s, h):
    return h * F.softplus(h).sum(1, keepdim=True)


def _cos_gate(s, h):
    return h * torch.cos(h).sum(1, keepdim=True)


def _elu_sum(s, h):
    return h * F.elu(h - 0.5).sum(1, keepdim=True)


def _bias_sum(s, h):
    return h * (h + s.bias.view(1, -1, 1, 1)).sum(1, keepdim=True)


def _max_pool_channels_last(s, h):
    return F.max_pool1d(h.flatten(2).transpose(1, 2), 2).transpose(1, 2).reshape(h.shape[0], -1, *h.shape[2:])


def _dropout2d(s, h):
    return F.dropout2d(h, 0.5, training=False) + s.do(h)


def _split_sizes_kw(s, h):
    a, b = h.split(split_size=[3, 5], dim=1)
    return torch.cat([b, a], 1)


def _clone_setitem_scale(s, h):
    g = h.clone()
    g[:, 2:4] *= 2
    return g


def _masked_fill_param(s, h):
    return h.masked_fill(s.gate.view(1, -1, 1, 1) < 0.5, 0.0)


def _where_param(s, h):
    return torch.where(s.gate.view(1, -1, 1, 1) > 0.5, h, -1.0)


def _clamp_max(s, h):
    return h.clamp(max=1.0) + torch.clamp(h, 0.1, 0.9)


def _mul_buffer_scale(s, h):
    return h * s.scale_buf


def _linear_channels_last_sliced(s, h):
    return F.linear(h.permute(0, 2, 3, 1), s.w[:, : h.shape[1]]).permute(0, 3, 1, 2)


def _chunk_gate(s, h):
    x1, x2 = h.chunk(2, dim=1)
    return x1 * F.gelu(x2)


def _adaptive_max_flat(s, h):
    return F.adaptive_max_pool2d(h, 1).flatten(1)


def _sum_hw_div(s, h):
    return h.sum(dim=(2, 3)) / (h.shape[2] * h.shape[3])


def _view_bc(s, h):
    return h.mean((2, 3)).view(h.size(0), -1)


def _repeat_interleave_expand(s, h):
    return h.repeat_interleave(torch.tensor([2] * h.shape[1]), dim=1)


def _conv1d_dilated(s, h):
    return s.c1d(h.flatten(2)).view(h.shape[0], -1, h.shape[2], h.shape[3])


def _conv3d_grouped(s, h):
    return s.c3d(h.unsqueeze(2)).squeeze(2)


def _convT_out_pad(s, h):
    return s.ct(h)


def _convT1d(s, h):
    return s.ct1(h.flatten(2))[..., : h.shape[2] * h.shape[3]].view(h.shape[0], -1, h.shape[2], h.shape[3])


def _roll_both(s, h):
    return torch.roll(h, shifts=(1, 1), dims=(2, 3))


def _fold_module(s, h):
    return s.fold(s.unfold(h))


def _lrn_module(s, h):
    return s.lrn(h)


def _bn_inline(s, h):
    return (h - s.rm.view(1, -1, 1, 1)) * torch.rsqrt(s.rv.view(1, -1, 1, 1) + 1e-5) * s.bw.view(1, -1, 1, 1)


def _x_T_linear(s, h):
    return (s.w @ h.flatten(2)).view(h.shape[0], -1, *h.shape[2:])


def _baddbmm_flat(s, h):
    f = h.flatten(2)  # (B, C, HW)
    return torch.baddbmm(s.bb.view(1, -1, 1), s.w.expand(h.shape[0], -1, -1), f).view(h.shape[0], -1, *h.shape[2:])


BODIES: dict[str, tuple[Callable[..., Tensor], dict]] = {
    "cdist_protos": (_cdist, {"protos": nn.Parameter(torch.randn(5, C))}),
    "cosine_sim_param": (_cos, {"q": nn.Parameter(torch.randn(C))}),
    "cosine_sim_pair": (_cos_pair, {}),
    "sort_channels": (_sort_channels, {}),
    "bucketize": (_bucket, {"edges": torch.tensor([0.1, 0.5, 1.0])}),
    "grid_sample_identity": (_grid, {}),
    "expand_reshape": (_expand_reshape, {}),
    "unflatten_groups_sum": (_unflatten_groups, {}),
    "unflatten_groups_mean": (_unflatten_mean, {}),
    "iadd_buffer": (_inplace_add_buffer, {"shift": torch.rand(C)}),
    "new_zeros_add_": (_new_zeros_add, {}),
    "index_add_channels": (_index_add, {}),
    "scatter_channels": (_scatter_channels, {}),
    "max_pool3d_channels": (_channel_pool3d, {}),
    "avg_pool1d_channels": (_avgpool_channels, {}),
    "mm_flat": (_mm_flat, {"w": nn.Parameter(torch.randn(C, 5))}),
    "addmm_flat": (_addmm_flat, {"w": nn.Parameter(torch.randn(C, 5)), "bias": nn.Parameter(torch.zeros(5))}),
    "gram_channels": (_outer_gram, {}),
    "lrn_fn": (_lrn_fn, {}),
    "lrn_module": (_lrn_module, {"lrn": nn.LocalResponseNorm(2)}),
    "einsum_permuted": (_einsum_perm, {"w": nn.Parameter(torch.randn(C, 6))}),
    "einsum_upper": (_einsum_upper, {"w": nn.Parameter(torch.randn(6, C))}),
    "einsum_implicit_out": (_einsum_implicit, {"w": nn.Parameter(torch.randn(6, C))}),
    "einsum_diag": (_einsum_diag_scale, {"sq": nn.Parameter(torch.randn(C, C))}),
    "einsum_sublist": (_einsum_sublist, {"w": nn.Parameter(torch.randn(6, C))}),
    "matmul_channels_last": (_matmul_chlast, {"w": nn.Parameter(torch.randn(C, 6))}),
    "conv_weight_cat": (
        _conv_weight_cat,
        {"w1": nn.Parameter(torch.randn(3, C, 3, 3) * 0.2), "w2": nn.Parameter(torch.randn(3, C, 3, 3) * 0.2)},
    ),
    "pad_channels_both": (_pad_channels_both, {}),
    "pad_replicate": (_pad_replicate_spatial, {}),
    "pad_reflect_module": (_pad_reflect_module, {"pad": nn.ReflectionPad2d(1)}),
    "chunk_swap": (_chunk_swap, {}),
    "std_channels_nokeep": (_std_sq, {}),
    "group_norm_fn_cc": (_group_norm_fn_cc, {}),
    "instance_norm_fn": (_instance_norm_fn, {"w": nn.Parameter(torch.rand(C) + 0.5), "bb": nn.Parameter(torch.zeros(C))}),
    "normalize_scale": (_normalize_scale, {"scale": nn.Parameter(torch.tensor(3.0))}),
    "norm_clamp_min": (_norm_div, {}),
    "logsumexp_keep": (_logsumexp_pool, {}),
    "cumsum_reversed": (_cumsum_rev, {}),
    "topk_indices": (_topk_idx, {}),
    "mean_size_tuple": (_mean_size, {}),
    "sum_div_len_param": (_sum_div_len, {}),
    "rms_norm_channels": (_rms_norm, {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "softplus_sum": (_softplus_sum, {}),
    "cos_sum": (_cos_gate, {}),
    "elu_sum": (_elu_sum, {}),
    "bias_then_sum": (_bias_sum, {"bias": nn.Parameter(torch.rand(C))}),
    "max_pool1d_channels_last": (_max_pool_channels_last, {}),
    "dropout2d": (_dropout2d, {"do": nn.Dropout2d(0.1)}),
    "split_kw_swap": (_split_sizes_kw, {}),
    "setitem_scale_slice": (_clone_setitem_scale, {}),
    "masked_fill_param": (_masked_fill_param, {"gate": nn.Parameter(torch.rand(C))}),
    "where_param_neg": (_where_param, {"gate": nn.Parameter(torch.rand(C))}),
    "clamp_max": (_clamp_max, {}),
    "mul_buffer_scale": (_mul_buffer_scale, {"scale_buf": torch.rand(1, C, 1, 1) + 0.5}),
    "linear_sliced_channels_last": (_linear_channels_last_sliced, {"w": nn.Parameter(torch.randn(6, C + 3))}),
    "chunk_gelu_gate": (_chunk_gate, {}),
    "adaptive_max_flatten": (_adaptive_max_flat, {}),
    "sum_hw_div": (_sum_hw_div, {}),
    "view_bc": (_view_bc, {}),
    "repeat_interleave_tensor": (_repeat_interleave_expand, {}),
    "conv1d_dilated": (_conv1d_dilated, {"c1d": nn.Conv1d(C, 6, 3, padding=2, dilation=2, groups=2)}),
    "conv3d_grouped": (_conv3d_grouped, {"c3d": nn.Conv3d(C, 6, (1, 3, 3), padding=(0, 1, 1), groups=2)}),
    "convT_out_padding": (_convT_out_pad, {"ct": nn.ConvTranspose2d(C, 6, 3, stride=2, padding=1, output_padding=1, groups=2)}),
    "convT1d": (_convT1d, {"ct1": nn.ConvTranspose1d(C, 6, 3, padding=1, groups=2)}),
    "roll_spatial_pair": (_roll_both, {}),
    "fold_unfold_modules": (_fold_module, {"fold": nn.Fold((8, 8), 3, padding=1), "unfold": nn.Unfold(3, padding=1)}),
    "bn_inline_buffers": (_bn_inline, {"rm": torch.randn(C), "rv": torch.rand(C) + 0.5, "bw": nn.Parameter(torch.rand(C) + 0.5)}),
    "w_at_flat": (_x_T_linear, {"w": nn.Parameter(torch.randn(6, C))}),
    "baddbmm_flat": (_baddbmm_flat, {"w": nn.Parameter(torch.randn(1, 6, C)), "bb": nn.Parameter(torch.zeros(6))}),
}

MODELS: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "patch_embed": lambda: (PatchEmbed(), torch.randn(*X4)),
    "convnext_block": lambda: (LayerScaleBlock(), torch.randn(*X4)),
    "ln2d_by_hand": lambda: (nn.Sequential(cbr(3, C), LayerNorm2dCF(C), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "ln2d_permute": lambda: (nn.Sequential(cbr(3, C), LN2dPermute(C), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "se_timm": lambda: (nn.Sequential(cbr(3, C), SEtimm(C), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "se_hu": lambda: (nn.Sequential(cbr(3, C), SEHu(C), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "eca": lambda: (nn.Sequential(cbr(3, C), ECA(), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "cbam_spatial": lambda: (nn.Sequential(cbr(3, C), CBAMSpatial(), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "cbam_channel": lambda: (nn.Sequential(cbr(3, C), CBAMChannel(C), nn.Conv2d(C, 4, 1)), torch.randn(*X4)),
    "ghost": lambda: (nn.Sequential(cbr(3, 6), Ghost(6, 7), nn.Conv2d(7, 4, 1)), torch.randn(*X4)),
    "shuffle_fn": lambda: (ShuffleUnit(how="fn"), torch.randn(*X4)),
    "shuffle_module": lambda: (ShuffleUnit(how="module"), torch.randn(*X4)),
    "res2net": lambda: (Res2(), torch.randn(*X4)),
    "dense_list": lambda: (Dense(), torch.randn(*X4)),
    "mobilevit": lambda: (MobileViTLike(), torch.randn(*X4)),
    "non_local": lambda: (NonLocal(), torch.randn(*X4)),
    "coord_att": lambda: (CoordAtt(), torch.randn(*X4)),
    "sk": lambda: (SK(), torch.randn(*X4)),
    "sppf_focus": lambda: (SPPF(), torch.randn(*X4)),
    "c2f": lambda: (C2f(), torch.randn(*X4)),
    "c2f_split": lambda: (C2fSplit(), torch.randn(*X4)),
    "repvgg": lambda: (RepVGG(), torch.randn(*X4)),
    "patch_merging": lambda: (PatchMerging(), torch.randn(*X4)),
    "mixer": lambda: (Mixer(), torch.randn(*X4)),
    "clip_attnpool": lambda: (AttnPool(), torch.randn(*X4)),
    "unet_up": lambda: (UNetUp(), torch.randn(2, 3, 9, 9)),
    "botnet": lambda: (BoT(), torch.randn(*X4)),
    "poolformer": lambda: (PoolFormer(), torch.randn(*X4)),
    "gcnet": lambda: (GCBlock(), torch.randn(*X4)),
    "maxout": lambda: (Maxout(), torch.randn(*X4)),
    "highway": lambda: (Highway(), torch.randn(2, 5, 6)),
    "crnn_gru": lambda: (ConvRNN(nn.GRU(C, 6, batch_first=True), 6), torch.randn(*X4)),
    "crnn_bilstm": lambda: (ConvRNN(nn.LSTM(C, 6, batch_first=True, bidirectional=True), 12), torch.randn(*X4)),
    "crnn_rnn_relu": lambda: (ConvRNN(nn.RNN(C, 6, batch_first=True, nonlinearity="relu"), 6), torch.randn(*X4)),
    "crnn_lstm_proj": lambda: (ConvRNN(nn.LSTM(C, 6, batch_first=True, proj_size=4), 4), torch.randn(*X4)),
    "lstm_seq_first": lambda: (SeqFirstRNN(), torch.randn(*X4)),
    "mha_kdim_vdim": lambda: (MHAkv(), torch.randn(2, 5, 6)),
    "mha_seq_first": lambda: (MHASelf(False), torch.randn(2, 5, 6)),
    "mha_batch_first": lambda: (MHASelf(True), torch.randn(2, 5, 6)),
    "encoder_norm_first": lambda: (PreNormEncoder(), torch.randn(2, 5, 6)),
    "embedding_bag_mean": lambda: (EmbBag("mean"), torch.randint(0, 20, (2, 5))),
    "embedding_bag_sum": lambda: (EmbBag("sum"), torch.randint(0, 20, (2, 5))),
    "f_embedding_padding": lambda: (FEmbed(), torch.randint(0, 20, (2, 5))),
    "tied_lm_matmul": lambda: (TiedLM("matmul"), torch.randint(0, 20, (2, 5))),
    "tied_lm_linear": lambda: (TiedLM("linear"), torch.randint(0, 20, (2, 5))),
    "bilinear_two_inputs": lambda: (Bil(), torch.randn(2, 6)),
    "cat_weights": lambda: (CatWeights(), torch.randn(2, 6)),
    "parameter_list": lambda: (ParamList(), torch.randn(2, 6)),
    "module_dict_loop": lambda: (ModDictLoop(), torch.randn(*X4)),
    "partial_layers": lambda: (PartialLayers(), torch.randn(*X4)),
    "parametrize_scale": lambda: (parametrized(Scale2()), torch.randn(2, 6)),
    "parametrize_row_norm": lambda: (parametrized(RowNorm()), torch.randn(2, 6)),
    "parametrize_symmetric": lambda: (parametrized(Symmetric()), torch.randn(2, 6)),
    "old_weight_norm": lambda: (OldWeightNorm(), torch.randn(*X4)),
    "sliced_conv_weight": lambda: (SlicedConvWeight(), torch.randn(*X4)),
    "mask_buffer": lambda: (MaskBuffer(), torch.randn(*X4)),
    "index_buffer_perm": lambda: (IndexBuffer(True), torch.randn(*X4)),
    "index_buffer_subset": lambda: (IndexBuffer(False), torch.randn(*X4)),
    "gather_channels": lambda: (GatherChannels(), torch.randn(*X4)),
    "straight_through": lambda: (StraightThrough(), torch.randn(*X4)),
    "autocast_off": lambda: (AutocastOff(), torch.randn(*X4)),
    "inplace_residual": lambda: (InplaceResidual(), torch.randn(*X4)),
    "slice_write_cat": lambda: (SliceWriteCat(), torch.randn(*X4)),
    "super_forward": lambda: (SuperForward(), torch.randn(*X4)),
    "mixin_dataclass": lambda: (Configured(), torch.randn(*X4)),
    "call_override": lambda: (CallOverride(), torch.randn(*X4)),
    "forward_hook": with_forward_hook,
    "lazy_linear": lazy,
    "coordconv": lambda: (CoordConv(), torch.randn(*X4)),
}


MODELS.update(
    {
        "bn_no_affine": lambda: (BNNoAffine(), torch.randn(*X4)),
        "checkpoint": lambda: (Checkpointed(), torch.randn(*X4)),
        "segnet_unpool": lambda: (SegNet(), torch.randn(*X4)),
        "fpn_list_out": lambda: (FPN(), torch.randn(*X4)),
        "quant_stubs": lambda: (QuantStubs(), torch.randn(*X4)),
        "no_grad_forward": lambda: (NoGradForward(), torch.randn(*X4)),
        "frozen_backbone": lambda: (FrozenBackbone(), torch.randn(*X4)),
        "borrowed_weights": lambda: (BorrowedWeights(), torch.randn(*X4)),
        "interleave_stack": lambda: (Interleave(), torch.randn(*X4)),
        "pad_reflect_conv": lambda: (PadModes("reflect"), torch.randn(*X4)),
        "pad_circular_conv": lambda: (PadModes("circular"), torch.randn(*X4)),
        "chunk_uneven": lambda: (ChunkUneven(), torch.randn(*X4)),
        "tensor_split_idx": lambda: (TensorSplitIdx(), torch.randn(*X4)),
        "repeat_view": lambda: (RepeatView(), torch.randn(*X4)),
        "dw_transpose": lambda: (DWTranspose(), torch.randn(*X4)),
        "rotary": lambda: (Rotary(), torch.randn(2, 5, 6)),
        "cls_token": lambda: (ClsToken(), torch.randn(*X4)),
        "masked_attn": lambda: (MaskedAttn(), torch.randn(2, 5, 6)),
        "ordered_seq": lambda: (OrderedSeq(), torch.randn(*X4)),
        "dict_out": lambda: (MultiOut(), torch.randn(*X4)),
        "shared_bn": lambda: (SharedBN(), torch.randn(*X4)),
        "instnorm_track": lambda: (InstTrack(), torch.randn(*X4)),
        "helper_methods": lambda: (HelperMethod(), torch.randn(*X4)),
        "scale_attr": lambda: (ScaleAttr(), torch.randn(*X4)),
        "conv1d_text": lambda: (Conv1dSeq(), torch.randint(0, 20, (2, 7))),
        "conv3d_video": lambda: (Conv3dNet(), torch.randn(2, 3, 4, 6, 6)),
        "embbag_offsets": lambda: (EmbBagOffsets(), torch.randint(0, 20, (2, 5))),
        "adaptive_max_idx": lambda: (AdaptiveMaxIdx(), torch.randn(*X4)),
        "hook_caching_feats": lambda: (Hooked(), torch.randn(*X4)),
        "pre_hook_scale": lambda: (FeatureHookScale(), torch.randn(*X4)),
        "data_parallel": dp,
        "tied_conv_ae": lambda: (TiedConvAE(), torch.randn(*X4)),
        "tied_mlp_ae": lambda: (TiedMLPAE(), torch.randn(2, 6)),
        "accumulator": lambda: (Accum(), torch.randn(*X4)),
        "learned_extra": lambda: (LearnedExtra(), torch.randn(*X4)),
        "ema_buffer": lambda: (EMABuffer(), torch.randn(*X4)),
        "train_branch": lambda: (TrainBranch(), torch.randn(*X4)),
        "dropblockish": lambda: (DropBlockish(), torch.randn(*X4)),
        "vq": lambda: (VQ(), torch.randn(*X4)),
        "stateful_counter": lambda: (StatefulCounter(), torch.randn(*X4)),
        "param_as_activation": lambda: (ParamAsActivation(), torch.randn(*X4)),
        "slice_param_by_attr": lambda: (SliceParamByAttr(), torch.randn(*X4)),
        "grouped_head": lambda: (GroupedHead(), torch.randn(*X4)),
        "identity_init": lambda: (IdentityInit(), torch.randn(*X4)),
        "ln_chw": lambda: (NormInLoop(), torch.randn(*X4)),
    }
)

# zero-invariance traps: a removed channel changes a min, a product, an index, a count
BODIES.update({
    "amin_relu": (lambda s, h: h * h.amin(1, keepdim=True), {}),
    "amax_negative": (lambda s, h: h * (h - 0.5).amax(1, keepdim=True), {}),
    "prod_channels": (lambda s, h: h * (h + 1).prod(1, keepdim=True), {}),
    "norm_neginf": (lambda s, h: h * torch.linalg.vector_norm(h, float("-inf"), dim=1, keepdim=True), {}),
    "median_channels": (lambda s, h: h * h.median(1, keepdim=True).values, {}),
    "all_channels": (lambda s, h: h * (h > 0).all(1, keepdim=True), {}),
    "argmax_channels": (lambda s, h: h * h.argmax(1, keepdim=True), {}),
    "max_indices": (lambda s, h: h * h.max(1, keepdim=True).indices, {}),
    "mean_flat": (lambda s, h: h * h.flatten(1).mean(1).view(-1, 1, 1, 1), {}),
    "numel_div": (lambda s, h: h * h.sum() / h.numel(), {}),
    "inplace_slice_add": (lambda s, h: (h[:, :4].add_(1), h)[1], {}),
    "narrow_add_": (lambda s, h: (h.narrow(1, 0, 4).add_(1), h)[1], {}),
    "bcast_param_over_H": (lambda s, h: h * s.g.view(-1, 1), {"g": nn.Parameter(torch.rand(C) + 0.5)}),
    "transpose_1_2_conv": (lambda s, h: s.c(h.transpose(1, 2)), {"c": nn.Conv2d(C, C, 1)}),
    "expand_literal_8": (lambda s, h: h + h.mean(1, keepdim=True).expand(-1, 8, -1, -1), {}),
    "getitem_channel_pick": (lambda s, h: h[:, 3:4].expand(-1, 8, -1, -1) + h, {}),
})  # fmt: skip


# The default run checks the models that found bugs; the rest run with ``-m slow``.
QUICK = {
    "einsum_implicit_out",
    "einsum_sublist",
    "old_weight_norm",
    "coordconv",
    "index_add_channels",
    "ema_buffer",
    "train_branch",
}


def _cases(names: list[str]) -> list:
    return [pytest.param(n, id=n, marks=() if n in QUICK else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _cases(sorted(MODELS)))
def test_models(name: str, tmp_path: Path) -> None:
    model, x = MODELS[name]()
    oracle_or_refusal(model, x, tmp_path)


@pytest.mark.parametrize("name", _cases(sorted(BODIES)))
def test_bodies(name: str, tmp_path: Path) -> None:
    fn, extra = BODIES[name]
    oracle_or_refusal(Body(fn, **extra), torch.randn(*X4), tmp_path)


def _key(plan: skg.Plan) -> list[tuple]:
    members = lambda g: sorted((m.param, m.axis, m.start, m.stop, m.block) for m in g.members)  # noqa: E731
    return sorted((g.size, g.prunable, g.zero_invariant, members(g)) for g in plan.groups if "model" not in (g.reason or ""))


def _one_plan(spellings: list[Callable[..., Tensor]], **extra: nn.Module | nn.Parameter | Tensor) -> list[tuple]:
    keys = []
    for fn in spellings:
        torch.manual_seed(0)
        keys.append(_key(skg.plan(Body(fn, **extra), torch.randn(*X4))))
    assert all(k == keys[0] for k in keys[1:]), keys
    return keys[0]


def test_einsum_implicit_output_and_sublists_give_one_plan() -> None:
    """An implicit output (letters used once, sorted A-Z then a-z) and the sublist form
    ``einsum(h, [0, 1, 2, 3], w, [4, 1], [0, 4, 2, 3])`` read like the explicit equation
    (both pinned everything)."""
    key = _one_plan(
        [
            lambda s, h: torch.einsum("bchw,oc->bohw", h, s.w),
            lambda s, h: torch.einsum("bchw,dc", h, s.w),
            lambda s, h: torch.einsum("NCHW,KC->NKHW", h, s.w),
            lambda s, h: torch.einsum(h, [0, 1, 2, 3], s.w, [4, 1], [0, 4, 2, 3]),
            lambda s, h: torch.einsum(h, [26, 28, 29, 30], s.w, [27, 28]),
            lambda s, h: torch.einsum(h, [Ellipsis, 1, 2, 3], s.w, [4, 1], [Ellipsis, 4, 2, 3]),
        ],
        w=nn.Parameter(torch.randn(6, C)),
    )
    assert any(prunable and zi for _, prunable, zi, _ in key)


def test_channel_shuffle_spellings_give_one_plan(tmp_path: Path) -> None:
    """``F.channel_shuffle`` and ``torch.native_channel_shuffle`` read like ``nn.ChannelShuffle`` and
    the view/transpose/view of ShuffleNet (both functions pinned everything)."""
    spellings = [
        lambda s, h: channel_shuffle(h, 2),
        lambda s, h: F.channel_shuffle(h, 2),
        lambda s, h: torch.native_channel_shuffle(h, groups=2),
        lambda s, h: nn.ChannelShuffle(2)(h),  # built in forward: traced into F.channel_shuffle
        lambda s, h: h.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2),
    ]
    key = _one_plan(spellings)
    assert any(prunable and zi for _, prunable, zi, _ in key)
    check_oracle(Body(spellings[1]), torch.randn(*X4), tmp_path, min_drop=0.0)


TENSORDOTS = {
    "pair": (lambda s, h: torch.tensordot(h, s.w, dims=([1], [1])).permute(0, 3, 1, 2), (6, C)),
    "int": (lambda s, h: torch.tensordot(h.permute(0, 2, 3, 1), s.w.T, 1).permute(0, 3, 1, 2), (6, C)),
    "negative": (lambda s, h: torch.tensordot(s.w, h, dims=([-1], [1])).permute(1, 0, 2, 3), (6, C)),
    "two_axes": (lambda s, h: torch.tensordot(h, s.w, dims=([1, 3], [1, 0])).unsqueeze(1), (X4[3], C)),
    "sigmoid": (lambda s, h: h * torch.tensordot(h.sigmoid(), s.w, dims=([1], [1]))[:, None, :, :, 0], (1, C)),
}


@pytest.mark.parametrize("name", sorted(TENSORDOTS))
def test_tensordot_is_a_contraction(name: str, tmp_path: Path) -> None:
    """``torch.tensordot`` plans as the einsum it spells (it pinned everything): the conv's
    channels stay prunable and zero-invariant wherever ``w``'s matching axis is a member."""
    fn, shape = TENSORDOTS[name]
    model = Body(fn, w=nn.Parameter(torch.randn(*shape) * 0.3))
    group = skg.plan(model, torch.randn(*X4)).group("a:out")
    assert group.prunable and group.zero_invariant, group
    assert "w" in {m.param for m in group.members}
    check_oracle(model, torch.randn(*X4), tmp_path, min_drop=0.0)


def test_tensordot_spells_a_linear_layer() -> None:
    w = nn.Parameter(torch.randn(6, C))
    _one_plan(
        [
            lambda s, h: torch.einsum("bchw,oc->bohw", h, s.w),
            lambda s, h: torch.tensordot(h, s.w, dims=([1], [1])).permute(0, 3, 1, 2),
            lambda s, h: torch.tensordot(h.permute(0, 2, 3, 1), s.w.T, dims=1).permute(0, 3, 1, 2),
        ],
        w=w,
    )


def _t(h: Tensor) -> Tensor:
    return torch.tanh(h - 0.5) * 0.9  # in (-0.9, 0.9): every op below is finite there


UNARY = ["log2", "log10", "erfc", "erfinv", "sinc", "sgn", "signbit", "rad2deg", "deg2rad", "asin", "arcsin", "acos",
         "arccos", "tan", "asinh", "arcsinh", "atanh", "arctanh", "i0", "positive", "fix", "selu", "celu", "lgamma",
         "digamma", "special.i1", "special.i0e", "special.ndtr", "special.log_ndtr", "special.erfcx", "special.entr",
         "special.psi", "special.gammaln", "special.erfc", "special.sinc"]  # fmt: skip
BINARY = ["fmax", "fmin", "hypot", "atan2", "arctan2", "copysign", "logaddexp", "logaddexp2", "xlogy", "heaviside",
          "nextafter", "ldexp", "float_power", "greater", "less", "not_equal", "greater_equal", "less_equal", "isclose",
          "special.xlogy", "special.xlog1py"]  # fmt: skip


# NaN on a removed channel (``xlogy(x, y)`` with ``y = tanh(0 - 0.5) * 0.45 + 0.2 < 0`` there):
# prunable, not zero-invariant. The others' value there is computed finite
# (``log2(tanh(0 - 0.5) * 0.9 + 1)``), so they are zero-invariant (round 19).
_SINGULAR_AT_ZERO = {"xlogy", "special.xlogy"}


def _torch_fn(name: str) -> Callable[..., Tensor]:
    return functools.reduce(getattr, name.split("."), torch)


def _elementwise(name: str) -> Callable[..., Tensor]:
    fn = _torch_fn(name)
    domain = {
        "log2": 1.0,
        "log10": 1.0,
        "lgamma": 1.0,
        "digamma": 1.0,
        "special.psi": 1.0,
        "special.gammaln": 1.0,
        "special.entr": 1.0,
    }
    if name in BINARY:
        return lambda s, h: fn(
            _t(h) + (1.0 if name in ("xlogy", "special.xlogy", "float_power") else 0.0), _t(h) * 0.5 + 0.2
        ).float()
    return lambda s, h: fn(_t(h) + domain.get(name, 0.0)).float()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in ("log2", "fmax", "greater", "atan2") else pytest.mark.slow) for n in UNARY + BINARY]
)
def test_elementwise_ops_have_rules(name: str, tmp_path: Path) -> None:
    """torch's elementwise functions and their aliases (``greater``, ``arctan2``, ``special.psi``)
    broadcast like ``torch.add`` (they pinned everything as unknown ops). Logarithms and poles
    of an operand whose value on a removed channel is not known to be finite and nonzero are
    prunable, not zero-invariant."""
    model = Body(_elementwise(name))
    group = skg.plan(model, torch.randn(*X4)).group("a:out")
    assert group.prunable and group.zero_invariant is (name not in _SINGULAR_AT_ZERO), group
    check_oracle(model, torch.randn(*X4), tmp_path, min_drop=0.0, require=name not in _SINGULAR_AT_ZERO)


@pytest.mark.parametrize("name", ["logit", "digamma", "lgamma", "acosh", "special.ndtri", "special.psi"])
def test_elementwise_ops_singular_at_zero(name: str) -> None:
    """``f(g)`` with ``g`` a member that masking zeroes is infinite (logit, digamma, lgamma, acosh,
    ndtri): prunable, never zero-invariant."""
    fn = _torch_fn(name)
    model = Body(lambda s, h: h * fn(s.g)[:, None, None], g=nn.Parameter(torch.rand(C) * 0.5 + 0.25))
    group = skg.plan(model, torch.randn(*X4)).group("a:out")
    assert group.prunable and not group.zero_invariant, group


def test_elementwise_aliases_give_one_plan() -> None:
    _one_plan([lambda s, h: h * (h > 0.5), lambda s, h: h * torch.gt(h, 0.5), lambda s, h: h * torch.greater(h, 0.5)])
    _one_plan([lambda s, h: torch.fmax(h, h * 0.5), lambda s, h: torch.maximum(h, h * 0.5), lambda s, h: h.fmax(h * 0.5)])
    xs = [lambda s, h: h * torch.xlogy(s.g, s.g)[:, None, None], lambda s, h: h * torch.special.xlogy(s.g, s.g)[:, None, None]]
    key = _one_plan(xs, g=nn.Parameter(torch.rand(C) + 0.5))
    assert key and not any(zi for _, prunable, zi, _ in key if prunable)  # log(0) where g is masked


ORDERED: dict[str, tuple[Callable[..., Tensor], bool, bool]] = {  # body, prunable, zero-invariant
    "sort_spatial": (lambda s, h: torch.sort(h, -1).values, True, True),
    "sort_channels": (lambda s, h: h.sort(dim=1, descending=True)[0], False, False),
    "argsort_channels": (lambda s, h: h * torch.argsort(h, dim=1).float(), False, False),
    "msort_channels": (lambda s, h: torch.msort(h.transpose(0, 1)).transpose(0, 1), False, False),
    "tril_spatial": (lambda s, h: torch.tril(h), True, True),
    "triu_gram": (
        lambda s, h: torch.triu(h.flatten(2) @ h.flatten(2).transpose(1, 2)).sum(-1)[..., None, None] * h,
        False,
        False,
    ),
    "rot90_spatial": (lambda s, h: torch.rot90(h, 1, (2, 3)), True, True),
    "rot90_channels": (lambda s, h: torch.rot90(h, 1, [1, 2]).transpose(1, 2), False, False),
    "diff_spatial": (lambda s, h: torch.diff(h, dim=-1), True, True),
    "diff_channels": (lambda s, h: torch.diff(h, dim=1), False, False),
    "kthvalue_channels": (lambda s, h: h * h.kthvalue(2, 1, keepdim=True).values, True, False),
    "kthvalue_default_dim": (lambda s, h: h * torch.kthvalue(h, 2).values.unsqueeze(-1), True, True),
    "mode_channels": (lambda s, h: h * h.mode(1, keepdim=True).values, True, False),
    "nanmedian_all": (lambda s, h: h * h.nanmedian(), True, False),
    "quantile_channels": (lambda s, h: h * torch.quantile(h, 0.3, dim=1, keepdim=True), True, False),
    "quantile_spatial": (lambda s, h: h * torch.quantile(h, 0.3, dim=-1, keepdim=True), True, True),
    "quantile_levels": (lambda s, h: h * torch.quantile(h, torch.tensor([0.3, 0.6]), dim=-1, keepdim=True).sum(0), False, False),
    "aminmax_channels": (lambda s, h: h * torch.aminmax(h, dim=1, keepdim=True).max, True, False),
    "matrix_norm_fro": (lambda s, h: h / torch.linalg.matrix_norm(h, dim=(1, 2), keepdim=True).clamp_min(1e-3), True, True),
    "matrix_norm_neg2": (lambda s, h: h / torch.linalg.matrix_norm(h, -2, dim=(1, 2), keepdim=True).clamp_min(1e-3), True, False),
    "narrow_copy_channels": (lambda s, h: torch.narrow_copy(h, 1, 0, 4), False, False),
    "narrow_copy_spatial": (lambda s, h: torch.narrow_copy(h, 3, 0, 4), True, True),
}
_ORDERED_QUICK = {"sort_channels", "sort_spatial", "kthvalue_channels", "diff_channels", "triu_gram", "quantile_levels"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in _ORDERED_QUICK else pytest.mark.slow) for n in ORDERED])
def test_order_ops(name: str, tmp_path: Path) -> None:
    """sort/argsort/msort, tril/triu, rot90 and diff pin the axis they order (a removed channel
    would move the others) and pass the rest; kthvalue, mode, nanmedian, quantile, aminmax
    reduce like median; matrix_norm like a vector norm (all pinned everything as unknown ops)."""
    fn, prunable, zero_invariant = ORDERED[name]
    model = Body(fn)
    group = skg.plan(model, torch.randn(*X4)).group("a:out")
    assert (group.prunable, group.zero_invariant) == (prunable, zero_invariant), group
    check_oracle(model, torch.randn(*X4), tmp_path, min_drop=0.0, require=zero_invariant)


def test_tensors_made_on_the_cpu_in_forward_are_planned() -> None:
    """The shape pass ran ``cat([h, torch.linspace(...)])`` with ``h`` on meta and a CPU tensor
    from ``forward``, and refused the model (CoordConv, ``index_add(1, torch.arange(n), h)``)."""
    group = skg.plan(CoordConv(), torch.randn(*X4)).group("a.0:out")
    assert group.prunable and group.zero_invariant
    fn, extra = BODIES["index_add_channels"]
    skg.plan(Body(fn, **extra), torch.randn(*X4))  # planned (pinned: no rule), not refused


@pytest.mark.parametrize("name", _cases(["ema_buffer", "train_branch", "stateful_counter", "dropblockish", "vq"]))
def test_train_mode_models_stay_untouched(name: str) -> None:
    """Planned and pruned in train mode (buffers a forward updates, branches only training
    takes): the user's model keeps every tensor, flag and hook."""
    model, x = MODELS[name]()
    model.train()
    before = fingerprint(model)
    plan = skg.plan(model, x)
    assert_untouched(model, before, "plan in train mode")
    small = skg.prune(model, plan, ratio=0.5).model
    assert_untouched(model, before, "prune in train mode")
    small.train()(x)
    small.eval()(x)


class RNNWithState(nn.Module):
    """A GRU given its initial state, features from a conv (a CRNN)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn, self.rnn, self.fc = cbr(3, C), nn.GRU(C, 6, batch_first=True), nn.Linear(6, 5)
        self.h0 = nn.Parameter(torch.zeros(1, 1, 6))

    def forward(self, x: Tensor) -> Tensor:
        f = self.cnn(x).mean(2).transpose(1, 2)  # (B, W, C)
        out, _ = self.rnn(f, self.h0.expand(-1, f.shape[0], -1).contiguous())
        return self.fc(out[:, -1])


@pytest.mark.parametrize("name", ["crnn_gru", "crnn_bilstm", "crnn_rnn_relu", "crnn_lstm_proj", "lstm_seq_first", "state"])
def test_recurrent_layers_read_pruned_features(name: str, tmp_path: Path) -> None:
    """RNN/LSTM/GRU: the features they read are prunable and zero-invariant (the first layer's
    input weights lose columns; ``input_size`` follows); hidden sizes and states pin. Every
    recurrent layer pinned everything it touched (unknown op)."""
    model, x = (RNNWithState(), torch.randn(*X4)) if name == "state" else MODELS[name]()
    group = skg.plan(model, x).group("cnn.0:out")
    assert group.prunable and group.zero_invariant, group
    assert {"rnn.weight_ih_l0"} <= {m.param for m in group.members}
    result = check_oracle(model, x, tmp_path, min_drop=0.0)
    rnn = result.model.rnn
    assert rnn.input_size == rnn.weight_ih_l0.shape[1] == result.model.cnn[0].out_channels == C // 2
    skg.save_pruned(result, tmp_path / "pruned")
    fresh = type(model)() if name == "state" else MODELS[name]()[0]
    loaded = skg.load_pruned(fresh, tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model.eval()(x))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda s, h: h[:, s.m], id="channels"),
        pytest.param(lambda s, h: h[:, :, s.m], id="rows"),
        pytest.param(lambda s, h: h * h[:, s.m].sum(1, keepdim=True), id="gate"),
    ],
)
def test_boolean_mask_buffers_are_planned(body: Callable[..., Tensor], tmp_path: Path) -> None:
    """``x[:, self.mask]`` with a boolean buffer: the shape pass had no values for the mask
    (moved to meta, where indexing by a mask has no kernel) and refused the model."""
    model = Body(body, m=torch.tensor([True, False] * (C // 2)))
    skg.plan(model, torch.randn(*X4))  # raised TraceError
    check_oracle(model, torch.randn(*X4), tmp_path, min_drop=0.0, require=False)
