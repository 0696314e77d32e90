"""The trainability benchmark's chain-ratio measure (bench/trainability/chain_ratio.py): the
evidence behind a rejected rule, so the numbers in docs/trainability.md must be what it says they
are — chains of normalized layers in series, ended by any skip connection."""

from __future__ import annotations

import torch
from torch import nn

from bench.trainability.chain_ratio import chain_ratio, post_dominators, spec_chain_ratio
from bench.trainability.models import mixer, mlp


class _Stack(nn.Module):
    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(6, 6) for _ in range(6))
        self.norms = nn.ModuleList(nn.BatchNorm1d(6) for _ in range(6))
        self.residual = residual

    def forward(self, x):
        for linear, norm in zip(self.linears, self.norms, strict=True):
            y = torch.relu(norm(linear(x)))
            x = x + y if self.residual else y
        return x


def test_a_plain_stack_is_one_chain_and_residual_sums_end_it():
    torch.manual_seed(0)
    x = torch.randn(8, 6)
    plain = chain_ratio(_Stack(residual=False), (x,))
    assert plain.chain == tuple(range(6))
    assert plain.ratio is not None
    assert plain.ratio > 0
    # Every block is bypassed by the identity: no layer lies on every path of another.
    assert len(chain_ratio(_Stack(residual=True), (x,)).chain) == 1


def test_a_mixer_chains_its_stem_and_pointwise_layers_not_its_depthwise_ones():
    measured = spec_chain_ratio(mixer("relu", 4, None).spec)
    # Conv/Linear modules in definition order: stem 0, then (depthwise, pointwise) per block.
    assert measured.chain == (0, 2, 4, 6, 8)


def test_post_dominators_of_a_diamond_meet_below_the_branches():
    x = torch.randn(3, requires_grad=True)
    a = x * 2
    loss = (a.sin() + a.cos()).sum()
    idom = post_dominators(loss.grad_fn)
    add = loss.grad_fn.next_functions[0][0]
    assert idom[id(a.grad_fn)] == id(add)


def test_the_benchmark_numbers_the_docs_quote():
    assert round(spec_chain_ratio(mlp("relu", 20, 3.0, norm="bn").spec).ratio, 1) == 40.0
    assert round(spec_chain_ratio(mlp("tanh", 20, 0.1, norm="bn").spec).ratio, 1) == 5.8
