"""Pictures of a model's graph coloured by plan groups (SVG, PNG, DOT) and the HTML plan
explorer; pip dependencies only (graphviz is used when asked for and installed)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SparseKitError
from ..plan.schema import Plan
from .dot import scene_dot
from .explorer import explorer_html
from .layers import Layer, LayerGraph, layer_graph
from .png import write_png
from .scene import Scene, build_scene
from .svg import scene_svg

__all__ = ["FORMATS", "Layer", "LayerGraph", "Scene", "build_scene", "explorer_html", "layer_graph", "write_picture"]


def _svg(scene: Scene, lg: LayerGraph, path: Path) -> None:
    path.write_text(scene_svg(scene))


def _html(scene: Scene, lg: LayerGraph, path: Path) -> None:
    path.write_text(explorer_html(lg.plan, scene))


def _dot(scene: Scene, lg: LayerGraph, path: Path) -> None:
    path.write_text(scene_dot(lg, scene))


def _png(scene: Scene, lg: LayerGraph, path: Path) -> None:
    write_png(scene, path)


FORMATS: dict[str, Callable[[Scene, LayerGraph, Path], None]] = {".svg": _svg, ".png": _png, ".html": _html, ".dot": _dot}


def write_picture(model: nn.Module, example_inputs: Any, plan: Plan, out: Path, *, graphviz: bool = False) -> None:
    """Draw ``model``'s layers coloured by ``plan``'s groups into ``out`` (.svg, .png, .html, .dot).

    Args:
        model: The model the plan was made for (traced on meta; not modified).
        example_inputs: Its example inputs (real or meta).
        plan: The plan whose groups colour the layers.
        out: The file; its suffix picks the format.
        graphviz: Lay .svg/.png out with graphviz ``dot`` (must be installed) instead of the
            built-in layered layout.

    Raises:
        SparseKitError: An unknown suffix, graphviz asked for but missing, or the model
            cannot be traced.
    """
    out = Path(out)
    writer = FORMATS.get(out.suffix.lower())
    if writer is None:
        raise SparseKitError(f"output {out}: unknown picture format {out.suffix!r} (use {', '.join(FORMATS)})")
    lg = layer_graph(model, example_inputs, plan)
    scene = build_scene(lg)
    if graphviz and out.suffix.lower() in (".svg", ".png"):
        exe = shutil.which("dot")
        if exe is None:
            raise SparseKitError("--graphviz: graphviz 'dot' is not installed (leave the flag out for the built-in layout)")
        fmt = out.suffix.lower().lstrip(".")
        subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=scene_dot(lg, scene).encode(), check=True)
        return
    writer(scene, lg, out)
