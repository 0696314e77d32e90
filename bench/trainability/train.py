"""One training run: a benchmark model, an optimizer and a learning rate -> what happened.

The model is built exactly as ``diagnose(spec)`` builds it (``build_spec(parse_spec(spec),
seed=0)``: same modules, same initial weights), put in training mode (BatchNorm uses batch
statistics, as GradDoctor's default probe does), and trained for a fixed number of steps on
fresh seeded batches. No gradient clipping, no schedule: the point is what the initialization
lets plain training do.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from bench.trainability.models import BenchModel
from bench.trainability.tasks import Task
from diagnostics.loading.spec.loader import build_spec, parse_spec

DATA_SEED = 7
SMOOTHING = 20  # steps per window of the smoothed loss curve


@dataclass
class RunRecord:
    """The outcome of one run (losses are window means of ``SMOOTHING`` steps).

    Attributes:
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        lr: The learning rate.
        steps: The step budget.
        steps_run: Steps taken (fewer than ``steps`` after a non-finite value or an early stop).
        initial_loss: Loss of the first window (the first step's loss is ``first_loss``).
        best_loss: Lowest window mean before any non-finite loss.
        final_loss: Last window's mean (null after a non-finite loss).
        nan_step: First step whose loss or gradient was NaN/Inf (null if none).
        first_weight_change: ‖W_end − W_0‖/‖W_0‖ of the first weight tensor (null if non-finite).
        last_weight_change: The same for the last weight tensor.
        seconds: Wall time.
        curve: Every window's mean loss, in order (only when asked for: a run at a long budget
            then also says what it would have been at every shorter one).
    """

    optimizer: str
    lr: float
    steps: int
    steps_run: int
    first_loss: float | None
    initial_loss: float | None
    best_loss: float | None
    final_loss: float | None
    nan_step: int | None
    first_weight_change: float | None
    last_weight_change: float | None
    seconds: float
    curve: list[float] | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (``curve`` only where it was kept)."""
        fields = asdict(self)
        if self.curve is None:
            del fields["curve"]
        return fields


def build_module(model: BenchModel, seed: int = 0) -> torch.nn.Module:
    """The model's module with the initial weights ``diagnose`` probes (``config.seed``, 0 by
    default)."""
    return build_spec(parse_spec(model.spec), seed=seed).module


def weight_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Weight matrices/kernels (dim >= 2) in definition order: first is the input layer's."""
    return [param for param in module.parameters() if param.dim() >= 2]


def train_run(model: BenchModel, task: Task, optimizer: str, lr: float, steps: int, *,
              stop_below: float | None = None, data_seed: int = DATA_SEED,
              init_seed: int = 0, keep_curve: bool = False,
              clip_norm: float | None = None) -> RunRecord:
    """Train ``model`` from its initial weights and record the outcome.

    Args:
        model: The benchmark model (built as ``diagnose`` builds it).
        task: Its task.
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        lr: Learning rate.
        steps: Step budget.
        stop_below: Stop early once a full window's mean loss is at or below this (the run's
            outcome is then decided: it trained); saves most of the budget on healthy models.
        data_seed: Seed of the stream of training batches (the initial weights are the same
            for every seed: they are the ones ``diagnose`` probes). The labels use
            ``DATA_SEED``; other seeds measure how much a label depends on the batches' luck.
        init_seed: Seed of the initial weights (the labels use 0, the weights ``diagnose``
            probes with its default ``config.seed``).
        keep_curve: Record every window's mean loss (``RunRecord.curve``).
        clip_norm: Clip the gradient's total norm to it before each step (see
            :func:`train_module`).
    """
    started = time.perf_counter()
    torch.manual_seed(data_seed)
    module = build_module(model, init_seed)
    return train_module(module, task, optimizer, lr, steps, stop_below=stop_below,
                        data_seed=data_seed, started=started, keep_curve=keep_curve,
                        clip_norm=clip_norm)


def train_module(module: torch.nn.Module, task: Task, optimizer: str, lr: float, steps: int, *,
                 stop_below: float | None = None, data_seed: int = DATA_SEED,
                 started: float | None = None, keep_curve: bool = False,
                 clip_norm: float | None = None) -> RunRecord:
    """Train ``module`` (modified in place) as :func:`train_run` trains a benchmark model: any
    module that maps the task's batches to its outputs, e.g. a library architecture
    (:mod:`bench.trainability.standard`). ``clip_norm``: clip the gradient's total norm to it
    before each step (never for labels; :mod:`bench.trainability.clipping` tries a remedy)."""
    started = time.perf_counter() if started is None else started
    module.train()
    weights = weight_tensors(module)
    first0, last0 = weights[0].detach().clone(), weights[-1].detach().clone()
    params = list(module.parameters())
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr))
    generator = torch.Generator().manual_seed(data_seed)
    losses: list[float] = []
    nan_step = None
    for step in range(steps):
        x, target = task.batch(generator)
        loss = task.loss(module(x), target)
        value = float(loss.detach())
        if not math.isfinite(value):
            nan_step = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            nan_step = step
            break
        losses.append(value)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        if (stop_below is not None and len(losses) % SMOOTHING == 0
                and sum(losses[-SMOOTHING:]) / SMOOTHING <= stop_below):
            break
    windows = [sum(losses[i:i + SMOOTHING]) / len(losses[i:i + SMOOTHING])
               for i in range(0, len(losses), SMOOTHING)]
    finite_now = nan_step is None and all(torch.isfinite(w).all() for w in weights)
    return RunRecord(
        optimizer=optimizer, lr=lr, steps=steps, steps_run=len(losses),
        first_loss=losses[0] if losses else None,
        initial_loss=windows[0] if windows else None,
        best_loss=min(windows) if windows else None,
        final_loss=windows[-1] if windows and nan_step is None else None,
        nan_step=nan_step,
        first_weight_change=_change(weights[0], first0) if finite_now else None,
        last_weight_change=_change(weights[-1], last0) if finite_now else None,
        seconds=round(time.perf_counter() - started, 3),
        curve=windows if keep_curve else None)


def _change(now: torch.Tensor, start: torch.Tensor) -> float | None:
    base = float(start.norm())
    return float((now.detach() - start).norm()) / base if base > 0 else None
