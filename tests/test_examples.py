"""The transformer examples run end to end (slow: about a minute together)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, expect",
    [
        ("examples/llama_prune.py", ["--skip-meta"], "identical outputs: True"),
        ("examples/bert_prune.py", [], "from_pretrained identical: True"),
    ],
)
def test_example_runs(script: str, args: list[str], expect: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout and "exactness" in out.stdout
