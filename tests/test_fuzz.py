"""The DESIGN.md oracle on random architectures (hypothesis); shrunk failures become regressions."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from helpers import check_oracle
from hypothesis import HealthCheck, given, settings
from random_nets import NetSpec, random_nets

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _oracle(spec: NetSpec) -> None:
    model, x = spec.build()
    check_oracle(model, x, Path(tempfile.mkdtemp()), min_drop=0.0, require=False)


@settings(max_examples=50, **SETTINGS)
@given(random_nets())
def test_random_nets_pass_the_oracle(net) -> None:
    _oracle(net)


@pytest.mark.slow
@settings(max_examples=500, **SETTINGS)
@given(random_nets())
def test_random_nets_pass_the_oracle_500(net) -> None:
    _oracle(net)
