"""Block grids over parameters: the common interface and the single-tensor ``BlockSpec``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import CouplingError, ShapeMismatchError, SparseKitError
from . import solve
from .part import _Part, _piece
from .view import View, interleave

__all__ = ["BlockSpec", "SparseBlock", "BlockValues"]

BlockValues = Tensor | Mapping[Any, Tensor] | None
_TINY = torch.finfo(torch.float32).tiny


class SparseBlock:
    """Common interface of ``BlockSpec`` and ``BlockCoupling``: a grid of blocks.

    Every method runs without autograd. Grid-shaped arguments (masks, thresholds,
    multipliers) may also be given flat, ``(numblk,)``, in row-major grid order.
    """

    name: str | None

    # -- implemented by subclasses -------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def specs(self) -> list[BlockSpec]:
        raise NotImplementedError

    def _parts(self) -> list[_Part]:
        raise NotImplementedError

    def _values(self, values: BlockValues) -> dict[BlockSpec, Tensor]:
        raise NotImplementedError

    # -- sizes ---------------------------------------------------------------------
    def numblk(self) -> int:
        return math.prod(self.grid_shape)

    def numel_per_block(self) -> int:
        return sum(math.prod(s.shape) for s in self.specs)

    def numel(self) -> int:
        return self.numel_per_block() * self.numblk()

    def parameters(self) -> list[View]:
        return [s.view for s in self.specs]

    @torch.no_grad()
    def nnz(self, eps: float = 1e-8) -> int:
        """Elements with absolute value above ``eps``."""
        return sum(int((s.data.abs() > eps).sum()) for s in self.specs)

    # -- reductions ----------------------------------------------------------------
    @torch.no_grad()
    def norms(self, values: BlockValues = None, p: float = 2) -> Tensor:
        """Lp norm of every block, shaped like ``grid_shape`` (float32 at least)."""
        resolved = self._values(values)
        if p == math.inf:
            return self._combine(resolved, lambda s, t: s.block_reduce(t, "absmax"), torch.maximum)
        partial = self._combine(resolved, lambda s, t: s.block_reduce(t, "powsum", p=p), torch.add)
        return partial.sqrt_() if p == 2 else partial.pow_(1.0 / p)

    @torch.no_grad()
    def min(self, values: BlockValues = None) -> Tensor:
        """Smallest element of every block."""
        return self._combine(self._values(values), lambda s, t: s.block_reduce(t, "amin"), torch.minimum)

    @torch.no_grad()
    def max(self, values: BlockValues = None) -> Tensor:
        """Largest element of every block."""
        return self._combine(self._values(values), lambda s, t: s.block_reduce(t, "amax"), torch.maximum)

    @torch.no_grad()
    def reduce(self, values: BlockValues, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply ``fn`` to ``block_view(values, merge=True)``; ``fn`` reduces the last dim."""
        return fn(self.block_view(values, merge=True)).reshape(self.grid_shape)

    def _combine(
        self,
        resolved: Mapping[BlockSpec, Tensor],
        per_spec: Callable[[BlockSpec, Tensor], Tensor],
        merge: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        out: Tensor | None = None
        for part in self._parts():
            t = part.to_grid(per_spec(part.spec, resolved[part.spec]))
            out = t if out is None else merge(out, t)
        assert out is not None
        return out

    def block_view(self, values: BlockValues = None, reorder: bool = True, merge: bool = False) -> Tensor:
        """Blocks of ``values``; see ``BlockSpec.block_view`` and ``BlockCoupling.block_view``."""
        raise NotImplementedError

    # -- writes ----------------------------------------------------------------------
    @torch.no_grad()
    def apply_multiplier(self, multiplier: Tensor) -> None:
        """Multiply every element of block ``i`` by ``multiplier[i]``."""
        m = self._grid_arg(multiplier, "multiplier")
        for part in self._parts():
            part.spec.scale_blocks(part.from_grid(m))

    @torch.no_grad()
    def apply_mask(self, mask: Tensor) -> None:
        """Zero every block where ``mask`` is True."""
        m = self._grid_arg(mask, "mask")
        if m.dtype != torch.bool:
            raise SparseKitError(f"{self._label()}: mask must be a bool tensor, got {m.dtype}")
        for part in self._parts():
            part.spec.scale_blocks((~part.from_grid(m)).to(part.spec.data.dtype))

    @torch.no_grad()
    def get_masks(self, block_mask: Tensor) -> dict[BlockSpec, Tensor]:
        """Element masks, one per spec in ``specs``, each shaped like that spec's view."""
        m = self._grid_arg(block_mask, "block_mask")
        return {p.spec: p.spec.expand_blocks(p.from_grid(m)) for p in self._parts()}

    @torch.no_grad()
    def hard_threshold(self, thresholds: Tensor, values: BlockValues = None) -> None:
        """Zero every block whose norm (of ``values``, default the weights) is below its threshold."""
        t = self._grid_arg(thresholds, "thresholds")
        self.apply_mask(self.norms(values) < t)

    @torch.no_grad()
    def soft_threshold(
        self,
        block_thresholds: Tensor,
        conditioners: BlockValues = None,
        *,
        max_iter: int = 50,
        atol: float = 0.0,
        eps: float | None = None,
        rtol: float = 1e-6,
    ) -> None:
        """Proximal step of ``tau_g * ||w_g||`` on every block, in place.

        Without ``conditioners``: the Euclidean prox ``w <- max(0, 1 - tau/||w||) w``. With
        them (``h > 0``, shaped like the views, e.g. Adam's ``sqrt(v) + eps``): the prox in the
        metric ``diag(h)`` (``engine/solve.py``, the kernel ``ProximalStep`` uses too), solved by a
        safeguarded Newton iteration on every block's multiplier ``mu`` until its relative error
        is below ``rtol``: a Newton step of at most ``rtol``, or one whose quadratic error bound is
        8x below it (or, with ``atol > 0``, a step that moves ``mu`` by at most ``atol``).

        Args:
            block_thresholds: ``tau`` per block, shaped like ``grid_shape`` or flat.
            conditioners: A tensor (spec) or mapping spec -> tensor (coupling).
            max_iter: Newton iterations at most.
            atol: Absolute tolerance on the multiplier ``mu`` (0 = relative only).
            eps: Norms at or below ``eps`` count as zero (default: 0).
            rtol: Relative accuracy of ``mu`` (the defaults reach relative 1e-6 on the result).
        """
        tau = self._grid_arg(block_thresholds, "block_thresholds").float()
        if bool(tau.min() < 0):
            raise SparseKitError(f"{self._label()}: block_thresholds must be non-negative")
        floor = 0.0 if eps is None else float(eps)
        if conditioners is None:
            self._euclidean_prox(tau, floor)
            return
        pieces, overlap = self._conditioned_pieces(self._checked_conditioners(conditioners))
        solve.conditioned(pieces, tau.reshape(-1), overlap=overlap, rtol=rtol, atol=atol, max_iter=max_iter, floor=floor)

    def _checked_conditioners(self, conditioners: BlockValues, seen: set | None = None) -> dict[BlockSpec, Tensor]:
        """Spec -> conditioner (dense windows already in ``seen`` are not checked again; new ones are added).

        Raises:
            SparseKitError: A conditioner is not finite and strictly positive.
        """
        resolved = self._values(conditioners)
        for h in resolved.values():
            if seen is not None and h.is_contiguous():  # the elements at [offset, offset + numel) of its storage
                key = (h.untyped_storage().data_ptr(), h.storage_offset(), h.numel(), h.dtype)
                if key in seen:
                    continue
                seen.add(key)
            lo, hi = torch.aminmax(h)
            if not (bool(lo > 0) and bool(torch.isfinite(hi))):
                raise SparseKitError(f"{self._label()}: conditioners must be finite and strictly positive")
        return resolved

    def _conditioned_pieces(self, resolved: Mapping[BlockSpec, Tensor]) -> tuple[list[solve.Piece], bool]:
        """Every part's rows with their conditioners, and whether two parts share a parameter."""
        parts = self._parts()
        overlap = len({id(p.spec.view.param) for p in parts}) < len(parts)
        return [_piece(p, resolved[p.spec]) for p in parts], overlap

    def _euclidean_prox(self, tau: Tensor, floor: float) -> Tensor:
        """``w <- max(0, 1 - tau/||w||) w``: the fused kernel of ``engine/batch.py`` where the layout
        allows (no full-size temporary), else the shared kernel over every part's rows; returns the
        blocks it zeroed (flat)."""
        from .batch import fused  # batch builds on this module

        killed = fused([self], [tau.reshape(-1)], floor)
        if killed is not None:
            return killed[0]
        parts = self._parts()
        overlap = len({id(p.spec.view.param) for p in parts}) < len(parts)
        return solve.euclidean([_piece(p) for p in parts], tau.reshape(-1), overlap=overlap, floor=floor)

    # -- helpers ---------------------------------------------------------------------
    def _grid_arg(self, t: Tensor, what: str) -> Tensor:
        if not isinstance(t, Tensor):
            raise SparseKitError(f"{self._label()}: {what} must be a tensor, got {type(t).__name__}")
        grid = self.grid_shape
        if tuple(t.shape) not in (grid, (math.prod(grid),)):
            raise ShapeMismatchError(grid, tuple(t.shape), f"{self._label()}: {what}")
        return t.reshape(grid).to(self.specs[0].data.device)  # a CPU mask for a model on a GPU

    def _label(self) -> str:
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__


class BlockSpec(SparseBlock):
    """Tiles a view into a grid of equal blocks.

    Args:
        view_or_param: A ``View`` or a tensor (viewed whole).
        shape: Block shape, one entry per dim; ``-1`` or ``0`` means the whole dim; empty
            means all ones.
        name: Optional label used in errors and reprs.
    """

    def __init__(self, view_or_param: View | Tensor, shape: Sequence[int] = (), name: str | None = None) -> None:
        self.view = View.of(view_or_param)
        self.name = name
        dims = self.view.shape
        shape = tuple(int(b) for b in shape) or (1,) * len(dims)
        if len(shape) != len(dims):
            raise ShapeMismatchError(
                (len(dims),),
                (len(shape),),
                f"{self._label()}: block shape {shape} needs one entry per dim of view {dims}",
            )
        self.shape = tuple(n if b <= 0 else b for n, b in zip(dims, shape))
        for dim, (n, b) in enumerate(zip(dims, self.shape)):
            if n % b:
                raise ShapeMismatchError((n,), (b,), f"{self._label()}: dim {dim} of size {n} is not divisible by block size {b}")
        self._grid = tuple(n // b for n, b in zip(dims, self.shape))
        self._reduced = [i % 2 == 1 for i in range(2 * len(dims))]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self._grid

    @property
    def specs(self) -> list[BlockSpec]:
        return [self]

    @property
    def ndim(self) -> int:
        return self.view.ndim

    @property
    def data(self) -> Tensor:
        """The live view tensor."""
        return self.view.data

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.view.key, self.shape)

    def _parts(self) -> list[_Part]:
        return [_Part(self, tuple(range(len(self._grid))), self._grid)]

    def _values(self, values: BlockValues) -> dict[BlockSpec, Tensor]:
        if values is None:
            return {self: self.data}
        if isinstance(values, Mapping):
            if self not in values:
                raise CouplingError(f"{self._label()}: values mapping has no entry for this spec")
            values = values[self]
        if not isinstance(values, Tensor):
            raise SparseKitError(f"{self._label()}: values must be a tensor or a mapping of tensors")
        if tuple(values.shape) == self.view.shape:
            return {self: values}
        if values.shape == self.view.param.shape:
            return {self: self.view.window(values)}
        raise ShapeMismatchError(self.view.shape, tuple(values.shape), f"{self._label()}: values")

    def block_reduce(self, t: Tensor, how: str, p: float = 2) -> Tensor:
        """Reduce each block of the view-shaped ``t`` to one number -> grid-shaped float32.

        ``how``: ``"powsum"`` (sum of ``|x|^p``), ``"amin"``, ``"amax"`` or ``"absmax"``. Dims are
        coalesced and reduced one at a time, outermost first: one multi-dim strided reduction is
        several times slower on CPU than a chain of single-dim ones.
        """
        if t.is_complex() and how in ("powsum", "absmax"):  # norms of complex blocks: of their moduli
            t = t.abs()
        x, reduced = _coalesce(interleave(t, self.shape), self._reduced)
        wide = torch.float32 if t.dtype != torch.float64 else t.dtype
        if how == "powsum":
            if reduced == [False, True]:  # (blocks, contiguous block elements): one fused kernel
                return torch.linalg.vector_norm(x, ord=p, dim=1, dtype=wide).pow_(p).reshape(self._grid)
            x = x.to(wide).square() if p == 2 else x.to(wide).abs().pow_(p)
            if reduced[:2] == [True, False] and x.is_contiguous():  # columns: a GEMV sums the rows fastest
                rows = x.shape[0]
                x = (x.new_ones(1, rows) @ x.reshape(rows, -1)).reshape(x.shape[1:])
                reduced = reduced[1:]
            fn = torch.sum
        else:
            x = x.abs() if how == "absmax" else x
            fn = torch.amin if how == "amin" else torch.amax
        for k, dim in enumerate(d for d, r in enumerate(reduced) if r):
            x = fn(x, dim=dim - k)
        return x.float().reshape(self._grid)

    def block_view(self, values: BlockValues = None, reorder: bool = True, merge: bool = False) -> Tensor:
        t = self._values(values)[self]
        iv = interleave(t, self.shape)
        if not (reorder or merge):
            return iv
        nd = len(self.shape)
        iv = iv.permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))
        return iv.reshape(*self._grid, -1) if merge else iv

    def expand_blocks(self, grid_values: Tensor) -> Tensor:
        """Grid-shaped tensor -> view-shaped tensor, each block filled with its value."""
        t = grid_values.reshape(self._grid)
        for i, b in enumerate(self.shape):
            t = t.repeat_interleave(b, dim=i) if b > 1 else t
        return t

    def scale_blocks(self, grid_values: Tensor) -> None:
        """Multiply the live view in place, block ``i`` by ``grid_values[i]``."""
        data = self.data
        x, roles = _coalesce(interleave(data, self.shape), self._reduced)
        m = grid_values.to(data.dtype).reshape([1 if block else n for n, block in zip(x.shape, roles)])
        if len(roles) > 1 and roles[-1] and x.shape[-1] <= 64:
            # A short contiguous block (e.g. a 3x3 kernel): spell the multiplier out along it so
            # the inner loop vectorises instead of broadcasting one scalar per 9 elements.
            m = m.expand(*m.shape[:-1], x.shape[-1]).contiguous()
        x.mul_(m)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockSpec) and self.key == other.key and self.view == other.view

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"BlockSpec(shape={self.shape}, grid_shape={self._grid}, name={self.name!r})"


def _coalesce(t: Tensor, reduced: list[bool]) -> tuple[Tensor, list[bool]]:
    """Drop size-1 dims and merge neighbours with the same role that are laid out contiguously."""
    shape, stride, role = [], [], []
    for n, st, r in zip(t.shape, t.stride(), reduced):
        if n == 1:
            continue
        if shape and role[-1] == r and stride[-1] == st * n:
            shape[-1] *= n
            stride[-1] = st
        else:
            shape.append(n)
            stride.append(st)
            role.append(r)
    return t.as_strided(shape, stride, t.storage_offset()), role
