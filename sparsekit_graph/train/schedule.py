"""How ``lam`` evolves over training, and what ``ProximalStep.stats()`` reports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LamSchedule", "ProxStats"]


class LamSchedule(BaseModel):
    """How ``lam`` evolves with the optimizer steps ``t = 1, 2, ...`` the prox has seen.

    * ``constant``: ``lam`` at every step.
    * ``warmup``: no penalty for the first ``steps`` steps (dense warm-up), then ``lam``.
    * ``linear``: ``lam * (start + (end - start) * min(1, t / steps))``, e.g. a ramp from 0.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "warmup", "linear"] = "constant"
    steps: int = Field(default=0, ge=0)
    start: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    end: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)

    @classmethod
    def constant(cls) -> LamSchedule:
        return cls()

    @classmethod
    def warmup(cls, steps: int) -> LamSchedule:
        return cls(kind="warmup", steps=steps)

    @classmethod
    def linear(cls, steps: int, start: float = 0.0, end: float = 1.0) -> LamSchedule:
        return cls(kind="linear", steps=steps, start=start, end=end)

    def factor(self, t: int) -> float:
        """Multiplier of ``lam`` at step ``t`` (1-based)."""
        if self.kind == "warmup":
            return 0.0 if t <= self.steps else 1.0
        if self.kind == "linear":
            return self.end if self.steps == 0 else self.start + (self.end - self.start) * min(1.0, t / self.steps)
        return 1.0


class ProxStats(BaseModel):
    """Where training to sparsity stands: channels (and whole groups) at exactly zero."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int  # optimizer steps seen (skipped ones not counted)
    lam: float  # lam of the latest step, schedule applied
    groups: int  # penalised groups
    groups_zero: int  # groups with every channel at zero
    groups_sparse: int  # groups with at least one channel at zero
    channels: int
    channels_zero: int
    removable: int  # channels ``masks()`` removes (every zero channel, but one kept per group)
    fraction_removable: float
    zero: dict[str, int]  # channels at zero, per group
