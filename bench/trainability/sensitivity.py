"""Two rejected measures of how sensitive the readout's features are to the weights, kept to
reproduce the numbers that rejected them (docs/trainability.md).

*Angular tolerance* θ*: every weight tensor (≥ 2 dimensions) is moved by θ·‖W‖ along a seeded
random direction orthogonal to it (a turn by about θ radians, the kind of change that a step on a
scale-invariant weight makes), and θ* is the θ at which the batch-centred correlation between the
moved and the original readout features (on a seeded batch, training mode) falls to 0.9
(bisection in log θ over [1e-7, 3.16]). A plateau argument made it a candidate: a scale-invariant
weight's norm grows under SGD or Adam until its turn per step falls below what the features
tolerate, which takes of the order of 1/θ*² steps. On the benchmark, "below 0.03" separates
both halves (the missed stalls read 2e-5 to 0.026, every net that trains at least 0.034), but the
validation stacks overlap completely (BatchNorm MLPs that train read 1.1e-3 to 4e-3), and
torchvision's ResNet-101 reads 4.2e-4 and ResNet-152 1.2e-4, and they train.
(Linear CKA instead of the correlation is blind on library models: 8 images of
12,288 values are nearly orthogonal, and any features keep that geometry.)

*Tangent-kernel step*: lr·λ_max(K)/B, where K is the batch's neural tangent kernel of the output
projected on a seeded unit direction and B the batch: the step a mean-reduced loss makes in
function space relative to the linear-stability limit of 2 (above it the loss catapults or
diverges: Lewkowycz et al. 2020, Cohen et al. 2021). The mixers read 920 to 1.2e7 at SGD's
1e-2, but ResNet-152 reads 4.0e6: BatchNorm nets train far beyond the linear limit.

    python -m bench.trainability.sensitivity                 # tune and held-out halves
    python -m bench.trainability.sensitivity --validation    # validation.json's 20 stacks
    python -m bench.trainability.sensitivity --standard      # torchvision/timm/transformers models
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn

from bench.trainability.isometry import held_features, same_draws, spec_module_and_batches
from bench.trainability.label import LABELS_PATH, load_labels
from bench.trainability.rescramble import (
    Batch,
    parse_model_set,
    standard_batch,
    standard_models,
)
from bench.trainability.validation import VALIDATION_PATH
from diagnostics.config import DEFAULT_LEARNING_RATES, Optimizer

TOLERATED = 0.9  # the correlation at which features count as changed
_LOG_RANGE = (-7.0, 0.5)
_BISECTIONS = 25


def centred_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Correlation of two readings of the same features, each centred over the batch: 1 when
    every feature moved by a positive scale at most, whatever its coordinates' geometry."""
    a = first.reshape(first.shape[0], -1).double()
    b = second.reshape(second.shape[0], -1).double()
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a * b).sum() / (a.norm() * b.norm()))


def angular_tolerance(module: nn.Module, batch: Batch, seed: int = 0) -> float:
    """θ* (module docstring); the range's ends where the features never/always change."""
    weights = [p for p in module.parameters() if p.dim() >= 2]
    start = [w.detach().clone() for w in weights]
    generator = torch.Generator().manual_seed(seed)
    turns = []
    for w in start:
        d = torch.randn(w.shape, generator=generator)
        d = d - (d * w).sum() / (w * w).sum().clamp_min(1e-30) * w
        turns.append(d / d.norm().clamp_min(1e-30) * w.norm())
    before = held_features(module, batch)

    def kept(log_theta: float) -> bool:
        with torch.no_grad():
            for w, w0, turn in zip(weights, start, turns, strict=True):
                w.copy_(w0 + 10 ** log_theta * turn)
        after = held_features(module, batch)
        with torch.no_grad():
            for w, w0 in zip(weights, start, strict=True):
                w.copy_(w0)
        return bool(torch.isfinite(after).all()) and centred_correlation(before, after) > TOLERATED

    low, high = _LOG_RANGE
    if kept(high):
        return 10 ** high
    if not kept(low):
        return 10 ** low
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) else (low, middle)
    return 10 ** ((low + high) / 2)


def tangent_step(module: nn.Module, batch: Batch, lr: float, seed: int = 0) -> float:
    """lr·λ_max(K)/B (module docstring): one backward pass per sample."""
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    with same_draws():
        output = module(**batch) if isinstance(batch, dict) else module(batch)
    output = getattr(output, "logits", output)
    flat = output.reshape(output.shape[0], -1)
    direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(seed))
    projected = flat @ (direction / direction.norm())
    rows = []
    for value in projected:
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params, strict=True)]).double())
    jacobian = torch.stack(rows)
    kernel = jacobian @ jacobian.T
    return lr * float(torch.linalg.eigvalsh(kernel)[-1]) / len(rows)


def _print_specs(title: str, models: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title} (θ* | tangent step at SGD 1e-2 | model, labels)")
    rows = []
    for ident, entry in models.items():
        module, (batch,) = spec_module_and_batches(entry["spec"])
        theta = angular_tolerance(module, batch)
        step = tangent_step(module, batch, DEFAULT_LEARNING_RATES[Optimizer.SGD])
        rows.append((theta, step, ident, entry["labels"]["sgd"], entry["labels"]["adam"]))
    for theta, step, ident, sgd, adam in sorted(rows):
        print(f"{theta:9.3g} {step:9.3g} | {ident:34s} sgd={sgd:9s} adam={adam}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_model_set(argv, __doc__.splitlines()[0])
    if args.validation:
        _print_specs("validation", json.loads(VALIDATION_PATH.read_text())["models"])
    elif args.standard:
        print("\nstandard models, own initialization (θ* | tangent step at SGD 1e-2 | model)")
        for name, (build, kind) in standard_models().items():
            torch.manual_seed(0)
            generator = torch.Generator().manual_seed(0)
            batch = standard_batch(kind, generator)
            theta = angular_tolerance(build(), batch)
            torch.manual_seed(0)
            step = tangent_step(build(), batch, DEFAULT_LEARNING_RATES[Optimizer.SGD])
            print(f"{theta:9.3g} {step:9.3g} | {name}", flush=True)
    else:
        models = load_labels(LABELS_PATH)["models"]
        for half in ("tune", "held-out"):
            _print_specs(half, {ident: entry for ident, entry in models.items()
                                if entry["split"] == half and entry["task"] != "adding"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
