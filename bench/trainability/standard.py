"""Library architectures labelled by the benchmark's own rule: does the 300-step labelling call
standard models that train in practice ``vanishing``?

The misses are long initial plateaus (:mod:`bench.trainability.budget`): models that train at
440-2,320 steps are labelled ``vanishing`` because the budget is 300. Whether a verdict at
initialization *should* call them so depends on whether architectures everyone trains also sit
on such plateaus. So torchvision models (and timm's ConvMixer, the real counterpart of the
``cnn-mixer`` family), at their libraries' own initialization with a 4-class head, are trained
exactly as a benchmark model is (:func:`bench.trainability.train.train_module`: batch 64, 300
steps, both grids, the same labelling rule) on teacher-image at 8 px (the benchmark's size) or
32 px, and on a translation-invariant control task (:class:`InvariantTeacherTask`; every library
CNN here ends in global average pooling). GradDoctor's verdict on each is recorded beside the
labels (``diagnose`` on the live module with a batch of the task, told each optimizer as in the
benchmark). Results: ``standard.json``; docs table: ``--docs``. Measured (docs/trainability.md):
on the control, which a one-conv net learns in 40-80 steps, ResNet-50, MobileNetV2 and
RegNetY-400MF stall at every learning rate within 300 steps; GradDoctor calls all of them
healthy. With ``--steps 3000`` they train under Adam at 1e-3 (1,520-2,520 steps), which
calibrates the budget of :mod:`bench.trainability.long_budget`.

    python -m bench.trainability.standard --size 8                # label what standard.json lacks
    python -m bench.trainability.standard --size 8 --invariant --only resnet18
    python -m bench.trainability.standard --size 8 --invariant --steps 3000 --lrs adam=0.001
    python -m bench.trainability.standard --docs                  # regenerate the docs table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.trainability.budget import closest_run
from bench.trainability.label import GRIDS, STEPS
from bench.trainability.labelling import label_runs, trained_loss
from bench.trainability.predictors import OPTIMIZER_CONFIGS
from bench.trainability.score import write_docs
from bench.trainability.tasks import (
    BASELINE_SAMPLES,
    TEACHER_SEED,
    Task,
    linear_teacher,
    prior_entropy,
    task_for,
)
from bench.trainability.train import train_module

STANDARD_PATH = Path(__file__).with_name("standard.json")
BEGIN = "<!-- BEGIN GENERATED: standard.py -->"
END = "<!-- END GENERATED: standard.py -->"
TASK = "teacher-image"
INVARIANT_TASK = "teacher-image-invariant"
SIZES = (8, 32)  # the benchmark's own image size, and CIFAR's
CLASSES = 4
BUILD_SEED = 0  # torch.manual_seed before a library builds its model: its own init, one draw


def _architectures() -> dict[str, Callable[[], nn.Module]]:
    import timm
    import torchvision.models as tv

    def library(build: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
        return lambda: build(num_classes=CLASSES)

    return {
        **{name: library(getattr(tv, name)) for name in (
            "resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "efficientnet_b0",
            "regnet_y_400mf", "densenet121", "convnext_tiny")},
        "timm convmixer_768_32": lambda: timm.create_model("convmixer_768_32",
                                                           num_classes=CLASSES),
        # the positive control: the invariant teacher's own form, one conv deep
        "control conv-relu-gap": lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, CLASSES)),
    }


class InvariantTeacherTask(Task):
    """A control for architectures that end in global average pooling (every library CNN here).

    The benchmark's teacher-image labels depend on *where* in the image each value is; a net
    that averages its last feature map over positions can only learn that through its padding's
    border effects. Here the label is the argmax of a linear teacher (4 classes, the benchmark's
    sharpness) on translation-invariant features: the position-averages of a fixed random 3x3
    convolution's ReLU output (16 channels), standardized over 20,000 samples. A conv, a ReLU, a
    global average pool and a linear readout express it exactly, so a standard CNN that stalls
    here does not stall for its inductive bias.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        generator = torch.Generator().manual_seed(TEACHER_SEED)
        self.conv = nn.Conv2d(shape[1], 16, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.normal_(0.0, 1.0 / math.sqrt(shape[1] * 9), generator=generator)
        self.center, self.scale = torch.zeros(16), torch.ones(16)
        features = self._features(torch.randn(BASELINE_SAMPLES, *shape[1:], generator=generator))
        self.center, self.scale = features.mean(0), features.std(0)
        super().__init__(INVARIANT_TASK, shape, 0.0, linear_teacher(16))
        _x, labels = self._draw(BASELINE_SAMPLES, generator)
        self.baseline = prior_entropy(labels)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return (pooled - self.center) / self.scale

    def _draw(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn((size, *self.batch_shape[1:]), generator=generator)
        assert self.teacher is not None
        with torch.no_grad():
            return x, self.teacher(self._features(x)).argmax(dim=1)


# Architectures whose downsampling leaves nothing of an 8x8 image (a pooling window larger than
# the map): only labelled at 32 px.
NEEDS_32PX = frozenset({"vgg11_bn", "densenet121", "convnext_tiny"})


def build(name: str) -> nn.Module:
    torch.manual_seed(BUILD_SEED)
    return _architectures()[name]()


def shape(size: int) -> tuple[int, int, int, int]:
    """A batch of the benchmark's (64 RGB images) at ``size`` x ``size`` px."""
    return (64, 3, size, size)


def verdicts(name: str, size: int) -> dict[str, str]:
    """GradDoctor's status per optimizer, probed on one batch of the task."""
    from diagnostics import diagnose

    inputs = torch.randn(*shape(size), generator=torch.Generator().manual_seed(0))
    return {optimizer: str(diagnose(build(name), inputs=inputs, config=config).verdict.status)
            for optimizer, config in OPTIMIZER_CONFIGS.items()}


def label(name: str, task_name: str, size: int, steps: int = STEPS[TASK],
          grids: tuple[tuple[str, tuple[float, ...]], ...] = GRIDS) -> dict[str, Any]:
    """Train ``name`` over ``grids`` (default: the benchmark's) for ``steps`` and label it.

    A shorter grid can only show that a model trains (one learning rate is enough); a label
    other than ``healthy`` from it says nothing about the learning rates left out.
    """
    task = (task_for(TASK, shape(size)) if task_name == TASK
            else InvariantTeacherTask(shape(size)))
    stop = trained_loss(TASK, task.baseline)
    runs = {}
    for optimizer, grid in grids:
        runs[optimizer] = []
        for lr in grid:
            record = train_module(build(name), task, optimizer, lr, steps, stop_below=stop,
                                  keep_curve=steps != STEPS[TASK])
            runs[optimizer].append(record.to_dict())
            best = ("non-finite" if record.best_loss is None
                    else f"{record.best_loss / task.baseline:.3f} B")
            print(f"  {name} {optimizer} {lr:g}: best {best} after {record.steps_run} steps "
                  f"({record.seconds:.0f} s)", flush=True)
    return {"name": name, "task": task_name, "shape": list(shape(size)),
            "baseline": task.baseline, "steps": steps,
            "runs": runs, "labels": {optimizer: label_runs(group, task.baseline, TASK)
                                     for optimizer, group in runs.items()},
            "graddoctor": verdicts(name, size)}


def _closest(runs: list[dict[str, Any]], baseline: float) -> str:
    """The run that came closest (:func:`bench.trainability.budget.closest_run`): its learning
    rate, best window loss (in B) and steps run; the first run's divergence if none is finite."""
    best = closest_run(runs)
    if best is None:
        return f"{runs[0]['lr']:g}: non-finite at step {runs[0]['nan_step']}"
    return f"{best['lr']:g}: {best['best_loss'] / baseline:.2f} B, {best['steps_run']} steps"


def render(models: dict[str, dict[str, Any]]) -> str:
    """The generated docs table: one row per (architecture, task, size)."""
    lines = ["| architecture | task | px | steps (learning rates) | SGD label (closest run) "
             "| Adam label (closest run) | GradDoctor (SGD / Adam) |",
             "|---|---|---|---|---|---|---|"]
    for entry in sorted(models.values(),
                        key=lambda e: (e["task"], e["shape"][2], e["steps"], e["name"])):
        # An optimizer not run (a calibration run of one rate) reads "not run".
        runs = {o: entry["runs"].get(o, []) for o in ("sgd", "adam")}
        cells = {o: f"{entry['labels'][o]} ({_closest(runs[o], entry['baseline'])})"
                 if runs[o] else "not run" for o in runs}
        lrs = ("grids" if all(len(runs[o]) == len(grid) for o, grid in GRIDS)
               else ", ".join(f"{o} {r['lr']:g}" for o in runs for r in runs[o]))
        lines.append(
            f"| {entry['name']} | {entry['task']} | {entry['shape'][2]} | {entry['steps']} ({lrs}) "
            f"| {cells['sgd']} | {cells['adam']} "
            f"| {entry['graddoctor']['sgd']} / {entry['graddoctor']['adam']} |")
    return "\n".join(lines)


def _grids(pairs: list[str]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``["sgd=0.1", "adam=0.001"]`` -> ``(("sgd", (0.1,)), ("adam", (0.001,)))``."""
    chosen: dict[str, list[float]] = {}
    for pair in pairs:
        optimizer, _, lr = pair.partition("=")
        chosen.setdefault(optimizer, []).append(float(lr))
    return tuple((optimizer, tuple(lrs)) for optimizer, lrs in chosen.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to (re)label")
    parser.add_argument("--invariant", action="store_true",
                        help="the translation-invariant control task instead of teacher-image")
    parser.add_argument("--size", type=int, choices=SIZES, default=SIZES[0], help="image size")
    parser.add_argument("--steps", type=int, default=STEPS[TASK],
                        help="step budget (default: the benchmark's)")
    parser.add_argument("--lrs", nargs="*", metavar="OPTIMIZER=LR",
                        help="train only these learning rates (e.g. sgd=0.1 adam=0.001)")
    parser.add_argument("--docs", action="store_true",
                        help="only regenerate the docs table from the results file")
    parser.add_argument("--path", type=Path, default=STANDARD_PATH,
                        help="results file (two processes side by side need one each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = args.path
    stored = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if args.docs:
        write_docs(render(stored["models"]), markers=(BEGIN, END))
        return 0
    task = INVARIANT_TASK if args.invariant else TASK
    grids = _grids(args.lrs) if args.lrs else GRIDS
    suffix = "" if args.steps == STEPS[TASK] and grids == GRIDS else f" | {args.steps} steps"
    for name in args.only or _architectures():
        key = f"{name} | {task} | {args.size}px{suffix}"
        if (key in stored["models"] and not args.only) or (name in NEEDS_32PX
                                                           and args.size < 32):
            continue
        stored["models"][key] = label(name, task, args.size, args.steps, grids)
        path.write_text(json.dumps(stored, indent=1) + "\n")
        entry = stored["models"][key]
        print(f"{name}: labels {entry['labels']}, GradDoctor {entry['graddoctor']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
