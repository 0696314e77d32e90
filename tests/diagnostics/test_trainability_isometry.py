"""The rejected dynamical-isometry measure (bench/trainability/isometry.py) reads what it claims:
1 for an isometry from the input to the readout's features, 1/16 for a rank-one 16x16 map; and
the linear CKA beside it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.trainability.isometry import linear_cka, rank_fraction


def _with_readout(body: nn.Linear) -> nn.Sequential:
    return nn.Sequential(body, nn.Linear(body.out_features, 2))


def test_an_orthogonal_map_is_an_isometry():
    torch.manual_seed(0)
    body = nn.Linear(16, 16, bias=False)
    nn.init.orthogonal_(body.weight)
    fraction = rank_fraction(_with_readout(body), torch.randn(8, 16))
    # Hutchinson estimates of both traces: 24 probes in 128 dimensions leave ~3 % of noise
    assert fraction == pytest.approx(1.0, rel=0.1)


def test_a_rank_one_map_has_one_direction_of_n():
    torch.manual_seed(0)
    body = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        body.weight.copy_(torch.outer(torch.randn(16), torch.randn(16)))
    fraction = rank_fraction(_with_readout(body), torch.randn(8, 16))
    # the batch's Jacobian is block-diagonal: 8 copies of a rank-one block among 128 dimensions
    assert fraction == pytest.approx(8 / 128, rel=0.15)
    assert fraction < 0.1


def test_cka_is_one_for_a_map_that_keeps_the_geometry_and_small_for_one_that_loses_it():
    torch.manual_seed(0)  # a rank-one map's CKA varies with the draw (0.30 on average)
    inputs = torch.randn(32, 16)
    body = nn.Linear(16, 16, bias=False)
    nn.init.orthogonal_(body.weight)
    assert linear_cka(_with_readout(body), inputs) == pytest.approx(1.0, abs=1e-9)
    with torch.no_grad():
        body.weight.copy_(torch.outer(torch.randn(16), torch.randn(16)))
    assert linear_cka(_with_readout(body), inputs) < 0.5  # one direction of sixteen survives
