"""diagnostics.adam: what Adam's first step does, checked against torch.optim.Adam itself."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnostics.adam import ADAM_EPSILON, first_step_norm, l1_ratio


def _one_adam_step(grad: torch.Tensor, lr: float) -> torch.Tensor:
    """The update torch.optim.Adam applies on its first step for this gradient."""
    weight = nn.Parameter(torch.zeros_like(grad, dtype=torch.float64))
    weight.grad = grad.to(torch.float64)
    torch.optim.Adam([weight], lr=lr).step()
    return weight.detach()


@pytest.mark.parametrize("size", [1.0, 1e-3, 1e-6, 1e-8, 1e-10, 1e-12])
def test_first_step_norm_is_torch_adams_first_step(size):
    torch.manual_seed(0)
    signs = torch.randint(0, 2, (40, 30)).double() * 2 - 1
    grad = signs * size  # every element the same size: the RMS is that size exactly
    step = _one_adam_step(grad, lr=1e-3)
    assert first_step_norm(size, grad.numel(), 1e-3) == pytest.approx(float(step.norm()),
                                                                         rel=1e-9)


def test_gradient_size_does_not_matter_far_above_epsilon_and_does_far_below():
    big = float(_one_adam_step(torch.full((100,), 1e-2), lr=1e-3).norm())
    small = float(_one_adam_step(torch.full((100,), 1e-5), lr=1e-3).norm())
    tiny = float(_one_adam_step(torch.full((100,), ADAM_EPSILON / 100), lr=1e-3).norm())
    assert small == pytest.approx(big, rel=2e-3)  # 1,000× smaller gradient, same step
    assert tiny == pytest.approx(1e-3 * math.sqrt(100) / 101, rel=1e-6)  # < 1 % of lr


def test_an_adam_step_changes_the_loss_by_lr_times_the_l1_norm_of_the_gradient():
    # Why weight_gradient_vanishing compares ‖g‖₁: to first order, one Adam step on a tensor
    # lowers the loss by lr·‖g‖₁ (each element moves lr against its gradient's sign).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                        nn.Linear(16, 3)).double()
    x, target = torch.randn(32, 8).double(), torch.randint(0, 3, (32,))

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(net(x), target)

    for layer in (net[0], net[2]):
        net.zero_grad()
        before = loss()
        before.backward()
        predicted = 1e-5 * float(layer.weight.grad.abs().sum())
        optimizer = torch.optim.Adam([layer.weight], lr=1e-5)
        optimizer.step()
        with torch.no_grad():
            drop = float(before - loss())
            assert drop == pytest.approx(predicted, rel=1e-3)
            layer.weight -= _undo(optimizer, layer.weight)


def _undo(optimizer: torch.optim.Adam, weight: torch.Tensor) -> torch.Tensor:
    # The step Adam just took (its first): lr·m̂/(√v̂+ε) with m̂ = g, v̂ = g².
    grad = weight.grad
    lr = optimizer.param_groups[0]["lr"]
    return -lr * grad / (grad.abs() + ADAM_EPSILON)


@pytest.mark.parametrize(("deep", "shallow", "expected"), [
    (1.0, 4.0, 0.25), (0.0, 0.0, 1.0), (2.0, 0.0, math.inf), (None, 1.0, None)])
def test_l1_ratio_edges(deep, shallow, expected):
    assert l1_ratio(deep, shallow) == expected
