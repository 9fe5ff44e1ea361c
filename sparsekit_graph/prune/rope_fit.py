"""Rotary frequencies a Hugging Face config can state: reloading a head_dim-pruned model.

Pruning head_dim keeps a subset of the rotary frequencies ``inv_freq[i] = base ** (-2i / d)``;
a rebuilt model recomputes the whole progression for the new ``d`` and rotates by the wrong
angles. The ``longrope`` rope type multiplies each frequency's period by its own factor
(``inv_freq = 1 / (short_factor * base ** (2k / d'))``), so a per-frequency factor list (equal
short and long lists, ``factor = attention_factor = 1``: no length switch, no cos/sin scaling)
states any subset. The factors are chosen float32 value by value so the rebuilt frequencies
equal the pruned ones bit for bit; where none does, nothing is rewritten.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["fit_rope_factors"]

_SEARCH_ULPS = 64  # float32 neighbours of the ideal factor tried per frequency


def fit_rope_factors(config: Any, pruned: nn.Module, built: nn.Module) -> bool:
    """Rewrite ``config.rope_parameters`` to ``longrope`` factors under which ``built``'s class
    recomputes ``pruned``'s rotary frequencies exactly. ``built`` was made from ``config``.

    Returns True when ``config`` was changed (the caller rebuilds and checks the model), False
    when the frequencies already agree or no exact factors exist (default rope only: a single
    ``rope_parameters`` dict with ``rope_type == "default"`` and no partial rotary factor).
    """
    pairs = [
        (p, b)
        for p, b in zip(pruned.modules(), built.modules())
        if isinstance(getattr(p, "inv_freq", None), Tensor) and isinstance(getattr(b, "inv_freq", None), Tensor)
    ]
    wanted = {_key(p.inv_freq) for p, _ in pairs}
    if not pairs or len(wanted) != 1 or all(_key(p.inv_freq) == _key(b.inv_freq) for p, b in pairs):
        return False
    target = pairs[0][0].inv_freq.detach().float().cpu()  # (d' / 2,)
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default" or "rope_theta" not in params:
        return False
    if params.get("partial_rotary_factor", 1.0) != 1.0 or getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return False
    dim = 2 * target.numel()
    period = params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)  # as transformers does
    factors = _exact_factors(target, period)
    if factors is None:
        return False
    new = copy.deepcopy(params)
    new.update(
        rope_type="longrope",
        short_factor=factors,
        long_factor=list(factors),
        factor=1.0,
        attention_factor=1.0,
        original_max_position_embeddings=config.max_position_embeddings,
    )
    config.rope_parameters = new
    return True


def _key(t: Tensor) -> tuple[float, ...]:
    return tuple(t.detach().float().cpu().tolist())


def _exact_factors(target: Tensor, period: Tensor) -> list[float] | None:
    """float32 ``f`` per frequency with ``1 / (f * period) == target`` bit for bit, or None."""
    ideal = (1.0 / (target.double() * period.double())).float()  # (n,), positive
    steps = torch.tensor(sorted(range(-_SEARCH_ULPS, _SEARCH_ULPS + 1), key=abs), dtype=torch.int32)
    candidates = (ideal.view(torch.int32)[:, None] + steps[None]).view(torch.float32)  # (n, steps): ulp neighbours
    exact = (1.0 / (candidates * period[:, None])) == target[:, None]
    if not bool(exact.any(1).all()):
        return None
    first = exact.int().argmax(1)  # the nearest exact neighbour of each ideal factor
    return candidates.gather(1, first[:, None])[:, 0].tolist()
