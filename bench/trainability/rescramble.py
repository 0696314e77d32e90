"""A rejected measure, kept to reproduce the numbers that rejected it: features redrawn by steps.

The misses are long initial plateaus (:mod:`bench.trainability.budget`). One mechanism that makes
a plateau: the body's forward map is so sensitive to its weights that each optimizer step redraws
the features the readout learns from, so the readout chases a target that moves faster than it
can fit (the forward face of Yang et al. 2019's gradient explosion in BatchNorm nets: the
ConvMixer-style nets' backward signal grows 345-3.7e4x over their blocks).

Measured: the readout's input features on a held, seeded batch (training mode; dropout draws the
same masks for every reading) after each of six steps of the configured optimizer at its default
learning rate (SGD with momentum 0.9 at 1e-2, Adam at 1e-3: ``DEFAULT_LEARNING_RATES``) on the
probe's default loss over a second seeded batch; the *stability* is the largest linear CKA
(:func:`bench.trainability.isometry.feature_cka`) between two consecutive readings after the first
step (steps 2-6). Pre-registered rule, fixed on the tune half before the held-out half was
computed: ``vanishing`` below 0.8, both optimizers (tune: the stalled ReLU mixers read 0.71-0.77,
the healthy nets at least 0.865 under SGD and 0.935 under Adam).

It passed the benchmark and failed the validation stacks (docs/trainability.md has the numbers):
held-out +2 under each label set (SGD 83 %, Adam 86 %), no false alarm on either half, none on
twenty-one torchvision/timm/transformers models (0.929-1.0) — but deep BatchNorm MLPs of
``validation.json`` that train read 0.40-0.77 (redrawn at every step, and they still train), and
under Adam it catches none of that set's stalls. Features redrawn by every step are not a stall.

    python -m bench.trainability.rescramble                 # tune and held-out halves
    python -m bench.trainability.rescramble --validation    # validation.json's 20 stacks
    python -m bench.trainability.rescramble --standard      # torchvision/timm/transformers models
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.trainability.isometry import feature_cka, held_features, spec_module_and_batches
from bench.trainability.label import LABELS_PATH, load_labels
from bench.trainability.score import RESULTS_PATH
from bench.trainability.validation import VALIDATION_PATH
from diagnostics.config import DEFAULT_LEARNING_RATES, Loss, Optimizer
from diagnostics.probe import compute_loss

STEPS = 6
THRESHOLD = 0.8  # the pre-registered rule: vanishing below it

Batch = torch.Tensor | dict[str, torch.Tensor]


def step_similarities(module: nn.Module, probe: Batch, held: Batch,
                      optimizer: Optimizer) -> list[float]:
    """CKA between the held batch's readout features before and after each of ``STEPS`` steps of
    ``optimizer`` (its default learning rate) on the probe loss; NaN where a reading is not
    finite."""
    lr = DEFAULT_LEARNING_RATES[optimizer]
    step: torch.optim.Optimizer = (
        torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9) if optimizer is Optimizer.SGD
        else torch.optim.Adam(module.parameters(), lr=lr))
    before = held_features(module, held)
    similarities = []
    for _ in range(STEPS):
        step.zero_grad()
        output = module(**probe) if isinstance(probe, dict) else module(probe)
        output = getattr(output, "logits", output)  # transformers' ModelOutput
        compute_loss(output, Loss.RANDOM_PROJECTION, seed=0).backward()
        step.step()
        after = held_features(module, held)
        finite = bool(torch.isfinite(after).all() and torch.isfinite(before).all())
        similarities.append(feature_cka(before, after) if finite else float("nan"))
        before = after
    return similarities


def stability(similarities: list[float]) -> float:
    """The largest similarity after the first step (NaN when none is finite): one step that keeps
    the features is enough to call them stable, so a noisy reading cannot raise an alarm."""
    later = [value for value in similarities[1:] if value == value]
    return max(later) if later else float("nan")


def spec_stability(spec: dict[str, Any], optimizer: Optimizer) -> tuple[float, list[float]]:
    """The stability of a benchmark spec (weights as ``diagnose`` builds them, seeded batches)."""
    module, (probe, held) = spec_module_and_batches(spec, count=2)
    similarities = step_similarities(module, probe, held, optimizer)
    return stability(similarities), similarities


def _line(value: float, similarities: list[float], name: str, note: str) -> str:
    flag = "REDRAWN" if value < THRESHOLD else "       "
    steps = " ".join(f"{s:6.3f}" for s in similarities)
    return f"{value:6.3f} {flag} | {steps} | {name:34s} {note}"


def benchmark(halves: tuple[str, ...]) -> None:
    calls = {row["id"]: row["calls"] for row in json.loads(RESULTS_PATH.read_text())["rows"]}
    for half in halves:
        for optimizer in Optimizer:
            print(f"\n{half}, {optimizer} (stability | steps 1-6 | model, label, GradDoctor)")
            rows = []
            for ident, entry in load_labels(LABELS_PATH)["models"].items():
                if entry["split"] != half or entry["task"] == "adding":
                    continue
                value, similarities = spec_stability(entry["spec"], optimizer)
                note = (f"label={entry['labels'][optimizer]:9s} "
                        f"GradDoctor={calls[ident][optimizer]['graddoctor']}")
                rows.append((value, similarities, ident, note))
            for row in sorted(rows, key=lambda row: (row[0] != row[0], row[0])):
                print(_line(*row), flush=True)


def validation() -> None:
    models = json.loads(VALIDATION_PATH.read_text())["models"]
    for optimizer in Optimizer:
        print(f"\nvalidation, {optimizer} (stability | steps 1-6 | model, label)")
        rows = [(*spec_stability(entry["spec"], optimizer), ident,
                 f"label={entry['labels'][optimizer]}") for ident, entry in models.items()]
        for row in sorted(rows, key=lambda row: (row[0] != row[0], row[0])):
            print(_line(*row), flush=True)


def standard_models() -> dict[str, tuple[Callable[[], nn.Module], str]]:
    import timm
    import torchvision.models as tv
    import transformers

    def text(config_class: Any, model_class: Any, **fields: Any) -> Callable[[], nn.Module]:
        return lambda: model_class(config_class(**fields))

    return {
        **{name: (getattr(tv, name), "image64") for name in (
            "resnet18", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "mobilenet_v2",
            "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121",
            "regnet_y_400mf", "vgg16_bn", "swin_t")},
        "vit_b_16": (tv.vit_b_16, "image224"),
        "timm resnet26": (lambda: timm.create_model("resnet26"), "image64"),
        "timm vit_small_patch16_224": (lambda: timm.create_model("vit_small_patch16_224"),
                                       "image224"),
        "timm convmixer_768_32": (lambda: timm.create_model("convmixer_768_32"), "image32"),
        "BertForSequenceClassification": (
            text(transformers.BertConfig, transformers.BertForSequenceClassification), "tokens"),
        "DistilBertForSequenceClassification": (
            text(transformers.DistilBertConfig,
                 transformers.DistilBertForSequenceClassification), "tokens"),
        "GPT2ForSequenceClassification": (
            text(transformers.GPT2Config, transformers.GPT2ForSequenceClassification,
                 pad_token_id=0), "tokens"),
    }


def standard_batch(kind: str, generator: torch.Generator) -> Batch:
    if kind == "tokens":
        return {"input_ids": torch.randint(0, 1000, (8, 32), generator=generator)}
    size = int(kind.removeprefix("image"))
    return torch.randn(4 if size == 224 else 8, 3, size, size, generator=generator)


def standard() -> None:
    print("\nstandard models, their libraries' own initialization (stability | steps 1-6 | model)")
    for name, (build, kind) in standard_models().items():
        for optimizer in Optimizer:
            torch.manual_seed(0)
            module = build()
            generator = torch.Generator().manual_seed(0)
            probe, held = standard_batch(kind, generator), standard_batch(kind, generator)
            similarities = step_similarities(module, probe, held, optimizer)
            print(_line(stability(similarities), similarities, name, str(optimizer)), flush=True)


def parse_model_set(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The command line of a bench measure read on one of three model sets: the benchmark's
    halves (default), ``--validation`` or ``--standard``; one thread, as every bench timing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--validation", action="store_true", help="validation.json's stacks")
    parser.add_argument("--standard", action="store_true", help="library models")
    torch.set_num_threads(1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_model_set(argv, __doc__.splitlines()[0])
    if args.validation:
        validation()
    elif args.standard:
        standard()
    else:
        benchmark(("tune", "held-out"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
