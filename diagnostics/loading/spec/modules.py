"""The torch modules a spec builds into, laid out so module paths mirror JSON paths.

A spec's ``layers[2].layers[1]`` is the submodule ``layers.2.layers.1``; copy 4 of a Repeat at
``layers[2]`` is ``layers.2.4`` (its children ``layers.2.4.layers.1``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SpecSequential(nn.Module):
    """Runs ``layers`` in order; the model itself and every ``Sequential`` in a spec."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply each layer to the previous one's output."""
        for layer in self.layers:
            x = layer(x)
        return x


class SpecResidual(SpecSequential):
    """``x + layers(x)``: the skip path is the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the branch's output to the input."""
        return x + super().forward(x)


class SpecRepeat(nn.ModuleList):
    """Copies of one block (each a :class:`SpecSequential` with its own parameters), chained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply each copy in turn."""
        for block in self:
            x = block(x)
        return x


class _OutputSequence(nn.Module):
    """Mixin for recurrent layers: return the output sequence, not ``(output, state)``.

    A subclass (rather than a wrapper) keeps parameter names (``weight_ih_l0`` ...) and
    ``isinstance`` checks intact.
    """

    def forward(self, input: torch.Tensor, hx: Any = None) -> torch.Tensor:
        """The output sequence (all time steps, last layer)."""
        if input.is_cuda and not self.training and torch.is_grad_enabled():
            # cuDNN's RNN backward refuses eval mode, and the probe differentiates in eval mode
            # (dropout off); torch's native CUDA kernels have no such restriction.
            with torch.backends.cudnn.flags(enabled=False):
                return super().forward(input, hx)[0]
        return super().forward(input, hx)[0]


class SequenceRNN(_OutputSequence, nn.RNN):  # type: ignore[misc]  # narrower forward
    """:class:`torch.nn.RNN` returning only its output sequence."""


class SequenceLSTM(_OutputSequence, nn.LSTM):  # type: ignore[misc]  # narrower forward
    """:class:`torch.nn.LSTM` returning only its output sequence."""


class SequenceGRU(_OutputSequence, nn.GRU):  # type: ignore[misc]  # narrower forward
    """:class:`torch.nn.GRU` returning only its output sequence."""
