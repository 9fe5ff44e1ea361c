"""Save a pruned model as plan + masks (JSON) and weights (safetensors); no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import PlanError
from ..plan.schema import Plan
from .api import PruneResult
from .surgery import remove_channels

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
    """Rebuild the pruned structure on a freshly constructed model and load its weights."""
    d = Path(directory)
    plan = Plan.load(d / "plan.json")
    plan.check(fresh_model)
    try:
        removed = json.loads((d / "masks.json").read_text())["removed"]
    except (OSError, ValueError, KeyError) as e:
        raise PlanError(f"cannot read masks from {d / 'masks.json'}: {e}") from e
    masks = {}
    for g in plan.groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        idx = removed.get(g.name, [])
        if any(not isinstance(i, int) or not 0 <= i < g.size for i in idx):
            raise PlanError(f"masks.json: group {g.name!r} has channel indices outside 0..{g.size - 1}")
        mask[idx] = True
        masks[g.name] = mask
    remove_channels(fresh_model, plan, masks)
    try:
        fresh_model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    except (OSError, RuntimeError) as e:
        raise PlanError(f"cannot load weights from {d / 'model.safetensors'}: {e}") from e
    return fresh_model


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: clone all but the first of each shared tensor."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
