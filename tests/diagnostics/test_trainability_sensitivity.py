"""The rejected sensitivity measures (bench/trainability/sensitivity.py) and the library-model
labelling's control task (bench/trainability/standard.py) read what they claim, on cases whose
answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.trainability.label import STEPS
from bench.trainability.models import by_id
from bench.trainability.sensitivity import angular_tolerance, centred_correlation, tangent_step
from bench.trainability.standard import InvariantTeacherTask, render, shape
from bench.trainability.tasks import make_task
from bench.trainability.train import build_module, train_module, train_run


def _linear_with_readout(inputs: int, features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, features, bias=False), nn.Linear(features, 2))


def test_a_linear_body_tolerates_the_turn_that_keeps_correlation_0_9():
    torch.manual_seed(0)
    module = _linear_with_readout(64, 256)
    # F' = F + θ·‖W‖·X·Dᵀ with D ⊥ W random of W's norm: in high dimension the added part is
    # uncorrelated with F and of θ times its size, so the correlation is 1/√(1+θ²) = 0.9 at
    # θ = √(1/0.81 - 1) = 0.484
    theta = angular_tolerance(module, torch.randn(128, 64))
    assert theta == pytest.approx(math.sqrt(1 / 0.81 - 1), rel=0.1)


def test_centred_correlation_ignores_scale_and_offset_but_not_a_rotation():
    torch.manual_seed(0)
    features = torch.randn(32, 8)
    assert centred_correlation(features, 3 * features + 5) == pytest.approx(1.0)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert centred_correlation(features, features @ rotation) < 0.6


def test_tangent_step_of_a_linear_model_is_lr_times_the_top_eigenvalue_of_the_gram_over_b():
    torch.manual_seed(0)
    module = nn.Linear(16, 3, bias=False)
    batch = torch.randn(10, 16)
    # f_b = <W x_b, r>, r a unit vector: ∂f_b/∂W = r x_bᵀ, so K = ‖r‖² X Xᵀ = X Xᵀ
    expected = 0.1 * float(torch.linalg.eigvalsh((batch @ batch.T).double())[-1]) / 10
    # float32 gradients: agreement to ~1e-7, asked to 1e-5
    assert tangent_step(module, batch, lr=0.1) == pytest.approx(expected, rel=1e-5)


def test_train_module_trains_a_benchmark_model_exactly_as_train_run_does():
    model = by_id()["mlp-relu-d4-init1x"]
    task = make_task(model)
    torch.manual_seed(7)
    direct = train_module(build_module(model), task, "adam", 1e-3, 40).to_dict()
    through = train_run(model, task, "adam", 1e-3, 40).to_dict()
    for field in ("steps_run", "first_loss", "best_loss", "final_loss", "first_weight_change"):
        assert direct[field] == through[field]
    assert STEPS["teacher-image"] == 300


def test_the_invariant_control_task_is_exactly_what_a_conv_relu_pool_readout_computes():
    task = InvariantTeacherTask(shape(8))
    x, labels = task.batch(torch.Generator().manual_seed(3))
    assert task.teacher is not None
    pooled = torch.relu(task.conv(x)).mean(dim=(2, 3))
    student = task.teacher((pooled - task.center) / task.scale)
    assert torch.equal(student.argmax(dim=1), labels)
    assert task.baseline > 1.2  # four classes, none rare: the prior's entropy is near log 4


def test_the_docs_table_names_each_label_with_the_run_that_came_closest():
    run = {"lr": 1e-2, "best_loss": 1.1, "steps_run": 300, "nan_step": None}
    closer = {**run, "lr": 1e-1, "best_loss": 0.7, "steps_run": 140}
    diverged = {**run, "lr": 3e-2, "best_loss": None, "nan_step": 4}
    entry = {"name": "resnet18", "task": "teacher-image", "shape": [64, 3, 8, 8],
             "baseline": 1.4, "steps": 300, "runs": {"sgd": [run, closer], "adam": [diverged]},
             "labels": {"sgd": "healthy", "adam": "exploding"},
             "graddoctor": {"sgd": "healthy", "adam": "exploding"}}
    row = render({"resnet18 | teacher-image | 8px": entry}).splitlines()[-1]
    # a shortened grid names its learning rates: a label from it is no label over the grids
    assert row == ("| resnet18 | teacher-image | 8 | 300 (sgd 0.01, sgd 0.1, adam 0.03) "
                   "| healthy (0.1: 0.50 B, 140 steps) "
                   "| exploding (0.03: non-finite at step 4) | healthy / exploding |")
