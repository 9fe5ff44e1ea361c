"""The block-sparsity engine: views, block grids, couplings and their thresholding."""

from ..errors import CouplingError, ShapeMismatchError, SparseKitError
from .batch import soft_threshold_all
from .block import BlockSpec, SparseBlock
from .coupling import BlockCoupling
from .view import View

__all__ = [
    "BlockCoupling",
    "BlockSpec",
    "CouplingError",
    "ShapeMismatchError",
    "SparseBlock",
    "SparseKitError",
    "View",
    "soft_threshold_all",
]
