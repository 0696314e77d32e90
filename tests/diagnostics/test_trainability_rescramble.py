"""The rejected "features redrawn by every step" measure (bench/trainability/rescramble.py) reads
what it claims: 1 where a step leaves the readout's features alone (dropout included: every
reading draws the same masks), low where every step redraws them; and its stability ignores the
first step and keeps the most stable later one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.trainability.isometry import feature_cka
from bench.trainability.rescramble import stability, step_similarities
from diagnostics.config import Optimizer


def test_cka_is_one_for_a_rotated_and_scaled_copy_and_low_for_unrelated_features():
    torch.manual_seed(0)
    features = torch.randn(64, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert feature_cka(features, 3.0 * features @ rotation) == pytest.approx(1.0, abs=1e-9)
    # unrelated 16-dim features of 64 samples: CKA ~ 16/64 by chance, far from 1
    assert feature_cka(features, torch.randn(64, 16)) < 0.5


def test_a_frozen_body_behind_dropout_reads_as_perfectly_stable():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5))
    for parameter in body.parameters():
        parameter.requires_grad_(False)
    module = nn.Sequential(body, nn.Linear(16, 3))
    similarities = step_similarities(module, torch.randn(32, 8), torch.randn(32, 8), Optimizer.SGD)
    # only the readout learns: its input, read with the same dropout masks, never changes
    assert similarities == [pytest.approx(1.0, abs=1e-12)] * 6


def test_a_body_redrawn_by_every_step_reads_as_unstable():
    torch.manual_seed(0)

    class Redrawn(nn.Module):
        """A body whose weight the step overwrites: each update draws a new random projection."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():  # a training pass: stands in for a map so sensitive
                with torch.no_grad():  # to its weights that one step makes it another map
                    self.weight.copy_(torch.randn(8, 16))
            return torch.sin(8 * x @ self.weight)  # chaotic: nearby weights, unrelated features

    module = nn.Sequential(Redrawn(), nn.Linear(16, 3))
    similarities = step_similarities(module, torch.randn(64, 8), torch.randn(64, 8), Optimizer.ADAM)
    assert stability(similarities) < 0.5


def test_stability_skips_the_first_step_and_keeps_the_most_stable_later_one():
    assert stability([0.1, 0.5, 0.7, float("nan"), 0.6, 0.2]) == 0.7
    assert math.isnan(stability([0.9, float("nan"), float("nan")]))
