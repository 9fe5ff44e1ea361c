"""Save a pruned model as plan + masks (JSON) and weights (safetensors); no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import PlanError
from ..plan.min_keep import check_min_keep
from ..plan.planner import check_planned
from ..plan.schema import Plan
from ..plan.ties import check_tied_masks
from .api import PruneResult, checked_masks
from .surgery import remove_channels, undone_on_failure

__all__ = ["load_pruned", "save_pruned"]


def save_pruned(result: PruneResult, directory: str | Path) -> None:
    """Write ``plan.json``, ``masks.json`` and ``model.safetensors`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    result.plan.save(d / "plan.json")
    masks = {name: torch.nonzero(m).flatten().tolist() for name, m in result.masks.items() if bool(m.any())}
    (d / "masks.json").write_text(json.dumps({"removed": masks}, indent=1))
    state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
    save_file(_untied(state), str(d / "model.safetensors"))


def load_pruned(fresh_model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild the pruned structure on a freshly constructed model and load its weights.

    Raises:
        PlanError: A file is missing or damaged, or does not fit ``fresh_model``; the model
            is unchanged.
    """
    d = Path(directory)
    plan = Plan.load(d / "plan.json")
    plan.check(fresh_model)
    check_planned(plan, fresh_model)  # a hand-edited plan file (an attention scale removed) is refused, as by ``prune``
    masks = _read_masks(d / "masks.json", plan)
    check_min_keep(plan, masks)
    check_tied_masks(plan, masks)
    try:
        state = load_file(str(d / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors' own errors (a damaged header) included
        raise PlanError(f"cannot read weights from {d / 'model.safetensors'}: {type(e).__name__}: {e}") from e
    with undone_on_failure(fresh_model):
        remove_channels(fresh_model, plan, masks)
        _check_fits(state, fresh_model, d / "model.safetensors")  # before ``load_state_dict`` writes any tensor
        fresh_model.load_state_dict(state, strict=True)
    return fresh_model


def _check_fits(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Raise ``PlanError`` unless ``state`` holds every tensor of ``model``'s state dict, at its shape, and no other."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if got[k] != want[k])
    if bad:
        k = bad[0]
        raise PlanError(
            f"the weights in {path} do not fit the pruned model: tensor {k!r} is {got.get(k, 'missing')} there, "
            f"{want.get(k, 'absent')} in the model"
        )


def _read_masks(path: Path, plan: Plan) -> dict[str, torch.Tensor]:
    """``masks.json``'s removed channels as bool masks by group, checked against ``plan``."""
    try:
        removed = json.loads(path.read_text())["removed"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanError(f"cannot read masks from {path}: {e}") from e
    if not isinstance(removed, dict):
        raise PlanError(f"{path.name} field removed: expected an object of group names, got {type(removed).__name__}")
    groups = {g.name: g for g in plan.groups}
    masks = {}
    for name, idx in removed.items():
        g = groups.get(name)
        if g is None:
            raise PlanError(f"{path.name}: the plan has no group named {name!r}")
        if not isinstance(idx, list) or any(type(i) is not int or not 0 <= i < g.size for i in idx):
            raise PlanError(f"{path.name}: group {name!r} needs a list of channel indices in 0..{g.size - 1}")
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[idx] = True
        masks[name] = mask
    return checked_masks(plan, masks)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: clone all but the first of each shared tensor."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
