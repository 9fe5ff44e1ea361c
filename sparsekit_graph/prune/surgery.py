"""Physically remove channels: slice parameters and buffers, then resize their layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import PlanError, SparseKitError
from ..graph.list_attributes import read_size, size_holder, write_size
from ..graph.weight_norms import refresh_weight_norms
from ..plan.schema import Plan
from ..plan.shared_sizes import size_drops
from ..registry import RESIZERS, by_type, registrar
from .embed_scale import rescale_embeddings
from .held_refs import rebind
from .hf import fit_experts_kernel
from .scales import rescale_queries

__all__ = ["register_resizer", "remove_channels", "undone_on_failure"]

Resizer = Callable[[nn.Module], None]
_RESIZERS: dict[type, Resizer] = RESIZERS


register_resizer = registrar(_RESIZERS)
register_resizer.__doc__ = "Register how a layer updates its attributes after its parameters were sliced."


def removed_elements(
    plan: Plan, masks: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]
) -> dict[tuple[str, int, tuple[int, ...]], np.ndarray]:
    """(tensor name, axis, fixed leading indices) -> boolean array of removed indices along
    that axis (fixed indices: the member's expert, ``()`` for a whole axis)."""
    drop: dict[tuple[str, int, tuple[int, ...]], np.ndarray] = {}
    for g in plan.groups:
        mask = masks.get(g.name)
        if mask is None or not bool(mask.any()):
            continue
        channels = np.flatnonzero(mask.cpu().numpy())
        for m in g.members:
            pos = np.asarray(m.positions())[channels]
            idx = (pos[:, None] * m.block + np.arange(m.block)).ravel()
            key = (m.param, m.axis, tuple(i for _, i in m.fix or ()))
            if key not in drop:
                drop[key] = np.zeros(shapes[m.param][m.axis], dtype=bool)
            drop[key][idx] = True
    return drop


@contextmanager
def undone_on_failure(model: nn.Module) -> Iterator[None]:
    """Run surgery on ``model`` (and what follows it: loading weights); where the body raises,
    put every module back and raise ``SparseKitError`` saying nothing was changed.

    Surgery rebinds tensors in ``_parameters``/``_buffers`` and sets layer attributes; a shallow
    snapshot of every module's class, ``__dict__`` and tensor stores is enough to put them back.
    """
    snapshot = [(m, type(m), dict(m._parameters), dict(m._buffers), dict(m.__dict__)) for m in model.modules()]
    try:
        yield
    except Exception as e:
        for m, cls, params, buffers, attrs in snapshot:
            m.__class__ = cls  # surgery may give a layer its pruned class (nn.MultiheadAttention)
            m.__dict__.clear()
            m.__dict__.update(attrs)
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
        if isinstance(e, SparseKitError):
            raise (PlanError if isinstance(e, PlanError) else SparseKitError)(f"{e}; nothing was changed") from e
        raise SparseKitError(f"inplace surgery failed; nothing was changed: {e}") from e


def remove_channels(model: nn.Module, plan: Plan, masks: dict[str, Tensor]) -> None:
    """Slice every member of every masked group out of ``model``, in place, then resize layers."""
    tensors = {n: t for n, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))}
    drop = removed_elements(plan, masks, {n: tuple(t.shape) for n, t in tensors.items()})
    by_tensor: dict[str, list[tuple[int, tuple[int, ...], np.ndarray]]] = {}
    for (name, axis, fix), removed in drop.items():
        by_tensor.setdefault(name, []).append((axis, fix, removed))
    replaced: dict[int, Tensor] = {}  # id(old tensor) -> new tensor (tied weights share one)
    for name, cuts in by_tensor.items():
        old = tensors[name]
        new = _cut_per_expert(name, old.detach(), [c for c in cuts if c[1]])
        for axis, _, removed in (c for c in cuts if not c[1]):  # whole axes after per-expert cuts
            new = new.index_select(axis, torch.as_tensor(np.flatnonzero(~removed), device=old.device))
        replaced[id(old)] = (
            nn.Parameter(new.clone(), requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new.clone()
        )
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if t is not None and id(t) in replaced:
                    store[attr] = replaced[id(t)]
    rebind(model, replaced)  # a list, dict or closure holding the old tensor
    with _in_eval(model):
        refresh_weight_norms(model)  # ``nn.utils.weight_norm``'s weight, from the sliced ``_v`` and ``_g``
        # A torch layer's own sizes are its resizer's to derive from the sliced weights and the
        # sizes as they were (a depthwise conv is one whose groups equal its input channels),
        # whatever a count the code read off the layer says (``groups=self.dw.in_channels``);
        # where it derives none (a LayerNorm without weight), the count stands.
        held: dict[int, list[tuple[str, object]]] = {}
        for holder, attr, value in _new_sizes(model, plan, masks):
            if attr in _DERIVED.get(by_type(_RESIZERS, holder), ()):
                held.setdefault(id(holder), []).append((attr, value))
            else:
                write_size(holder, attr, value)
        rescale_queries(model, plan, masks)
        for module in model.modules():
            resize = by_type(_RESIZERS, module)
            if resize is not None:
                before = {attr: read_size(module, attr) for attr, _ in held.get(id(module), ())}
                resize(module)
                for attr, value in held.get(id(module), ()):
                    if read_size(module, attr) == before[attr]:
                        write_size(module, attr, value)
        rescale_embeddings(model)  # Gemma's embed_scale = sqrt(width): the class's scale for the new width
    fit_experts_kernel(model)  # Hugging Face's grouped_mm needs aligned expert widths


@contextmanager
def _in_eval(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside, its own flag restored after. The resizers read
    ``m.weight``; for a parametrized layer in training mode that runs the parametrization's
    training step (spectral norm's power iteration writes ``_u`` and ``_v``), so the pruned
    model would start one step ahead of the dense one."""
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:  # the flags alone: a layer's own ``train()`` may compute with the sizes being cut
        object.__setattr__(m, "training", False)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _cut_per_expert(name: str, t: Tensor, cuts: list[tuple[int, tuple[int, ...], np.ndarray]]) -> Tensor:
    """Remove each expert's own indices from a stacked tensor (``(E, 2I, H)``, one cut per
    expert and axis); every expert must keep as many, or the tensor would not be rectangular."""
    if not cuts:
        return t
    lead = len(cuts[0][1])
    flat = t.reshape(-1, *t.shape[lead:])
    experts = {i: flat[int(np.ravel_multi_index(i, t.shape[:lead]))] for i in np.ndindex(*t.shape[:lead])}
    for axis, fix, removed in cuts:
        keep = torch.as_tensor(np.flatnonzero(~removed), device=t.device)
        experts[fix] = experts[fix].index_select(axis - lead, keep)
    shapes = {tuple(e.shape) for e in experts.values()}
    if len(shapes) != 1:
        raise SparseKitError(f"{name}: experts would keep unequal sizes {sorted(shapes)}; a stacked tensor must stay rectangular")
    return torch.stack(list(experts.values())).reshape(*t.shape[:lead], *shapes.pop())


def _new_sizes(model: nn.Module, plan: Plan, masks: dict[str, Tensor]) -> list[tuple[object, str, object]]:
    """The new value of every attribute that counts channels (``SizeRef``), as (holder,
    attribute, value), read before anything changes: its value less
    ``per_channel`` for each channel its group removed. An attribute several groups count (a
    config shared by all layers, or one object several blocks hold) changes only where they
    all agree on the new value; otherwise it keeps its value and ``prune``'s structure check
    decides whether the model still computes what the plan says. A pinned group's claim (keep
    the value) yields to prunable groups that agree: a literal a pinned axis only happened to
    share with the attribute (StableLM's rotary slice ``q[..., :4]`` beside ``num_heads = 4``)
    must not keep the heads' count; where the pinned axis truly reads it, the structure check
    fails loudly. An attribute that sums segments of one axis (``shared_sizes.segment_sizes``)
    drops by every segment's share."""
    modules = dict(model.named_modules())
    drops = size_drops(plan.groups, {name: int(m.sum()) for name, m in masks.items()})
    proposals: dict[tuple[int, str], tuple[object, set, set]] = {}  # (holder, prunable's values, pinned's)
    for g in plan.groups:
        for ref in g.sizes:
            holder = size_holder(modules, ref.owner)
            old = read_size(holder, ref.attr)  # ``splits[0]``: an element of a list attribute
            by = drops[(g.name, ref.owner, ref.attr)]
            new = (old[0] - by, *old[1:]) if isinstance(old, tuple) and old else old - by if isinstance(old, int) else None
            if new is not None:
                proposals.setdefault((id(holder), ref.attr), (holder, set(), set()))[1 if g.prunable else 2].add(new)
    out: list[tuple[object, str, object]] = []
    for (_, attr), (holder, live, pinned) in proposals.items():
        values = live or pinned
        if len(values) == 1:
            out.append((holder, attr, values.pop()))
    return out


@register_resizer(nn.modules.conv._ConvNd)
def _conv(m: nn.Module) -> None:
    w, g = m.weight, m.groups
    if g > 1 and m.in_channels == g:  # depthwise: groups follow the channels
        g = m.groups = w.shape[0] if m.transposed else w.shape[0] // (m.out_channels // g)
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * g
    else:
        m.in_channels, m.out_channels = w.shape[1] * g, w.shape[0]


@register_resizer(nn.Linear)
def _linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_resizer(nn.Bilinear)
def _bilinear(m: nn.Module) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


@register_resizer(nn.modules.batchnorm._NormBase)
def _norm(m: nn.Module) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    if ref is not None:
        m.num_features = ref.shape[0]


@register_resizer(nn.GroupNorm)
def _group_norm(m: nn.Module) -> None:
    if m.weight is not None:
        if m.num_groups == m.num_channels:  # one channel per group: the groups go with the channels
            m.num_groups = m.weight.shape[0]
        m.num_channels = m.weight.shape[0]


@register_resizer(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(m: nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@register_resizer(nn.Embedding, nn.EmbeddingBag)
def _embedding(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@register_resizer(nn.PReLU)
def _prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.numel()


# The attributes each of torch's layers derives from its weights (and nothing else sets).
_DERIVED: dict[Resizer | None, frozenset[str]] = {
    _conv: frozenset({"in_channels", "out_channels", "groups"}),
    _linear: frozenset({"in_features", "out_features"}),
    _bilinear: frozenset({"in1_features", "in2_features", "out_features"}),
    _norm: frozenset({"num_features"}),
    _group_norm: frozenset({"num_groups", "num_channels"}),
    _layer_norm: frozenset({"normalized_shape"}),
    _embedding: frozenset({"num_embeddings", "embedding_dim"}),
    _prelu: frozenset({"num_parameters"}),
}
