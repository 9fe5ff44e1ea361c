"""Which ``torch.nn.utils.parametrize`` parametrizations the rules model as members.

A weight normed by ``parametrizations.weight_norm`` (with a ``dim``) or ``spectral_norm`` (of a
matrix or kernel) is planned by the layer's own rule (``RuleContext.param``). Any other
parametrization (a symmetric, skew, centred or user-written one, ``orthogonal``, several in a
chain) is code: the fx tracer traces the layer and its ``ParametrizationList`` as torch.export
does, so the rules see the ops that compute the weight from ``original``."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm

__all__ = ["modelled", "traced_through"]


def modelled(plist: parametrize.ParametrizationList) -> bool:
    """Is ``plist`` one weight norm with a ``dim``, or one spectral norm of a matrix or kernel?"""
    if len(plist) != 1:
        return False
    norm = plist[0]
    if isinstance(norm, _SpectralNorm):
        return plist.original.ndim > 1
    return isinstance(norm, _WeightNorm) and norm.dim is not None


def traced_through(m: nn.Module) -> bool:
    """Should the fx tracer trace ``m`` (not keep it a leaf): an unmodelled
    ``ParametrizationList``, or a layer holding one."""
    if isinstance(m, parametrize.ParametrizationList):
        return not modelled(m)
    plists = m._modules.get("parametrizations")
    return isinstance(plists, nn.ModuleDict) and parametrize.is_parametrized(m) and not all(modelled(p) for p in plists.values())  # type: ignore[arg-type]
