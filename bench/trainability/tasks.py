"""The synthetic tasks the benchmark trains on, each with its loss and its trivial baseline.

- ``teacher-vector``: x ~ N(0, 1), ``[B, 32]``; the label is the argmax of a fixed random linear
  teacher (32 -> 4 classes, logits scaled so that the classes are sharp).
- ``teacher-image``: x ~ N(0, 1), ``[B, 3, 8, 8]``; the label is the argmax of a fixed random
  linear teacher on the 2x2-average-pooled image (48 features -> 4 classes): local structure a
  small CNN can pick up.
- Both: cross-entropy; trivial baseline: the entropy of the class prior, the loss of always
  predicting the class frequencies. A linear teacher is learnable by any net whose signal gets
  through, within the step budget: with a nonlinear teacher (a 2-layer tanh MLP) even
  well-initialized 20-layer MLPs and 4-layer CNNs only reached 0.7–0.8× the trivial loss in 300
  steps, which would have made them "ambiguous" for the task's difficulty, not their gradients.
- ``adding``: the adding problem (Hochreiter & Schmidhuber 1997). x[:, t, 0] ~ U(0, 1), x[:, t, 1]
  marks two positions (one in the first half of the sequence, one in the second); the target is
  the sum of the two marked values. Loss: MSE of the last step's output. Trivial baseline: the
  variance of the target (≈ 1/6 ≈ 0.167), the loss of predicting its mean.

Fresh samples are drawn every step from a seeded generator (no finite training set, so the
training loss is also the generalization loss and no separate evaluation pass is needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.trainability.models import BenchModel

TEACHER_SEED = 1234
_TEACHER_SHARPNESS = 3.0
BASELINE_SAMPLES = 20_000


@dataclass
class Task:
    """Draws batches and scores predictions for one benchmark task.

    Attributes:
        name: The task's name (``teacher-vector``, ``teacher-image``, ``adding``).
        batch_shape: Input shape of one batch (the spec's input shape).
        baseline: The trivial loss (see the module docstring).
    """

    name: str
    batch_shape: tuple[int, ...]
    baseline: float
    teacher: nn.Module | None = None

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch ``(x, target)`` drawn from ``generator``."""
        return self._draw(self.batch_shape[0], generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of the model's output (adding: its last step, first channel)."""
        if self.name == "adding":
            return F.mse_loss(output[:, -1, 0], target)
        return F.cross_entropy(output, target)

    def _draw(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (size, *self.batch_shape[1:])
        if self.name == "adding":
            return adding_batch(size, shape[1], generator)
        x = torch.randn(shape, generator=generator)
        assert self.teacher is not None
        with torch.no_grad():
            return x, self.teacher(teacher_features(x)).argmax(dim=1)


def adding_batch(size: int, steps: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the adding problem: ``x`` of shape ``[size, steps, 2]`` and the targets."""
    values = torch.rand(size, steps, generator=generator)
    half = steps // 2
    first = torch.randint(0, half, (size,), generator=generator)
    second = torch.randint(half, steps, (size,), generator=generator)
    marks = torch.zeros(size, steps)
    rows = torch.arange(size)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, marks], dim=2), target


def teacher_features(x: torch.Tensor) -> torch.Tensor:
    """What the teacher sees: vectors as they are, images 2x2-average-pooled (3x4x4 = 48
    features), so the image task has local structure a small CNN can pick up quickly."""
    if x.dim() == 4:
        x = F.avg_pool2d(x, 2)
    return x.flatten(1)


def linear_teacher(features: int) -> nn.Module:
    generator = torch.Generator().manual_seed(TEACHER_SEED + features)
    teacher = nn.Linear(features, 4)
    with torch.no_grad():
        teacher.weight.normal_(0.0, _TEACHER_SHARPNESS / math.sqrt(features),
                               generator=generator)
        teacher.bias.zero_()
    return teacher.eval()


def make_task(model: BenchModel) -> Task:
    """The task ``model`` trains on, its batch shape taken from the model's spec."""
    return task_for(model.task, tuple(model.spec["inputs"][0]["shape"]))


def task_for(name: str, shape: tuple[int, ...]) -> Task:
    """The task ``name`` (``teacher-vector``, ``teacher-image``, ``adding``) on batches of
    ``shape``: the teacher and the trivial baseline follow from the shape."""
    generator = torch.Generator().manual_seed(TEACHER_SEED)
    if name == "adding":
        _x, target = adding_batch(BASELINE_SAMPLES, shape[1], generator)
        return Task("adding", shape, float(target.var(unbiased=False)))
    teacher = linear_teacher(teacher_features(torch.zeros(1, *shape[1:])).shape[1])
    task = Task(name, shape, 0.0, teacher)
    _x, labels = task._draw(BASELINE_SAMPLES, generator)
    task.baseline = prior_entropy(labels)
    return task


def prior_entropy(labels: torch.Tensor) -> float:
    """The trivial loss of a classification task: the entropy of its class prior."""
    prior = torch.bincount(labels, minlength=4).double() / labels.numel()
    prior = prior[prior > 0]
    return float(-(prior * prior.log()).sum())
