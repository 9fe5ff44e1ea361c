"""A plan's groups on this rank: engine couplings, natural views, FSDP2 shards as channel rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..engine import BlockCoupling, View
from ..errors import SparseKitError
from ..plan.bind import member_order, member_spec
from ..plan.layout import strided_layout
from ..plan.schema import Group, Member
from .segments import PartSegment, RowSegment, Segment, is_dtensor, local_tensor

__all__ = ["member_numel", "natural_view", "plan_segments", "shard_info"]


def shard_info(p: Tensor, name: str) -> tuple[Any, int, int] | None:
    """``(process group, rank in it, first global row of the local shard)`` for a Shard(0) DTensor."""
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(p.placements)
    if all(isinstance(pl, Replicate) for pl in placements):
        return None
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise SparseKitError(
            f"param {name!r}: placements {placements} are not supported (fully_shard's Shard(0) on a 1-d mesh, or replicated)"
        )
    mesh = p.device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    rows, local_rows = p.shape[0], p.to_local().shape[0]
    chunk = -(-rows // world)  # torch.chunk: every shard ceil(rows / world) rows, the last ones short or empty
    first = min(rank * chunk, rows)
    if first + local_rows > rows:
        raise SparseKitError(f"param {name!r}: local shard of {local_rows} rows at row {first} exceeds {rows} rows")
    return mesh.get_group(0), dist.get_rank(mesh.get_group(0)), first


def natural_view(m: Member, p: Tensor) -> View | None:
    """The member as a ``(pre, channels, block * post)`` view of ``p`` (one channel axis of a
    contiguous tensor only)."""
    layout = strided_layout(m.positions())
    if layout is None or len(layout.sizes) != 1 or not p.is_contiguous():
        return None
    pre, post, size = math.prod(p.shape[: m.axis]), math.prod(p.shape[m.axis + 1 :]), p.shape[m.axis]
    shape = (pre, layout.sizes[0], m.block * post)
    return View(p, shape, (size * post, layout.strides[0] * m.block * post, 1), offset=layout.base * m.block * post)


def member_numel(m: Member, p: Tensor) -> int:
    """Elements one channel of ``m`` owns in ``p`` (global shape)."""
    return p.numel() // p.shape[m.axis] * m.block


def plan_segments(g: Group, params: Mapping[str, Tensor]) -> tuple[list[Segment], Any, BlockCoupling | None]:
    """Segments of one group on this rank, the process group its partial sums need, and the
    engine coupling the segments are the parts of (None when some parameter is sharded)."""
    members = [m for m in g.members if m.param in params]
    shards = {m.param: shard_info(params[m.param], m.param) for m in members}
    groups = {id(s[0]): s for s in shards.values() if s is not None}
    if not groups:  # every parameter whole on this rank (single process, DDP): one engine coupling
        specs = [member_spec(m, params[m.param]) for m in members]
        coupling = BlockCoupling(specs, [member_order(m, params[m.param]) for m in members], name=g.name)
        segments: list[Segment] = [
            PartSegment(part, params[m.param], m.param, natural=natural_view(m, params[m.param]))
            for m, part in zip(members, coupling._parts())
        ]
        return segments, None, coupling
    if len(groups) > 1:
        raise SparseKitError(f"group {g.name!r}: its parameters are sharded over different device meshes")
    pg, rank, _ = next(iter(groups.values()))
    out: list[Segment] = []
    for m in members:
        p, info = params[m.param], shards[m.param]
        local = local_tensor(p)
        if info is not None and m.axis == 0:  # channels split across ranks: local rows, each to its channel
            pos = torch.tensor(m.positions(), dtype=torch.long, device=local.device)
            rows = (pos[:, None] * m.block + torch.arange(m.block, device=local.device)).reshape(-1) - info[2]
            slots = torch.arange(g.size, device=local.device).repeat_interleave(m.block)
            keep = (rows >= 0) & (rows < local.shape[0])
            rows, slots = rows[keep], slots[keep]
            order = rows.argsort()
            out.append(RowSegment(p, m.param, rows[order], slots[order], g.size))
        elif local.numel():  # every channel, over this rank's rows (or a whole replicated parameter)
            part = BlockCoupling([member_spec(m, local)], [member_order(m, local)], name=g.name)._parts()[0]
            out.append(PartSegment(part, p, m.param, counted=info is not None or rank == 0, natural=natural_view(m, local)))
    return out, pg, None
