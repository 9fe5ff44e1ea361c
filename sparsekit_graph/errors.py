"""The exception hierarchy: one root, one subclass per failure domain; and the warnings."""

from __future__ import annotations

__all__ = [
    "CouplingError",
    "PlanError",
    "ShapeMismatchError",
    "SparseKitError",
    "TraceError",
    "UnreadParameters",
]


class SparseKitError(Exception):
    """Root of every error this library raises on purpose."""


class ShapeMismatchError(SparseKitError):
    """A tensor does not have the shape a block, view or threshold expects."""

    def __init__(self, expected: tuple[int, ...], got: tuple[int, ...], context: str = "") -> None:
        self.expected = tuple(expected)
        self.got = tuple(got)
        detail = f"shape mismatch: expected {self.expected}, got {self.got}"
        super().__init__(": ".join(part for part in (context, detail) if part))


class CouplingError(SparseKitError):
    """Blocks that are coupled together do not line up."""


class PlanError(SparseKitError):
    """A plan is malformed or does not fit the model it is used with."""


class TraceError(SparseKitError):
    """A model could not be traced or its shapes could not be propagated."""


class UnreadParameters(UserWarning):
    """``plan``: some parameters of the model are read on no path the example inputs take."""
