"""Statistics against plain float64 numpy/torch references, including the float32 traps."""

import math

import numpy as np
import pytest
import torch

from diagnostics.model import Activation
from diagnostics.stats import (
    all_finite,
    dead_fraction,
    l2_norm,
    summarize_activation,
    summarize_grad,
)


@pytest.mark.parametrize(
    ("label", "values"),
    [
        ("normal", np.random.default_rng(0).normal(size=(64, 33))),
        ("huge-but-finite", np.full((1000,), 3e30)),   # float32 squares overflow
        ("tiny-but-nonzero", np.full((1000,), 1e-25)),  # float32 squares underflow
        ("mixed-scales", np.array([1e-30, 1e20, -3.0, 0.0])),
    ],
)
def test_l2_norm_matches_float64(label, values):
    tensor = torch.tensor(values, dtype=torch.float32)
    reference = float(np.linalg.norm(tensor.double().numpy().ravel()))
    assert l2_norm(tensor) == pytest.approx(reference, rel=1e-6)
    assert math.isfinite(l2_norm(tensor))


def test_grad_summary_matches_reference():
    grad = torch.randn(40, 17)
    grad[0, :5] = 0
    wide = grad.double()
    summary = summarize_grad(grad, fp16_normal_min=6.1e-5)
    assert summary.norm == pytest.approx(float(wide.norm()), rel=1e-6)
    assert summary.rms == pytest.approx(float(wide.pow(2).mean().sqrt()), rel=1e-6)
    assert summary.mean_abs == pytest.approx(float(wide.abs().mean()), rel=1e-6)
    assert summary.max_abs == pytest.approx(float(wide.abs().max()), rel=1e-6)
    assert summary.zero_fraction == pytest.approx(5 / grad.numel())
    assert summary.nonfinite_count == 0


def test_grad_summary_counts_nonfinite_and_writes_nan_norms():
    grad = torch.ones(10)
    grad[3] = float("nan")
    grad[4] = float("inf")
    summary = summarize_grad(grad)
    assert summary.nonfinite_count == 2
    assert math.isnan(summary.norm)


def test_fp16_underflow_fraction_counts_only_nonzero_entries():
    grad = torch.tensor([0.0, 1e-6, 1e-7, 1.0])
    assert summarize_grad(grad, fp16_normal_min=6.1e-5).fp16_underflow_fraction == \
        pytest.approx(2 / 3)


def test_activation_mean_std_match_reference():
    out = torch.randn(16, 8, 5) * 3 + 2
    summary = summarize_activation(out, None, saturation_derivative=0.05)
    wide = out.double()
    assert summary.mean == pytest.approx(float(wide.mean()), rel=1e-5)
    assert summary.std == pytest.approx(float(wide.std(unbiased=False)), rel=1e-4)
    assert summary.numel_per_sample == 40


@pytest.mark.parametrize(
    ("activation", "function", "derivative"),
    [
        (Activation.SIGMOID, torch.sigmoid,
         lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)) / 0.25),
        (Activation.TANH, torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
        (Activation.SOFTSIGN, torch.nn.functional.softsign, lambda x: 1 / (1 + x.abs()) ** 2),
    ],
    ids=["sigmoid", "tanh", "softsign"],
)
def test_saturation_read_off_the_output_equals_the_derivative_rule(activation, function,
                                                                   derivative):
    x = torch.randn(4000, dtype=torch.float64) * 4
    expected = float((derivative(x) < 0.05).double().mean())
    summary = summarize_activation(function(x).float(), activation, saturation_derivative=0.05)
    assert summary.saturated_fraction == pytest.approx(expected, abs=2e-3)


def test_dead_fraction_counts_units_inactive_on_every_sample():
    out = torch.zeros(8, 4)
    out[3, 0] = 1.0  # unit 0 alive in one sample
    out[:, 1] = 2.0  # unit 1 always alive
    assert dead_fraction(out, Activation.RELU) == pytest.approx(0.5)


def test_fp16_underflow_fraction_of_a_large_tensor_is_estimated_closely():
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(1_000_003, generator=generator) * 1e-4  # ~45 % of |g| below 6.1e-5
    exact = float(((grad.abs() < 6.1e-5) & (grad != 0)).double().sum() / (grad != 0).sum())
    estimate = summarize_grad(grad, fp16_normal_min=6.1e-5).fp16_underflow_fraction
    assert estimate == pytest.approx(exact, abs=0.01)


def test_zero_fraction_of_a_large_tensor_is_estimated_closely_and_exact_when_all_zero():
    grad = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1))
    grad[: 600_000] = 0.0
    assert summarize_grad(grad).zero_fraction == pytest.approx(0.3, abs=0.01)
    assert summarize_grad(torch.zeros(2_000_000)).zero_fraction == 1.0
    assert summarize_grad(torch.ones(2_000_000)).zero_fraction == 0.0


def _spanning_blocks(scale: float) -> torch.Tensor:
    """A million entries (several reduction blocks) of one sign-mixed scale, with an offset."""
    generator = torch.Generator().manual_seed(2)
    return (torch.randn(1_000_003, generator=generator) + 0.5) * scale


@pytest.mark.parametrize("scale", [1e-3, 1e30, 1e-25], ids=["normal", "huge", "tiny"])
def test_summaries_of_tensors_spanning_many_blocks_match_float64(scale):
    grad = _spanning_blocks(scale)
    wide = grad.double()
    summary = summarize_grad(grad)
    assert summary.norm == pytest.approx(float(wide.norm()), rel=1e-6)
    assert summary.mean_abs == pytest.approx(float(wide.abs().mean()), rel=1e-6)
    assert summary.max_abs == float(wide.abs().max())
    assert l2_norm(grad) == pytest.approx(float(wide.norm()), rel=1e-6)
    output = grad[:1_000_000].reshape(1000, 1000)
    activation = summarize_activation(output, None, saturation_derivative=0.05)
    assert activation.mean == pytest.approx(float(wide[:1_000_000].mean()), rel=1e-6)
    assert activation.std == pytest.approx(float(wide[:1_000_000].std(unbiased=False)), rel=1e-5)


def test_a_single_nonfinite_entry_in_a_late_block_is_found():
    grad = _spanning_blocks(1.0)
    grad[-7] = math.inf
    grad[300_000] = math.nan
    summary = summarize_grad(grad)
    assert math.isnan(summary.norm)
    assert math.isnan(summary.max_abs)
    assert summary.nonfinite_count == 2
    assert math.isnan(summarize_activation(grad, None, saturation_derivative=0.05).mean)


def test_a_summary_leaves_the_gradient_unchanged():
    grad = _spanning_blocks(1.0)
    before = grad.clone()
    summarize_grad(grad, fp16_normal_min=6.1e-5)
    assert torch.equal(grad, before)


def test_all_finite_sees_nan_and_inf_but_not_an_overflowing_sum_of_finite_values():
    assert all_finite(torch.full((600_000,), 3e38))  # the float32 sum overflows to inf
    values = torch.ones(600_000)
    values[-1] = math.nan
    assert not all_finite(values)
    values[-1] = -math.inf
    assert not all_finite(values)
