"""Every example in examples/ runs end to end in its quick mode (slow: about two minutes together)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [
    ("examples/resnet_prune.py", ["--quick", "--threads", "2"], "exactness"),
    ("examples/llama_prune.py", ["--skip-meta"], "identical outputs: True"),
    ("examples/bert_prune.py", [], "from_pretrained identical: True"),
]


def test_every_example_is_run() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(Path(s).name for s, _, _ in EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expect", EXAMPLES, ids=[Path(s).stem for s, _, _ in EXAMPLES])
def test_example_runs(script: str, args: list[str], expect: str) -> None:
    pytest.importorskip("torchvision" if "resnet" in script else "transformers")
    out = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout and "exactness" in out.stdout
