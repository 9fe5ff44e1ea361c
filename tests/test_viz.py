"""Pictures without system tools: one node per layer, edges as data flows, every group in the
legend, pinned ones with their reason, no overlapping labels."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest.importorskip("torchvision")
import sparsekit_graph as skg  # noqa: E402
from sparsekit_graph.errors import SparseKitError  # noqa: E402
from sparsekit_graph.viz import build_scene, layer_graph, write_picture  # noqa: E402
from sparsekit_graph.zoo import load_spec  # noqa: E402


@pytest.fixture(scope="module")
def resnet18() -> tuple:
    model, x = load_spec("torchvision:resnet18")
    return model, x, skg.plan(model, x)


def _no_overlaps(scene) -> None:
    boxes = [it.box for it in scene.items] + [r.box for r in scene.legend]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_resnet18_layers_edges_legend(resnet18: tuple) -> None:
    model, x, plan = resnet18
    lg = layer_graph(model, x, plan)
    names = {layer.name for layer in lg.layers.values()}
    assert {"conv1", "layer1.0.conv1", "layer4.1.bn2", "fc"} <= names
    key = {layer.name: k for k, layer in lg.layers.items()}
    assert (key["layer1.0.conv1"], key["layer1.0.bn1"]) in lg.edges  # data flow
    assert lg.plan.groups[lg.layers[key["layer1.0.conv1"]].out_groups[0]].name == "layer1.0.conv1:out"
    scene = build_scene(lg)
    _no_overlaps(scene)
    assert [r.text.split(" ")[0] for r in scene.legend] == [g.name for g in plan.groups]
    assert any("PINNED: model output" in r.text for r in scene.legend)
    assert any(it.pinned for it in scene.items)  # fc's output group is pinned


def test_svg_png_html_dot(resnet18: tuple, tmp_path: Path) -> None:
    model, x, plan = resnet18
    for ext in ("svg", "png", "html", "dot"):
        write_picture(model, x, plan, tmp_path / f"g.{ext}")
    svg = ElementTree.parse(tmp_path / "g.svg").getroot()  # well-formed XML
    nodes = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if "node" in g.get("class", "").split()]
    assert len(nodes) == len(layer_graph(model, x, plan).layers)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "g.html").read_text()
    assert "<svg" in html and not re.search(r"""(src|href)=["']https?:""", html)  # self-contained
    assert "->" in (tmp_path / "g.dot").read_text()
    with pytest.raises(SparseKitError, match="unknown picture format"):
        write_picture(model, x, plan, tmp_path / "g.bmp")


def test_llama_two_layers_no_overlap() -> None:
    pytest.importorskip("transformers")
    model, x = load_spec("hf:llama")
    plan = skg.plan(model, x)
    lg = layer_graph(model, x, plan)
    names = {layer.name for layer in lg.layers.values()}
    assert {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"} <= names
    assert not any("view" == n for n in names)  # plumbing folded away
    scene = build_scene(lg)
    _no_overlaps(scene)
    assert len(scene.legend) == len(plan.groups)
