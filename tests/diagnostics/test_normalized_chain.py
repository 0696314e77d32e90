"""Chains of normalized layers in series (no skip around them), read from the autograd graph, and
the verdict's normalized_chain_stall rule on them.

The physics (diagnostics/normalized_chain.py): BatchNorm without skips grows the angular gradient
‖∂L/∂W‖·‖W‖ layer by layer (Yang et al. 2019); where the chain's first layer gets ten times its
last layer's, the benchmark's nets stall under SGD and Adam (docs/trainability.md), and a
residual connection around each block removes the chain.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.trainability.models import mixer, mlp
from diagnostics import diagnose
from diagnostics.normalized_chain import longest_series_chain, post_dominators
from diagnostics.scale_invariance import scale_invariant

QUICK = {"samples": 1, "verify_remedies": False}


def _chain(build, x: torch.Tensor) -> tuple[list[str], int | None]:
    """The names along the longest chain of invariant tensors ``build`` marks, and the fewest
    values a BatchNorm after its first one averages over; ``build(x, mark)`` returns the loss."""
    marked: dict[int, object] = {}
    names: dict[int, str] = {}

    def mark(name: str, tensor: torch.Tensor) -> torch.Tensor:
        names[len(marked)] = name
        marked[len(marked)] = tensor.grad_fn
        return tensor

    loss = build(x, mark)
    found = longest_series_chain(loss.grad_fn, marked, scale_invariant(loss.grad_fn, marked))
    return [names[i] for i in found.layers], found.batch_values


def test_a_plain_stack_is_one_chain_and_a_residual_sum_ends_it():
    torch.manual_seed(0)
    linears = [nn.Linear(6, 6) for _ in range(6)]
    norms = [nn.BatchNorm1d(6) for _ in range(6)]

    def plain(x, mark):
        for i, (linear, norm) in enumerate(zip(linears, norms, strict=True)):
            x = torch.relu(norm(mark(f"l{i}", linear(x))))
        return x.sum()

    def residual(x, mark):
        for i, (linear, norm) in enumerate(zip(linears, norms, strict=True)):
            x = x + torch.relu(norm(mark(f"l{i}", linear(x))))
        return x.sum()

    x = torch.randn(8, 6)
    assert _chain(plain, x) == ([f"l{i}" for i in range(6)], 8)
    # Every block is bypassed by the identity: no layer lies on every path of another.
    assert len(_chain(residual, x)[0]) == 1


def test_a_mixer_chains_its_pointwise_layers_and_not_its_bypassed_depthwise_ones():
    torch.manual_seed(0)
    depthwise = [nn.Conv2d(4, 4, 3, padding=1, groups=4) for _ in range(3)]
    pointwise = [nn.Conv2d(4, 4, 1) for _ in range(3)]
    bns = [nn.BatchNorm2d(4) for _ in range(7)]

    def build(x, mark):
        x = bns[6](torch.relu(mark("stem", pointwise[0](x))))
        for i in range(3):
            x = x + bns[2 * i](torch.relu(mark(f"dw{i}", depthwise[i](x))))
            x = bns[2 * i + 1](torch.relu(mark(f"pw{i}", pointwise[i](x))))
        return x.mean((2, 3)).sum()

    names, values = _chain(build, torch.randn(2, 4, 5, 5))
    assert names == ["stem", "pw0", "pw1", "pw2"]
    assert values == 2 * 5 * 5


def test_post_dominators_of_a_diamond_meet_below_the_branches():
    x = torch.randn(3, requires_grad=True)
    a = x * 2
    b, c = a.sin(), a.cos()
    loss = (b + c).sum()
    graph = post_dominators(loss.grad_fn)
    # Every path from a's node to the loss goes through the sum, not through either branch.
    add = loss.grad_fn.next_functions[0][0]
    assert graph.idom[id(a.grad_fn)] == id(add)
    assert graph.idom[id(b.grad_fn)] == id(add)


def test_a_deep_plain_batchnorm_relu_stack_stalls_by_the_chain_rule_under_both_optimizers():
    model = mlp("relu", 20, 1.0, norm="bn")  # batch 64: the benchmark's own net, a stall
    for optimizer in ("sgd", "adam"):
        verdict = diagnose(model.spec, config={**QUICK, "optimizer": optimizer}).verdict
        assert verdict.status == "vanishing", verdict.summary
        assert verdict.summary.startswith("Vanishing (normalized_chain_stall)")
        evidence = verdict.evidence
        assert len(evidence.normalized_chain) == 19
        assert evidence.normalized_chain_ratio.median > 10
        assert evidence.normalized_chain_batch_values == 64


def test_the_same_stack_with_residual_blocks_or_tanh_units_is_not_judged_stalled():
    residual = diagnose(mlp("relu", 20, 1.0, norm="ln", residual=True).spec, config=QUICK)
    assert residual.verdict.status == "healthy", residual.verdict.summary
    assert residual.verdict.evidence.normalized_chain == []
    # tanh near BatchNorm's unit scale is nearly linear: the chain grows it ~5x over 18 layers,
    # and the benchmark's deep tanh BatchNorm nets train.
    tanh = diagnose(mlp("tanh", 20, 0.1, norm="bn").spec, config=QUICK).verdict
    assert tanh.status == "healthy", tanh.summary
    assert 1 < tanh.evidence.normalized_chain_ratio.median < 10


def test_a_probe_batch_too_small_for_batch_statistics_is_not_judged():
    spec = copy.deepcopy(mlp("relu", 20, 1.0, norm="bn").spec)
    spec["inputs"][0]["shape"][0] = 8
    verdict = diagnose(spec, config=QUICK).verdict
    rule = next(r for r in verdict.evidence.rules if r.rule == "normalized_chain_stall")
    assert verdict.evidence.normalized_chain_batch_values == 8
    assert rule.value is not None
    assert rule.value > 10
    assert not rule.fired
    assert "not judged" in rule.detail
    assert "8 values" in rule.detail
    assert "(normalized_chain_stall)" not in verdict.summary


def test_the_threshold_is_configurable_and_the_add_residual_remedy_is_verified():
    model = mixer("relu", 16, None)
    lenient = {**QUICK, "thresholds": {"normalized_chain_ratio": 1e6}}
    assert diagnose(model.spec, config=lenient).verdict.status == "healthy"
    report = diagnose(model.spec, config={"samples": 1})
    assert report.verdict.status == "vanishing"
    residual = next(r for r in report.remedies if r.id == "add-residual")
    assert residual.verified is not None
    assert residual.verified.status_after == "healthy"
    assert "angular gradient" in residual.rationale


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11_bn"])
def test_torchvision_chains_stay_below_the_threshold(name):
    import torchvision

    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None)
    report = diagnose(module, inputs=torch.randn(8, 3, 64, 64), config=QUICK)
    evidence = report.verdict.evidence
    assert evidence.normalized_chain_ratio is None or \
        evidence.normalized_chain_ratio.median < 5, evidence.normalized_chain_ratio
    assert report.verdict.status == "healthy", report.verdict.summary
