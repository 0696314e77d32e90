"""Which layers are scale-invariant (their output reaches the loss only through a normalization),
read from the autograd graph, and what the verdict makes of it.

The physics (diagnostics/scale_invariance.py): L(c·W) = L(W) for such a weight, so a large SGD
step turns it and grows its norm instead of blowing the output up, and a backward signal that
grows through such layers alone cannot blow the output up either (torchvision ResNet-101/152,
unfolded, grow it 1.5e3-1.2e4 and train).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from bench.trainability.models import mixer
from diagnostics import diagnose
from diagnostics.scale_invariance import scale_invariant
from tests.onnx_export import export_legacy

QUICK = {"samples": 1, "verify_remedies": False}


def _invariant(build) -> set[str]:
    """Names of the tensors ``build`` marks, whose output reaches the loss only through a
    normalization; ``build(x, mark)`` returns the loss and calls ``mark(name, tensor)``."""
    torch.manual_seed(0)
    marked: dict[int, object] = {}
    names: dict[int, str] = {}

    def mark(name: str, tensor: torch.Tensor) -> torch.Tensor:
        names[len(marked)] = name
        marked[len(marked)] = tensor.grad_fn
        return tensor

    loss = build(torch.randn(8, 4, 6, 6), mark)
    return {names[i] for i in scale_invariant(loss.grad_fn, marked)}


def _conv(cin: int = 4, cout: int = 4) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def test_a_convolution_into_batchnorm_is_invariant_through_relu_and_pooling():
    conv, bn, head = _conv(), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def build(x, mark):
        y = mark("conv", conv(x))
        z = bn(nn.functional.max_pool2d(torch.relu(y), 2))
        return mark("head", head(z.mean((2, 3)))).sum()

    assert _invariant(build) == {"conv"}


def test_saturating_activations_residual_adds_and_running_statistics_break_it():
    convs = [_conv() for _ in range(4)]
    bn, ln = nn.BatchNorm2d(4), nn.LayerNorm([4, 6, 6])

    def build(x, mark):
        tanh = bn(torch.tanh(mark("tanh", convs[0](x))))      # tanh saturates as W grows
        residual = ln(tanh + mark("residual", convs[1](tanh)))  # the skip is not scaled
        bn.eval()
        running = bn(mark("running", convs[2](residual)))    # running statistics: affine
        bn.train()
        both = mark("both", convs[3](running))
        return (bn(both) + both).sum()                       # one path bypasses the norm

    assert _invariant(build) == set()


def test_every_layer_before_the_next_normalization_is_invariant_and_a_divisor_is_not():
    first, second, third = _conv(), _conv(), _conv()
    gn = nn.GroupNorm(2, 4)

    def build(x, mark):
        a = mark("first", first(x))
        b = mark("second", second(nn.functional.gelu(a)))   # linear after a ReLU-like
        c = mark("third", third(x))
        # b is divided by a constant; c only divides, which does not scale with it.
        return gn(b / 2).sum() + gn(x / (1 + c.abs())).sum()

    assert _invariant(build) == {"first", "second"}


def test_attention_scores_are_not_invariant_through_the_final_layernorm():
    q, v = nn.Linear(6, 6), nn.Linear(6, 6)
    ln = nn.LayerNorm(6)

    def build(x, mark):
        tokens = x.flatten(2)                                # [8, 4, 36] -> 4 tokens of 36
        tokens = tokens[..., :6]
        query = mark("q", q(tokens))
        value = mark("v", v(tokens))
        scores = torch.softmax(query @ query.transpose(1, 2), dim=-1)
        return ln(scores @ value).sum()

    assert _invariant(build) == set()


def test_a_resnet_stem_overwritten_by_its_first_step_is_not_exploding():
    # torchvision ResNet-18 (unfolded export) at the torchvision recipe's SGD rate 0.1: its
    # first step moves the stem ~3x its norm, but the stem feeds a BatchNorm, so the step turns
    # it and grows its norm. ResNets train at this rate.
    torch.manual_seed(0)
    data = export_legacy(torchvision.models.resnet18().eval(), (torch.randn(2, 3, 64, 64),),
                         do_constant_folding=False)
    report = diagnose(data, config={**QUICK, "learning_rate": 0.1})
    evidence = report.verdict.evidence
    stem = next(layer for layer in report.layers if layer.name == "/conv1/Conv")
    assert 0.1 * stem.parameters[0].grad_to_weight.median > 1  # the step is 1-10x the stem
    assert "/conv1/Conv" in evidence.scale_invariant_layers
    assert report.verdict.status == "healthy", report.verdict.summary
    assert evidence.max_relative_step_parameter == "fc.weight"
    assert evidence.max_relative_step < 1


def test_signal_growth_through_batchnorm_alone_is_not_exploding():
    # BatchNorm after each activation: the backward signal grows ~1.35x per block (3e4 over
    # 32), but every weight feeds a BatchNorm, so it cannot blow the forward pass up.
    # torchvision ResNet-101/152 (unfolded) grow it 1.5e3-1.2e4 the same way and train; this
    # ConvMixer-style stack stalls (labels.json), as deep normalized ReLU stacks without skips
    # do whatever this ratio says (docs/trainability.md).
    spec = mixer("relu", 32, None).spec
    report = diagnose(spec, config=QUICK)
    evidence = report.verdict.evidence
    assert report.verdict.status == "healthy", report.verdict.summary
    assert evidence.backward_signal_ratio.median > 1e3
    assert evidence.signal_growth_normalized
    check = next(r for r in evidence.rules if r.rule == "backward_signal_exploding")
    assert not check.fired
    assert "not judged" in check.detail
    assert "above the exploding threshold, but every weight" in report.verdict.summary
    convs = [layer.name for layer in report.layers if layer.op_type == "Conv2d"]
    assert set(convs) <= set(evidence.scale_invariant_layers)
    readout = evidence.readout_layers[0]
    assert readout not in evidence.scale_invariant_layers


def test_the_same_net_on_running_statistics_is_still_judged():
    # With norm_stats 'running' the BatchNorms are affine maps (identity at initialization):
    # nothing bounds the convolutions' outputs, so the growth is judged as before.
    spec = mixer("relu", 32, None).spec
    report = diagnose(spec, config={**QUICK, "norm_stats": "running"})
    evidence = report.verdict.evidence
    assert evidence.scale_invariant_layers == []
    assert not evidence.signal_growth_normalized
    check = next(r for r in evidence.rules if r.rule == "backward_signal_exploding")
    assert check.fired == (check.value > check.threshold)


def test_pointwise_layers_without_their_batchnorm_are_not_scale_invariant():
    # Without the BatchNorm after each pointwise convolution its output reaches the readout
    # along the residual stream, unnormalized: a large step there reaches the output, so the
    # growth is not explained as bounded.
    spec = mixer("relu", 32, None).spec
    block = spec["layers"][3]["layers"]
    assert block[-1]["type"] == "BatchNorm2d"
    del block[-1]
    report = diagnose(spec, config=QUICK)
    evidence = report.verdict.evidence
    pointwise = "layers.3[0].layers.1"
    assert pointwise in [layer.name for layer in report.layers]
    assert pointwise not in evidence.scale_invariant_layers
    assert "layers.3[0].layers.0.layers.0" in evidence.scale_invariant_layers  # depthwise
    assert not evidence.signal_growth_normalized
