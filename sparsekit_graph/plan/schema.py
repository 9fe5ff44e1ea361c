"""The declarative plan: pydantic models, JSON in and out, and a check against a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from torch import Tensor

from ..errors import PlanError
from .check import check_plan
from .ties import check_tied_overrides, validate_ties

__all__ = [
    "SCHEMA_VERSION",
    "AttentionScale",
    "AxisFollow",
    "Group",
    "InputSpec",
    "Member",
    "Plan",
    "PlanOptions",
    "SizeRef",
    "Tie",
    "TiePart",
]

# 6: plain-value inputs, options; 5: min_keep; 4: head_dim (factor members, attention scales, followed axes);
# 3: ties, fixed members; 2: sizes
SCHEMA_VERSION = 6
NonNeg = Annotated[int, Field(ge=0, le=2**40)]
Positive = Annotated[int, Field(ge=1, le=2**40)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")  # an input of inf stays inf


_Model = TypeVar("_Model", bound=BaseModel)


_FIELDS: dict[type, frozenset[str]] = {}  # each model class's field names (pydantic's ``model_fields`` costs ~1 us)


def constructed(cls: type[_Model], **fields: Any) -> _Model:
    """``cls.model_construct(**fields)`` (no validation) for callers that pass every field, at
    half its cost: the planner builds thousands of members from a graph consistent by
    construction; the loader validates."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(cls.model_fields)
    if fields.keys() != names:
        return cls.model_construct(**fields)
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    object.__setattr__(obj, "__pydantic_fields_set__", set(fields))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class Member(_Frozen):
    """The slice of one parameter (or buffer) axis that a group owns.

    Channel ``i`` of the group owns elements ``[start + q*block, start + (q+1)*block)`` of
    ``axis``, where ``q = indices[i]`` if ``indices`` is given, else ``q = i``.
    ``order`` is the BlockCoupling order of the member's bound view
    ``(pre, *channel_axes, block, post)``: channel axes first. ``fix`` holds ``(axis, index)``
    pairs of leading axes held at one index: the member lives in ``param[index]`` (one expert
    of a stacked expert tensor ``(E, 2I, H)``), and ``axis`` still counts the full tensor's axes.
    ``factor`` 1 marks a member of an axis's inner factor (head_dim inside ``heads x head_dim``
    rows): it may overlap members of the axis itself; surgery removes the union of both.
    """

    param: str = Field(min_length=1)
    axis: NonNeg
    start: NonNeg
    stop: Positive
    block: Positive = 1
    indices: list[NonNeg] | None = None
    order: list[NonNeg]
    fix: list[tuple[NonNeg, NonNeg]] | None = None
    factor: Annotated[int, Field(ge=0, le=1)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> Member:
        if self.fix is not None and sorted(a for a, _ in self.fix) != list(range(len(self.fix))):
            raise ValueError(f"member {self.param}: fixed axes {self.fix} must be the leading axes")
        if self.fix is not None and self.axis < len(self.fix):
            raise ValueError(f"member {self.param}: axis {self.axis} is one of its fixed axes")
        if self.stop <= self.start:
            raise ValueError(f"member {self.param}: stop {self.stop} must exceed start {self.start}")
        if (self.stop - self.start) % self.block:
            raise ValueError(f"member {self.param}: slice {self.start}:{self.stop} is not a whole number of blocks")
        if sorted(self.order) != list(range(len(self.order))) or len(self.order) < 4:
            raise ValueError(f"member {self.param}: order {self.order} is not a permutation of its view's axes")
        if self.indices is not None:
            slots = (self.stop - self.start) // self.block
            if len(set(self.indices)) != len(self.indices) or max(self.indices, default=0) >= slots:
                raise ValueError(f"member {self.param}: indices must be distinct and below {slots}")
        return self

    @property
    def channels(self) -> int:
        """How many channels this member describes."""
        return len(self.indices) if self.indices is not None else (self.stop - self.start) // self.block

    def positions(self) -> list[int]:
        """Block position along the axis of each channel, in channel order."""
        base = self.start // self.block
        return [base + q for q in (self.indices if self.indices is not None else range(self.channels))]


class SizeRef(_Frozen):
    """A layer or config attribute that counts a group's channels (``owner``: the module's
    qualified name, or ``"config"``): removing ``k`` channels lowers it by ``k * per_channel``.
    Surgery rewrites it, e.g. ``model.layers.0.self_attn`` ``num_heads``; ``uses`` names the
    traced axes it sized (``"view_3:2"``), which ``prune`` checks shrank by as much."""

    owner: str
    attr: str = Field(min_length=1)
    per_channel: Positive
    uses: list[str] = Field(default_factory=list)  # "node:axis" of the traced axes it sized
    every: Positive = 1  # lowered by per_channel for every ``every`` channels removed (a tie's parts)

    def lowered_by(self, removed: int) -> int:
        """How much the attribute drops when the group loses ``removed`` channels."""
        return self.per_channel * (removed // self.every)


class AttentionScale(_Frozen):
    """An attention whose scale ``1/sqrt(head_dim)`` counts a group's channels (``per_channel``
    elements of ``head_dim`` each). Pruning to ``d`` elements multiplies the ``query`` tensors
    (the query projection's weight and bias) by ``sqrt(d / head_dim)`` and sets ``owner.attr``
    (the scale the model passes, if it passes one) to ``d ** -0.5``: the scores stay the same,
    in the pruned model and in one rebuilt from its config."""

    head_dim: Positive
    per_channel: Positive
    query: list[str] = Field(min_length=1)
    owner: str | None = None
    attr: str | None = None

    def factor(self, removed: int) -> tuple[int, float]:
        """The pruned head size and the factor the query is multiplied by."""
        d = self.head_dim - self.per_channel * removed
        return d, (d / self.head_dim) ** 0.5


class AxisFollow(_Frozen):
    """A traced axis the model sizes from the group's channels in code torch.export writes as
    a literal (``x[..., : x.shape[-1] // 2]`` of rotary embeddings): ``prune`` checks it lost
    ``per_channel`` elements for each channel removed."""

    use: str = Field(min_length=3)  # "node:axis"
    per_channel: Positive = 1


class Group(_Frozen):
    """A channel space: slices of parameters that must be pruned together.

    ``min_keep`` is the fewest channels the model still runs with, as it computes, where an op
    needs that many (``h.topk(3, dim=1)``: 3); ``min_keep_reason`` names the op. ``prune``
    never keeps fewer (a ratio is clamped; a mask or ``keep`` below it is refused).
    """

    name: str = Field(min_length=1)
    size: Positive
    prunable: bool
    reason: str | None = None
    zero_invariant: bool
    members: list[Member] = Field(min_length=1)
    sizes: list[SizeRef] = Field(default_factory=list)
    scales: list[AttentionScale] = Field(default_factory=list)
    follows: list[AxisFollow] = Field(default_factory=list)
    ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    keep: Positive | None = None
    min_keep: Positive | None = None
    min_keep_reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Group:
        for m in self.members:
            if m.channels != self.size:
                raise ValueError(
                    f"group {self.name}: member {m.param} axis {m.axis} has {m.channels} channels, group size is {self.size}"
                )
        if self.keep is not None and self.keep > self.size:
            raise ValueError(f"group {self.name}: keep {self.keep} exceeds size {self.size}")
        if not self.prunable and not self.reason:
            raise ValueError(f"group {self.name}: a pinned group needs a reason")
        if self.min_keep is not None:
            if self.min_keep > self.size:
                raise ValueError(f"group {self.name}: min_keep {self.min_keep} exceeds size {self.size}")
            if not self.min_keep_reason:
                raise ValueError(f"group {self.name}: min_keep needs a min_keep_reason (the op that needs the channels)")
            if self.keep is not None and self.keep < self.min_keep:
                raise ValueError(
                    f"group {self.name}: keep {self.keep} is below min_keep {self.min_keep} ({self.min_keep_reason})"
                )
        elif self.min_keep_reason is not None:
            raise ValueError(f"group {self.name}: min_keep_reason without min_keep")
        return self

    @property
    def fewest(self) -> int:
        """The fewest channels a pruned model may keep of this group (``min_keep``, else 1)."""
        return self.min_keep or 1


class TiePart(_Frozen):
    """Channels of one group (``channels``: their indices; None: all of them)."""

    group: str = Field(min_length=1)
    channels: list[NonNeg] | None = None


class Tie(_Frozen):
    """Parts that must lose equal numbers of channels: the experts of one stacked tensor (each
    expert's width is a group; the tensor stays rectangular), or the query heads of each
    key/value group (``gqa="query_heads"``). ``prune`` keeps them equal and rejects masks
    that break them; ``check`` rejects overrides (``ratio``/``keep``) that would."""

    parts: list[TiePart] = Field(min_length=2)
    reason: str = Field(min_length=1)


PlainValue = bool | int | float | str | None


class InputSpec(_Frozen):
    """One example input the plan was made with: a tensor's shape and dtype, or a plain value
    (``forward(x, use_b=False)``: ``None``, a bool, number or string) that ``prune`` passes as
    it was, since the forward may branch on it."""

    name: str
    shape: list[NonNeg] = Field(default_factory=list)
    dtype: str = ""
    keyword: bool = False
    tensor: bool = True  # False: the input is ``value``
    value: PlainValue = None

    @model_validator(mode="after")
    def _one_kind(self) -> InputSpec:
        if self.tensor and (not self.dtype or self.value is not None):
            raise ValueError(f"input {self.name}: a tensor input has a dtype and no value")
        if not self.tensor and (self.shape or self.dtype):
            raise ValueError(f"input {self.name}: a plain value has no shape or dtype")
        return self

    def example(self) -> Any:
        """A meta tensor shaped like the input, or its plain value."""
        return self.meta() if self.tensor else self.value

    def meta(self) -> Any:
        import torch

        dtype = getattr(torch, self.dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise PlanError(f"input {self.name}: unknown dtype {self.dtype!r}")
        return torch.empty(self.shape, dtype=dtype, device="meta")


class PlanOptions(_Frozen):
    """The options ``plan`` was called with, which ``prune`` plans with again to check a plan
    it did not make (loaded, edited)."""

    ignore: list[str] = Field(default_factory=list)
    train_graph: bool = True
    gqa: str = "kv_groups"
    head_dim: bool = False


class Given:
    """The example inputs ``plan`` was given, by name, for ``prune`` in the same process: no part
    of the plan's value (plans equal whatever they hold; a plan read from a file holds none)."""

    __slots__ = ("values",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values = values

    def __eq__(self, other: object) -> bool:
        return True


class Plan(_Frozen):
    """Every coupling group of a model, with why some are pinned.

    Save with ``save(path)`` and read back with ``Plan.load(path)``; ``check(model)`` before use.
    """

    schema_version: int = SCHEMA_VERSION
    model: str = ""
    inputs: list[InputSpec] = Field(default_factory=list)
    options: PlanOptions = Field(default_factory=PlanOptions)
    groups: list[Group] = Field(default_factory=list)
    ties: list[Tie] = Field(default_factory=list)
    _given: Given = PrivateAttr(default_factory=lambda: Given())

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.schema_version not in (1, 2, 3, 4, 5, SCHEMA_VERSION):  # 1: no sizes; ... 5: tensor inputs only
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        seen: dict[str, Group] = {}
        for g in self.groups:
            if g.name in seen:
                raise ValueError(f"duplicate group name {g.name!r}")
            seen[g.name] = g
        validate_ties(self.ties, seen)
        return self

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise PlanError(f"plan has no group named {name!r}")

    def example_inputs(self, model: object = None) -> tuple[Any, ...] | dict[str, Any]:
        """The inputs the plan was made with: the tensors ``plan`` was given, in the process that
        made it and where they are on ``model``'s device (a forward whose sizes depend on the
        data, ``torch.where(idx == e)``, plans alike only on them), else meta tensors of their
        shapes; plain values as they were. With ``model``, floating-point inputs take the dtype
        of its floating-point parameters where they all have one other than the inputs' (a model
        made ``.double()`` after planning runs on double inputs)."""
        params = list(getattr(model, "parameters", list)())
        given = self._given.values
        devices = {p.device for p in params[:1]} | {v.device for v in (given or {}).values() if isinstance(v, Tensor)}
        if given is not None and len(devices) <= 1:
            found = dict(given)
        else:
            found = {i.name: i.example() for i in self.inputs}
        dtypes = {p.dtype for p in params if p.is_floating_point()}
        if len(dtypes) == 1:
            (dtype,) = dtypes
            found = {k: v.to(dtype) if getattr(v, "is_floating_point", bool)() else v for k, v in found.items()}
        return found if any(i.keyword for i in self.inputs) else tuple(found.values())

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PlanError(f"cannot read plan file {path}: {e}") from e
        return cls.from_json(text)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "plan"
            raise PlanError(f"invalid plan: {where}: {first['msg']}") from e

    def check(self, model: object) -> None:
        """Raise ``PlanError`` naming the first group/member that does not fit ``model``, or
        the groups of a tie whose overrides would break it."""
        check_plan(self, model)
        check_tied_overrides(self)
