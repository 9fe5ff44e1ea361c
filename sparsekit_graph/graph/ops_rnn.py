"""Recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells) fed by pruned features (a CRNN).

The input features are read only by the first layer's input weights (``weight_ih_l0`` and,
bidirectional, ``weight_ih_l0_reverse``), columns like a ``Linear``'s: a removed feature that
is zero adds exactly nothing to the gates. The hidden size, the gates and the states pin
(their rows are tied across gates, layers and directions), and so does the sequence axis.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import RESIZERS, registrar
from .context import RuleContext
from .rules import register_function_rule, register_module_rule

__all__: list[str] = []

_INPUT_WEIGHTS = ("weight_ih_l0", "weight_ih_l0_reverse")


@register_module_rule(nn.RNN, nn.LSTM, nn.GRU)
def recurrent(ctx: RuleContext) -> None:
    m = ctx.module
    assert isinstance(m, nn.RNNBase)
    x = ctx.axes(ctx.input)
    value = ctx.meta(ctx.input)
    if x is None or not isinstance(value, Tensor) or value.ndim not in (2, 3):  # a PackedSequence: pin
        ctx.pin_everything(f"{ctx.where()} with an input it does not read as (batch, time, features)")
        return
    why = f"hidden size of {ctx.where()}"
    for name, _ in m.named_parameters():
        axes = ctx.param(name)
        if name in _INPUT_WEIGHTS:
            ctx.graph.link(x[-1], axes[1])
            ctx.pin([axes[0]], why)
        else:
            ctx.pin(axes, why)
    ctx.pin(x[:-1], f"sequence of {ctx.where()}")
    for axes in ctx.tensor_axes("hx"):  # the initial state(s), if passed
        ctx.pin(axes, why)
    for axes in _all_outputs(ctx):
        ctx.pin(axes, why)


@register_function_rule(torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu)
def recurrent_aten(ctx: RuleContext) -> None:
    """The layer as ``torch.export`` writes it: ``aten.gru(input, hx, params, has_biases,
    num_layers, dropout, train, bidirectional, batch_first)``, ``params`` the flat weights in
    ``nn.RNNBase``'s order (per layer and direction: ``w_ih``, ``w_hh``, the biases, an LSTM's
    ``w_hr``). The first layer's input weights (one per direction) read the features, as above."""
    ctx.read_all()
    x, params = ctx.axes(ctx.input), ctx.arg("params")
    directions = 2 if ctx.arg("bidirectional") else 1
    cells = ctx.arg("num_layers") * directions  # each with its weights: 2, 4 with biases, one more with ``proj_size``
    if x is None or not isinstance(params, (list, tuple)) or len(params) % cells or ctx.meta(ctx.input).ndim not in (2, 3):
        ctx.pin_everything(f"{ctx.where()} with arguments it does not read")
        return
    why = f"hidden size of {ctx.where()}"
    inputs = set(range(0, directions * len(params) // cells, len(params) // cells))  # ``weight_ih_l0`` of each direction
    for k, p in enumerate(params):
        axes = ctx.axes(p) or []
        if k in inputs and len(axes) == 2:
            ctx.graph.link(x[-1], axes[1])
            ctx.pin([axes[0]], why)
        else:
            ctx.pin(axes, why)
    ctx.pin(x[:-1], f"sequence of {ctx.where()}")
    for axes in (*ctx.tensor_axes("hx"), *ctx.outputs()):
        ctx.pin(axes, why)


@register_module_rule(nn.RNNCell, nn.LSTMCell, nn.GRUCell)
def recurrent_cell(ctx: RuleContext) -> None:
    """One step, ``h = cell(x, h)`` in a loop over time: the input features are the input
    weights' columns, as the whole layer's; the hidden size and the states pin."""
    x = ctx.axes(ctx.input)
    if x is None or ctx.meta(ctx.input).ndim not in (1, 2):
        ctx.pin_everything(f"{ctx.where()} with an input it does not read as (batch, features)")
        return
    why = f"hidden size of {ctx.where()}"
    for name, _ in ctx.module.named_parameters():  # type: ignore[union-attr]
        axes = ctx.param(name)
        if name == "weight_ih":
            ctx.graph.link(x[-1], axes[1])
            ctx.pin([axes[0]], why)
        else:
            ctx.pin(axes, why)
    ctx.pin(x[:-1], f"batch of {ctx.where()}")
    for axes in [*ctx.tensor_axes("hx"), *ctx.outputs()]:
        ctx.pin(axes, why)


def _all_outputs(ctx: RuleContext) -> list[list]:
    """Axes of ``output`` and of every state in ``h_n`` / ``(h_n, c_n)``."""
    out = ctx.out_value
    found = [ctx.out(0)] if isinstance(out, tuple) and isinstance(out[0], Tensor) else []
    states = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    parts = states if isinstance(states, tuple) else (states,)
    for i, t in enumerate(parts):
        if isinstance(t, Tensor):
            name = f"{ctx.prefix}{ctx.node.name}.1" + (f".{i}" if isinstance(states, tuple) else "")
            found.append(ctx.graph.add_value(name, t))
    return found


@registrar(RESIZERS)(nn.RNN, nn.LSTM, nn.GRU)
def _resize(m: nn.RNNBase) -> None:
    """The input size follows the first layer's input weights; the flat weight list is rebuilt
    (surgery replaced the parameters behind ``RNNBase.__setattr__``)."""
    m.input_size = m.weight_ih_l0.shape[1]
    m._init_flat_weights()


@registrar(RESIZERS)(nn.RNNCell, nn.LSTMCell, nn.GRUCell)
def _resize_cell(m: nn.RNNCellBase) -> None:
    m.input_size = m.weight_ih.shape[1]
