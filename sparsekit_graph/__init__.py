"""sparsekit-graph: structured pruning that understands the model's graph."""

from .errors import CouplingError, PlanError, ShapeMismatchError, SparseKitError, TraceError

__all__ = [
    "CouplingError",
    "PlanError",
    "ShapeMismatchError",
    "SparseKitError",
    "TraceError",
]
__version__ = "0.1.0"
