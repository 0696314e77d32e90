"""One time step of the ONNX LSTM, GRU and RNN cells, and their activation functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from diagnostics.loading.onnx.ops.recurrent import OnnxRecurrent

# Gate blocks stacked in W and R, and the default activations (f, g, h order of the standard).
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
# name (lower case) -> (default alpha, default beta); None: the function takes no such value.
_PARAMETERS: dict[str, tuple[float | None, float | None]] = {
    "relu": (None, None), "tanh": (None, None), "sigmoid": (None, None),
    "softsign": (None, None), "softplus": (None, None),
    "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None), "elu": (1.0, None),
    "hardsigmoid": (0.2, 0.5), "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0),
}


@dataclass(frozen=True)
class Activation:
    """An activation a recurrent node names, with its alpha and beta."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    @classmethod
    def from_onnx(cls, name: str, alphas: list[float], betas: list[float]) -> Activation:
        """Build ``name``, taking alpha/beta from the front of ``alphas``/``betas`` if it uses them.

        Raises:
            NotImplementedError: an activation the standard does not list.
        """
        key = name.lower()
        if key not in _PARAMETERS:
            raise NotImplementedError(f"recurrent activation {name!r}")
        alpha, beta = _PARAMETERS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        return cls(key, float(alpha or 0.0), float(beta or 0.0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901
        """f(x)."""
        name, alpha, beta = self.name, self.alpha, self.beta
        if name == "sigmoid":
            return torch.sigmoid(x)
        if name == "tanh":
            return torch.tanh(x)
        if name == "relu":
            return torch.relu(x)
        if name == "softsign":
            return F.softsign(x)
        if name == "softplus":
            return F.softplus(x)
        if name == "leakyrelu":
            return F.leaky_relu(x, alpha)
        if name == "thresholdedrelu":
            return torch.where(x > alpha, x, torch.zeros_like(x))
        if name == "elu":
            return F.elu(x, alpha)
        if name == "hardsigmoid":
            return torch.clamp(alpha * x + beta, 0.0, 1.0)
        if name == "affine":
            return alpha * x + beta
        return alpha * torch.tanh(beta * x)  # scaledtanh


def step(node: OnnxRecurrent, direction: int, x: torch.Tensor, h: torch.Tensor,
         c: torch.Tensor, r: torch.Tensor, r_bias: torch.Tensor | None,
         peephole: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance one step of ``direction``.

    Args:
        node: The module (its cell type and attributes).
        direction: Index of the direction (selects the activations).
        x: ``X_t·Wᵀ + Wb`` for this step, ``[batch, gates·hidden]``.
        h: Previous hidden state ``[batch, hidden]``.
        c: Previous cell state (LSTM; ignored by the others).
        r: Recurrent weights of this direction ``[gates·hidden, hidden]``.
        r_bias: Recurrent bias ``Rb`` of this direction, or None.
        peephole: LSTM peepholes ``[3·hidden]`` (i, o, f), or None.

    Returns:
        The new hidden state and the new cell state (``c`` unchanged for GRU/RNN).
    """
    acts = node.activations[direction]
    clip = node.clip

    def bounded(value: torch.Tensor) -> torch.Tensor:
        return value if clip is None else torch.clamp(value, -clip, clip)

    if node.cell == "RNN":
        return acts[0](bounded(x + _linear(h, r, r_bias))), c
    if node.cell == "GRU":
        return _gru(node, acts, bounded, x, h, r, r_bias), c
    gates = x + _linear(h, r, r_bias)
    i, o, f, cand = gates.chunk(4, dim=-1)
    if peephole is not None:
        p_i, p_o, p_f = peephole.chunk(3)
        i, f = i + p_i * c, f + p_f * c
    i = acts[0](bounded(i))
    f = 1 - i if node.input_forget else acts[0](bounded(f))
    new_c = f * c + i * acts[1](bounded(cand))
    if peephole is not None:
        o = o + p_o * new_c
    o = acts[0](bounded(o))
    return o * acts[2](new_c), new_c


def _linear(h: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.matmul(h, r.transpose(0, 1))
    return out if bias is None else out + bias


def _gru(node: OnnxRecurrent, acts, bounded, x: torch.Tensor, h: torch.Tensor,
         r: torch.Tensor, r_bias: torch.Tensor | None) -> torch.Tensor:
    hidden = h.shape[-1]
    x_z, x_r, x_h = x.chunk(3, dim=-1)
    if node.linear_before_reset:
        h_z, h_r, h_h = _linear(h, r, r_bias).chunk(3, dim=-1)
        z, reset = acts[0](bounded(x_z + h_z)), acts[0](bounded(x_r + h_r))
        candidate = acts[1](bounded(x_h + reset * h_h))
    else:
        zr_bias = None if r_bias is None else r_bias[: 2 * hidden]
        h_z, h_r = _linear(h, r[: 2 * hidden], zr_bias).chunk(2, dim=-1)
        z, reset = acts[0](bounded(x_z + h_z)), acts[0](bounded(x_r + h_r))
        h_bias = None if r_bias is None else r_bias[2 * hidden:]
        candidate = acts[1](bounded(x_h + _linear(reset * h, r[2 * hidden:], h_bias)))
    return (1 - z) * candidate + z * h
